//! The multi-call entry point of every appliance binary.
//!
//! Each image ships one static binary (`kms-appliance`, `client-appliance`,
//! `executor-appliance`). The kernel starts it as `/init`; as PID 1 it becomes the init
//! ([`coffer_init`]). The init then starts each service as the same binary with the service's
//! applet name as first argument. One binary per image keeps build time, image size and the
//! measured surface small.
//!
//! Applets shared by every image live here; later issues add each image's own services.

#![forbid(unsafe_code)]

pub mod health;
pub mod mesh;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coffer_types::Role;

#[derive(Parser)]
#[command(
    about = "A Coffer appliance binary. As PID 1 it is the init; otherwise it runs one service applet.",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    applet: Shared,
}

#[derive(Subcommand)]
enum Shared {
    /// Serve `GET /healthz` over HTTP (the placeholder service of every image).
    Health(health::HealthArgs),
    /// Test fixture for the supervisor: exit with CODE after MS milliseconds. No production image
    /// spec lists it.
    ExitAfter {
        /// Milliseconds to wait.
        #[arg(long)]
        ms: u64,
        /// Exit code.
        #[arg(long, default_value_t = 1)]
        code: u8,
        /// Also leave behind a child that outlives this process by this many milliseconds: an
        /// orphan the init must reap.
        #[arg(long)]
        orphan_ms: Option<u64>,
    },
    /// Serve HTTP over the attested mesh (and the attestation endpoint for people).
    MeshServe(mesh::ServeArgs),
    /// Connect to a peer role over the attested mesh and exchange requests.
    MeshProbe(mesh::ProbeArgs),
    /// Print the image role and version.
    Version,
}

/// Runs the binary for `role`: the init when PID 1, else the applet named by the first argument.
pub fn main(role: Role) -> ExitCode {
    if std::process::id() == 1 {
        coffer_init::run();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    service_startup();
    match cli.applet {
        Shared::Health(args) => health::run(role, &args),
        Shared::MeshServe(args) => mesh::serve_main(role, &args),
        Shared::MeshProbe(args) => mesh::probe_main(role, &args),
        Shared::ExitAfter {
            ms,
            code,
            orphan_ms,
        } => {
            if let Some(orphan_ms) = orphan_ms {
                let orphan = std::env::current_exe().and_then(|exe| {
                    std::process::Command::new(exe)
                        .args([
                            "exit-after",
                            "--ms",
                            &(ms + orphan_ms).to_string(),
                            "--code",
                            "0",
                        ])
                        .spawn()
                });
                match orphan {
                    Ok(child) => tracing::info!(pid = child.id(), "exit-after: left an orphan"),
                    Err(e) => tracing::warn!(error = %e, "exit-after: cannot spawn the orphan"),
                }
            }
            tracing::info!(ms, code, "exit-after: waiting");
            std::thread::sleep(Duration::from_millis(ms));
            tracing::warn!(code, "exit-after: exiting on purpose");
            ExitCode::from(code)
        }
        Shared::Version => {
            println!("{role}-appliance {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// Puts a service process into a known state, first thing.
///
/// - Empty signal mask: the init blocks the signals it reads from its signalfd, and a blocked
///   mask survives `fork` and `exec` (std does not reset it for us, as a test in the VM showed),
///   so a service would otherwise never see SIGTERM.
/// - No new privileges: a service can never gain privileges after start (setuid binaries,
///   file capabilities).
/// - Logging: `LEVEL message fields` lines on stderr; the init adds time and service name.
pub fn service_startup() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    let _ = nix::sys::prctl::set_no_new_privs();
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .try_init();
}
