//! `coffer-mesh`: mutually attested TLS between Coffer VMs.
//!
//! **Owns:** the attested handshake ([`handshake`]: TLS 1.3, then evidence each way bound to the
//! session by the TLS exporter, see [`binding`]), what a node trusts ([`Trust`]: the deployment's
//! roots and per-role pins, with run-time revocation), the life of a session ([`Session`]:
//! bounded age, torn down when its pin goes), HTTP helpers so every service gets this by default
//! ([`http`]), and the attestation endpoint for people ([`endpoint`]).
//!
//! **Trusts:** the deployment manifest it is given (the guest checked it against its own
//! HOST_DATA first, see `coffer_evidence::deployment`), AMD's roots or, only when asked with
//! [`Simulation::DangerousAccept`], the manifest's simulation root; rustls and ring for TLS.
//!
//! **Checks**, for every peer, before any application byte: TLS 1.3 with a handshake signature
//! by the peer's certificate key; the peer's role is one this endpoint talks to; same deployment
//! id; then the evidence, with `coffer-verify`: genuine (chain to the trusted root, report
//! signature, VCEK), HOST_DATA = this deployment's digest, REPORT_DATA = this session's binding
//! for the peer's side and role, not debuggable, no migration agent, VMPL 0, TCB floors, and the
//! measurement pinned for the role. Refusals are [`MeshError`]s named after the failure.

#![forbid(unsafe_code)]

pub mod accept;
pub mod binding;
pub mod endpoint;
mod error;
pub mod handshake;
pub mod http;
mod session;
pub mod tls;
mod trust;

pub use error::MeshError;
pub use handshake::{AttestedStream, MeshNode};
pub use session::Session;
pub use trust::{Binding, PeerIdentity, Pins, Simulation, Trust};

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
