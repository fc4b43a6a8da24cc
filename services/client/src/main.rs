//! The client appliance binary: the customer's appliance: REST API, web UI, client-side encryption.
//!
//! PID 1 of the client image and every service in it (see `coffer_appliance`). For now the image
//! runs only the shared health service; the real services arrive with their issues.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use coffer_types::Role;

// musl's allocator is slow under threads; every appliance binary uses mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    coffer_appliance::main(Role::Client)
}
