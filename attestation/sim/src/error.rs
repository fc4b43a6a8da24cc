//! Errors of the simulated secure processor, one variant per thing that can fail.

use std::path::PathBuf;

/// What failed while generating, storing or loading a simulation root.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Reading or writing a file of the key directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`, `creating directory`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// RSA-4096 key generation or RSASSA-PSS signing failed.
    #[error("RSA {what}: {reason}")]
    Rsa {
        /// The operation.
        what: &'static str,
        /// The library's message.
        reason: String,
    },
    /// Encoding or decoding a certificate, name or extension.
    #[error("DER/PEM {what}: {reason}")]
    Encoding {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The library's message.
        reason: String,
    },
    /// A key file that does not hold a key of the expected kind.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file readable or writable by group or others.
    #[error("key file {path} has mode {mode:o}; expected 600 (owner only)")]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key directory holds some of the root's files but not all.
    #[error("simulation root in {dir} is incomplete: {missing} is missing (delete the directory to regenerate)")]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The first missing file.
        missing: &'static str,
    },
    /// The stored VCEK certificate and key, or its extensions, do not fit together.
    #[error("VCEK {0}")]
    Vcek(String),
    /// A launch the simulator cannot measure.
    #[error("cannot measure the launch: {reason}")]
    Launch {
        /// Why.
        reason: String,
    },
}
