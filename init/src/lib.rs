//! Coffer's PID 1.
//!
//! Every appliance image boots into this init and nothing else: there is no shell, getty, ssh or
//! package manager in any image. In order, it:
//!
//! 1. mounts the pseudo file systems (`/proc`, `/sys`, `/dev`, `/dev/pts`, `/run`, `/tmp`);
//! 2. reads the configuration the image builder baked into the initramfs
//!    ([`coffer_types::ApplianceConfig`]);
//! 3. waits for the kernel's random number generator to be seeded;
//! 4. loads the image's kernel modules in the order the builder computed, then mounts configfs;
//! 5. binds the appliance to its deployment: the manifest from the config disk must hash to the
//!    HOST_DATA in this guest's own evidence, or no service starts (see `deployment`);
//! 6. brings up loopback and the image's network interface (static address, or DHCP on clouds);
//! 7. starts the fixed service set and supervises it: reaps every child (also orphans), restarts a
//!    crashed service with exponential backoff, and powers the VM off (fail-stop) when a critical
//!    service is in a crash loop;
//! 8. on SIGTERM, SIGINT (Ctrl-Alt-Del) or the ACPI power button, stops the services in reverse
//!    order and powers off.
//!
//! What it trusts: the kernel, and the baked configuration (which is part of the launch
//! measurement). What it does not trust: anything the host provides at run time (the deployment
//! manifest is checked against the secure processor's HOST_DATA). It holds no keys and knows
//! nothing about them.
//!
//! It never panics on purpose: every step returns a typed [`InitError`], and any error during boot
//! is logged and ends in a clean power-off, because a half-configured appliance must not serve.

#![forbid(unsafe_code)]

pub mod backoff;
mod console;
mod deployment;
mod dhcp;
mod error;
mod modules;
mod mounts;
mod net;
mod power;
mod rng;
mod supervisor;

use std::path::Path;
use std::time::Instant;

use coffer_types::{ApplianceConfig, APPLIANCE_CONFIG_PATH};
use tracing::{error, info};

pub use error::InitError;

/// Runs the init. Never returns: the VM powers off when the init is done.
pub fn run() -> ! {
    console::init_logging();
    let started = Instant::now();
    // Log times are since the init started; this anchors them to the kernel's clock.
    if let Ok(uptime) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        let ms = uptime.tv_sec() * 1000 + uptime.tv_nsec() / 1_000_000;
        info!(kernel_uptime_ms = ms, "coffer init started");
    }
    match boot_and_supervise(started) {
        Ok(reason) => info!(%reason, "powering off"),
        Err(err) => error!(error = %err, "fail-stop: powering off"),
    }
    power::power_off()
}

fn boot_and_supervise(started: Instant) -> Result<String, InitError> {
    // Signals are blocked before anything else, so that no thread we create later can take
    // them: the supervisor reads them from a signalfd.
    let signals = supervisor::block_signals()?;
    mounts::mount_early()?;
    let config = load_config(Path::new(APPLIANCE_CONFIG_PATH))?;
    info!(role = %config.role, version = %config.version, "coffer appliance booting");
    power::set_hostname(config.role);
    rng::wait_until_seeded()?;
    modules::load_all(&config.modules)?;
    mounts::mount_configfs()?;
    deployment::bind(&config)?;
    deployment::grant_data_disk(&config)?;
    net::configure(&config.network)?;
    let buttons = power::open_power_buttons();
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "system ready, starting services"
    );
    let mut supervisor = supervisor::Supervisor::new(&config)?;
    Ok(supervisor.run(signals, buttons))
}

/// Reads and parses the baked appliance configuration.
pub fn load_config(path: &Path) -> Result<ApplianceConfig, InitError> {
    let bytes = std::fs::read(path).map_err(|source| InitError::ConfigRead {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| InitError::ConfigParse {
        path: path.display().to_string(),
        source,
    })
}
