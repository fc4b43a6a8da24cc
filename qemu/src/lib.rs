//! The QEMU launcher.
//!
//! Boots an appliance image built by `coffer-image`: checks its files against the manifest, picks
//! or checks host ports for the image's guest ports, starts QEMU (TCG by default; KVM on request)
//! with the serial console in a log file and a QMP socket, waits until `GET /healthz` answers
//! through the port forward, and stops it with an ACPI power-down.
//!
//! Networking is QEMU user networking: each VM is 10.0.2.15 on its own private network, reaches
//! the host at 10.0.2.2, and is reached through 127.0.0.1 port forwards. VMs reach each other
//! through the host: VM A calls `10.0.2.2:<host port of B>`. Host services started by later issues
//! (control plane, simulated secure processor) listen on 127.0.0.1 and are reached the same way.
//!
//! What it trusts: the host. It runs outside every trust boundary and holds no secrets.

#![forbid(unsafe_code)]

mod deploy;
mod error;
pub mod health;
mod image;
mod launch;
pub mod qmp;
pub mod state;

pub use deploy::{DeploymentLaunch, SimProcess, SIM_VCPU_TYPE};
pub use error::LaunchError;
pub use image::Image;
pub use launch::{launch, stop, wait_exit, Accel, LaunchOptions, StopOutcome};
pub use state::{default_state_dir, VmRecord};
