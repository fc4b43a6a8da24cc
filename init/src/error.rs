//! The init's errors: one variant per step that can fail, each naming what failed.

use nix::errno::Errno;

/// Why the init could not bring the appliance up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The deployment manifest could not be read or does not match this guest's evidence.
    #[error("deployment refused: {0}")]
    Deployment(String),
    /// A pseudo file system could not be mounted.
    #[error("cannot mount {fstype} on {target}: {errno}")]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
    /// The baked configuration could not be read.
    #[error("cannot read appliance configuration {path}: {source}")]
    ConfigRead {
        /// Where it was expected.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The baked configuration is not valid.
    #[error("invalid appliance configuration {path}: {source}")]
    ConfigParse {
        /// Where it was read from.
        path: String,
        /// What was wrong.
        source: serde_json::Error,
    },
    /// The kernel RNG could not be read.
    #[error("cannot wait for the kernel RNG: {0}")]
    Rng(std::io::Error),
    /// A kernel module could not be opened.
    #[error("cannot open kernel module {path}: {source}")]
    ModuleOpen {
        /// Path inside the initramfs.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel refused a module.
    #[error("kernel refused module {path}: {errno}")]
    ModuleLoad {
        /// Path inside the initramfs.
        path: String,
        /// What the kernel said.
        errno: Errno,
    },
    /// The network configuration in the image is malformed.
    #[error("invalid network configuration: {0}")]
    NetworkConfig(String),
    /// The network could not be brought up.
    #[error("network setup failed: {step}: {reason}")]
    Network {
        /// Which step failed.
        step: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(Errno),
    /// The appliance binary (the init's own executable) could not be located.
    #[error("cannot locate the appliance binary: {0}")]
    SelfExe(std::io::Error),
}
