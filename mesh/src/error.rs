//! Why a mesh connection was refused or ended: one variant per reason, each naming what was
//! expected and what was found.

use coffer_types::Role;

/// Why a peer was refused or a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The peer's launch measurement is not pinned for the role it claims.
    #[error("measurement not pinned: a {role} peer measured {got}, pinned are [{pinned}]")]
    MeasurementNotPinned {
        /// The role the peer claimed.
        role: Role,
        /// Its measurement, hex.
        got: String,
        /// The pinned measurements, hex, comma-separated.
        pinned: String,
    },
    /// An Azure peer's vTPM PCR holds a value not pinned for its role.
    #[error("PCR not pinned: a {role} peer's PCR {pcr} is {got}, pinned is {expected}")]
    PcrNotPinned {
        /// The role the peer claimed.
        role: Role,
        /// The PCR.
        pcr: u8,
        /// The pinned values.
        expected: String,
        /// The quoted value.
        got: String,
    },
    /// The peer runs another deployment (its HOST_DATA is another manifest's digest).
    #[error("wrong deployment: peer HOST_DATA is {got}, this deployment is {expected}")]
    WrongDeployment {
        /// This deployment's digest, hex.
        expected: String,
        /// The peer's HOST_DATA, hex.
        got: String,
    },
    /// The peer is a debuggable guest (its memory is readable by the host).
    #[error("debug guest: the peer's guest policy allows debugging (policy.debug: {0})")]
    DebugGuest(String),
    /// The evidence chains to a root this deployment does not trust (for instance simulated
    /// evidence under an AMD-only policy).
    #[error("untrusted root: expected {expected}, got {got}")]
    UntrustedRoot {
        /// What the policy requires.
        expected: String,
        /// What the evidence chains to.
        got: String,
    },
    /// The evidence is not bound to this TLS session: replayed from another session, or relayed
    /// from a different TLS connection.
    #[error("session binding mismatch (replayed or relayed evidence): REPORT_DATA is {got}, this session expects {expected}")]
    SessionBindingMismatch {
        /// The binding this session expects, hex.
        expected: String,
        /// The report's REPORT_DATA, hex.
        got: String,
    },
    /// A server checked before presents another TLS key now: it restarted (a new process has a
    /// new key), or another server answers at its address. Check it again.
    #[error("the server presents TLS key {got}, not the attested {expected}: it restarted or another server answers; attest it again")]
    TlsKeyChanged {
        /// SHA-256 of the attested key, hex.
        expected: String,
        /// SHA-256 of the key presented, hex.
        got: String,
    },
    /// The evidence is not genuine (a chain, signature, or certificate check failed).
    #[error("evidence not genuine: {check} expected {expected}, got {got}")]
    NotGenuine {
        /// The failed check's name.
        check: String,
        /// What it requires.
        expected: String,
        /// What it found.
        got: String,
    },
    /// Another policy check failed (TCB floor, VMPL, SMT, ...).
    #[error("policy violation: {check} expected {expected}, got {got}")]
    Policy {
        /// The failed check's name.
        check: String,
        /// What it requires.
        expected: String,
        /// What it found.
        got: String,
    },
    /// The peer claims a role this endpoint does not talk to.
    #[error("unexpected role: expected one of [{expected}], the peer is {got}")]
    UnexpectedRole {
        /// Roles accepted here.
        expected: String,
        /// The peer's claimed role.
        got: Role,
    },
    /// The peer's hello names another deployment id.
    #[error("wrong deployment id: expected {expected}, the peer says {got}")]
    WrongDeploymentId {
        /// Ours.
        expected: String,
        /// Theirs.
        got: String,
    },
    /// Evidence of a kind this deployment cannot verify.
    #[error("unsupported evidence: {0}")]
    UnsupportedEvidence(String),
    /// A pin the session was established with has been removed.
    #[error(
        "pin revoked: the {role} measurement {measurement} is no longer pinned; session torn down"
    )]
    PinRevoked {
        /// The peer's role.
        role: Role,
        /// The revoked measurement, hex.
        measurement: String,
    },
    /// The session outlived its bound (the deployment's session_max_age_secs, or this node's).
    #[error("session expired after {0} s: reconnect to re-attest")]
    Expired(u64),
    /// The peer refused us, and said why.
    #[error("the peer refused this node: {0}")]
    RefusedByPeer(String),
    /// The manifest names the simulation root but this verifier was not configured to accept it.
    #[error("the deployment trusts the simulation root, and this verifier is not configured for simulation")]
    SimulationNotAllowed,
    /// The manifest or its roots could not be used.
    #[error("deployment manifest: {0}")]
    Manifest(String),
    /// This node could not produce its own evidence.
    #[error("own evidence: {0}")]
    OwnEvidence(String),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The attestation exchange broke the protocol.
    #[error("mesh protocol: {0}")]
    Protocol(String),
    /// Reading or writing the connection failed.
    #[error("I/O: {0}")]
    Io(String),
    /// This node is already producing as much evidence as it allows at once.
    #[error("busy: {0} evidence requests already running; try again")]
    Busy(usize),
    /// The handshake did not finish in time.
    #[error("attested handshake timed out after {0} ms")]
    Timeout(u64),
}

impl MeshError {
    /// A short stable name for logs and tests (`measurement_not_pinned`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            MeshError::MeasurementNotPinned { .. } => "measurement_not_pinned",
            MeshError::PcrNotPinned { .. } => "pcr_not_pinned",
            MeshError::WrongDeployment { .. } => "wrong_deployment",
            MeshError::DebugGuest(_) => "debug_guest",
            MeshError::UntrustedRoot { .. } => "untrusted_root",
            MeshError::SessionBindingMismatch { .. } => "session_binding_mismatch",
            MeshError::TlsKeyChanged { .. } => "tls_key_changed",
            MeshError::NotGenuine { .. } => "not_genuine",
            MeshError::Policy { .. } => "policy",
            MeshError::UnexpectedRole { .. } => "unexpected_role",
            MeshError::WrongDeploymentId { .. } => "wrong_deployment_id",
            MeshError::UnsupportedEvidence(_) => "unsupported_evidence",
            MeshError::PinRevoked { .. } => "pin_revoked",
            MeshError::Expired(_) => "expired",
            MeshError::RefusedByPeer(_) => "refused_by_peer",
            MeshError::SimulationNotAllowed => "simulation_not_allowed",
            MeshError::Manifest(_) => "manifest",
            MeshError::OwnEvidence(_) => "own_evidence",
            MeshError::Tls(_) => "tls",
            MeshError::Protocol(_) => "protocol",
            MeshError::Io(_) => "io",
            MeshError::Busy(_) => "busy",
            MeshError::Timeout(_) => "timeout",
        }
    }
}

impl From<std::io::Error> for MeshError {
    fn from(e: std::io::Error) -> Self {
        MeshError::Io(e.to_string())
    }
}
