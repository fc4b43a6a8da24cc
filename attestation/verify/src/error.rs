//! Errors for input that cannot be used at all.
//!
//! These are not verdicts: a report that parses but is forged, expired or outside the policy is
//! a [`Verdict`](crate::Verdict) with failed checks. An error here means the bytes could not even
//! be read as what they claim to be (a CLI maps these to "unusable input").

use thiserror::Error;

/// A report that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReportError {
    /// The report is not exactly 1184 bytes.
    #[error("attestation report has {got} bytes, expected exactly {expected}")]
    WrongSize {
        /// The size every report has.
        expected: usize,
        /// The size given.
        got: usize,
    },
    /// VERSION is not one this parser knows the layout of.
    #[error("attestation report version {version} is not supported (known: {known:?})")]
    UnsupportedVersion {
        /// VERSION as found.
        version: u32,
        /// The versions this parser knows.
        known: Vec<u32>,
    },
}

/// A certificate (or PEM bundle) that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
    /// A PEM block could not be decoded.
    #[error("bad PEM certificate: {0}")]
    Pem(String),
    /// A PEM block has a label other than CERTIFICATE.
    #[error("PEM block is a {label:?}, expected CERTIFICATE")]
    PemLabel {
        /// The label found.
        label: String,
    },
    /// A `BEGIN CERTIFICATE` line has no matching `END CERTIFICATE`.
    #[error("PEM certificate has no END line")]
    PemUnterminated,
    /// The input holds no certificate.
    #[error("no certificate found")]
    Empty,
    /// Certificates given to [`AmdRoots::with_simulation_root`](crate::AmdRoots::with_simulation_root)
    /// that are not a Coffer simulation root (an AMD root is refused there).
    #[error("not a Coffer simulation root: {0}")]
    NotSimulationRoot(String),
    /// One certificate was expected and the input holds several.
    #[error("expected one certificate, found {count}")]
    SeveralCertificates {
        /// How many certificates the input holds.
        count: usize,
    },
}

/// A VCEK/VLEK extension (OID 1.3.6.1.4.1.3704.1.*) that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtensionError {
    /// A required extension is absent.
    #[error("certificate lacks the {name} extension ({oid})")]
    Missing {
        /// Extension name (e.g. `blSPL`).
        name: &'static str,
        /// Its OID.
        oid: &'static str,
    },
    /// An extension appears more than once.
    #[error("certificate has the {name} extension ({oid}) more than once")]
    Duplicate {
        /// Extension name.
        name: &'static str,
        /// Its OID.
        oid: &'static str,
    },
    /// An extension's value does not decode.
    #[error("certificate's {name} extension is malformed: {reason}")]
    Malformed {
        /// Extension name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A policy file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not valid TOML, an unknown field, or a field of the wrong type.
    #[error("policy is not valid: {0}")]
    Syntax(String),
    /// A field has a value that cannot be right.
    #[error("policy field `{field}`: {reason}")]
    Invalid {
        /// The field (dotted path).
        field: String,
        /// Why it is refused.
        reason: String,
    },
}

/// A time that cannot be used as the verifier's clock.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimeError {
    /// Not an RFC 3339 date-time.
    #[error("{input:?} is not an RFC 3339 date-time such as 2025-06-01T12:00:00Z: {reason}")]
    Rfc3339 {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Beyond what X.509 can express (after 9999-12-31).
    #[error("{unix_seconds} seconds after the epoch is beyond 9999-12-31")]
    OutOfRange {
        /// The value given.
        unix_seconds: u64,
    },
    /// The system clock is before 1970.
    #[error("the system clock is before 1970-01-01")]
    BeforeEpoch,
}

/// Evidence that cannot be used: names which input failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvidenceError {
    /// The attestation report.
    #[error("attestation report: {0}")]
    Report(#[from] ReportError),
    /// The VCEK or VLEK certificate.
    #[error("VEK certificate (VCEK/VLEK): {0}")]
    Vek(#[source] CertError),
    /// The ASK or ASVK certificate.
    #[error("ASK/ASVK certificate: {0}")]
    Ask(#[source] CertError),
    /// The ARK certificate.
    #[error("ARK certificate: {0}")]
    Ark(#[source] CertError),
}
