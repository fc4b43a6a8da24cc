//! The image builder's errors. Each names the file or input that was wrong and how.

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image spec is not valid TOML of the expected shape.
    #[error("image spec {path}: {message}")]
    SpecSyntax {
        /// The spec file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The image spec parses but says something impossible.
    #[error("image spec {path}: {reason}")]
    SpecInvalid {
        /// The spec file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The lock file is not valid.
    #[error("lock file {path}: {message}")]
    LockSyntax {
        /// The lock file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A pinned input is not there.
    #[error("pinned input {what} is missing: {path} does not exist ({hint})")]
    InputMissing {
        /// Which input.
        what: String,
        /// Where it should be.
        path: String,
        /// How to get it.
        hint: String,
    },
    /// A pinned input has other bytes than the lock file says.
    #[error("pinned input {what} ({path}) does not match the lock file: expected sha256 {expected}, got {got}")]
    InputMismatch {
        /// Which input.
        what: String,
        /// Where it is.
        path: String,
        /// sha256 in the lock file.
        expected: String,
        /// sha256 of the file.
        got: String,
    },
    /// The spec names a module the lock file does not pin.
    #[error("kernel module '{name}' (wanted by {wanted_by}) is not pinned in the lock file")]
    ModuleNotPinned {
        /// The module.
        name: String,
        /// The spec or the module that depends on it.
        wanted_by: String,
    },
    /// A module's `.modinfo` could not be read.
    #[error("kernel module {path}: cannot read its .modinfo section: {reason}")]
    Modinfo {
        /// The module file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Module dependencies form a cycle.
    #[error("kernel module dependency cycle through '{0}'")]
    ModuleCycle(String),
    /// Building the appliance binary failed.
    #[error("building {package} failed ({status}):\n{stderr_tail}")]
    Cargo {
        /// The cargo package.
        package: String,
        /// How cargo exited.
        status: String,
        /// The end of cargo's error output.
        stderr_tail: String,
    },
    /// A launch measurement could not be computed from the built artifacts.
    #[error("cannot compute the launch measurements: {0}")]
    Measure(String),
    /// No Coffer checkout was found.
    #[error("not inside a Coffer checkout: no image/inputs.lock in {0} or any parent (run from the checkout or pass --source)")]
    NoCheckout(String),
}

impl ImageError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
