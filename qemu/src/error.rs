//! The launcher's errors, each naming what was wrong.

/// Why a VM could not be started, checked or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The deployment cannot be launched.
    #[error("deployment: {0}")]
    Deployment(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory is not a built image.
    #[error(
        "{dir} is not an image directory: {reason} (build one with `coffer image build <role>`)"
    )]
    NotAnImage {
        /// The directory.
        dir: String,
        /// What is missing or malformed.
        reason: String,
    },
    /// An image file differs from its manifest.
    #[error(
        "image file {path} does not match its manifest: expected sha256 {expected}, got {got}"
    )]
    ImageTampered {
        /// The file.
        path: String,
        /// sha256 in the manifest.
        expected: String,
        /// sha256 of the file.
        got: String,
    },
    /// A host port cannot be used.
    #[error("host port 127.0.0.1:{port} (for guest port {name}/{guest}) is already in use")]
    PortInUse {
        /// Host port.
        port: u16,
        /// Name of the guest port.
        name: String,
        /// Guest port number.
        guest: u16,
    },
    /// A `--port` option names no port of the image.
    #[error("--port {0}: the image has no port named '{0}'")]
    UnknownPort(String),
    /// The name is taken by a running VM.
    #[error("a VM named '{0}' is already running (stop it with `coffer stop {0}` or pass --name)")]
    NameTaken(String),
    /// No such VM.
    #[error("no running VM named '{0}'")]
    NoSuchVm(String),
    /// QEMU could not be started or refused the configuration.
    #[error("QEMU failed to start: {0}")]
    Qemu(String),
    /// The VM exited before it became healthy.
    #[error("VM '{name}' exited before it became healthy; last lines of {log}:\n{tail}")]
    ExitedEarly {
        /// The VM.
        name: String,
        /// Its serial log.
        log: String,
        /// The end of the serial log.
        tail: String,
    },
    /// The VM did not become healthy in time.
    #[error("VM '{name}' not healthy after {secs}s ({last}); last lines of {log}:\n{tail}")]
    NotHealthy {
        /// The VM.
        name: String,
        /// The timeout.
        secs: u64,
        /// The last health-check failure.
        last: String,
        /// Its serial log.
        log: String,
        /// The end of the serial log.
        tail: String,
    },
    /// Talking to QEMU's monitor failed.
    #[error("QMP ({socket}): {reason}")]
    Qmp {
        /// The monitor socket.
        socket: String,
        /// What went wrong.
        reason: String,
    },
}

impl LaunchError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        LaunchError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
