//! The kms appliance binary: the key management service.
//!
//! PID 1 of the kms image and every service in it: the shared applets of
//! [`coffer_appliance`], plus `kms-serve` ([`serve`]), which only this image carries (it is the
//! only one that links the KMS core).

#![forbid(unsafe_code)]

mod routes;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use coffer_types::Role;

// musl's allocator is slow under threads; every appliance binary uses mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if std::process::id() != 1 && args.nth(1).is_some_and(|applet| applet == "kms-serve") {
        let cli = match serve::ServeCli::try_parse_from(std::env::args_os().skip(1)) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(2);
            }
        };
        coffer_appliance::service_startup();
        return serve::main(cli.args());
    }
    coffer_appliance::main(Role::Kms)
}
