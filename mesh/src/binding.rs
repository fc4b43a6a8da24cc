//! What REPORT_DATA binds: the construction that makes evidence belong to one TLS session.
//!
//! After the TLS 1.3 handshake both ends derive the same 32-byte value from the session with the
//! RFC 8446 §7.5 exporter (label [`EXPORTER_LABEL`], no context). The exporter is a function of
//! the handshake's secrets, which depend on both sides' fresh ephemeral key shares and randoms
//! and on the whole transcript (both certificates included), so no other session, past or
//! concurrent, has the same value: not one the attacker replays, and not one it relays from
//! (the "intra-handshake" relay of CVE-2026-33697 works against bindings to the certificate key
//! alone, because the attacker can forward a genuine peer's key-bound evidence into its own
//! session; it cannot forward an exporter value it does not share).
//!
//! Each side's REPORT_DATA is
//! `SHA-512(MESH_LABEL ‖ side ‖ 0 ‖ role ‖ 0 ‖ exporter ‖ SHA-256(own certificate DER))`:
//! `side` (`client`/`server`) stops a reflection of the peer's own evidence back to it, `role`
//! ties the evidence to the role the peer claims, and the certificate hash repeats the key
//! binding for verifiers that look at it alone. TLS 1.2 is never offered (its exporter without
//! extended master secret is not unique per session).

use std::collections::BTreeMap;

use coffer_types::Role;
use sha2::{Digest, Sha256, Sha512};

/// The TLS exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-coffer-mesh-attestation-v1";
/// Domain separator of mesh REPORT_DATA.
pub const MESH_LABEL: &[u8] = b"coffer mesh attestation v1\0";
/// Domain separator of the attestation endpoint's REPORT_DATA.
pub const ENDPOINT_LABEL: &[u8] = b"coffer endpoint attestation v1\0";

/// Which end of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that connected.
    Client,
    /// The end that accepted.
    Server,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Side::Client => b"client",
            Side::Server => b"server",
        }
    }
}

/// The REPORT_DATA the `side` end playing `role` puts in its evidence for a session with this
/// `exporter` value, `cert_der` being that end's certificate.
pub fn session_report_data(
    side: Side,
    role: Role,
    exporter: &[u8; 32],
    cert_der: &[u8],
) -> [u8; 64] {
    Sha512::new()
        .chain_update(MESH_LABEL)
        .chain_update(side.label())
        .chain_update([0])
        .chain_update(role.as_str())
        .chain_update([0])
        .chain_update(exporter)
        .chain_update(Sha256::digest(cert_der))
        .finalize()
        .into()
}

/// The REPORT_DATA of the attestation endpoint's evidence: `SHA-512(ENDPOINT_LABEL ‖
/// SHA-256(nonce) ‖ SHA-256(server's SubjectPublicKeyInfo DER) [‖ claims digest])`. The caller's
/// nonce makes it fresh; the server's TLS public key ties it to the connection the caller sees
/// (a relaying server would present another key).
///
/// `claims` are statements the node makes about itself that its evidence vouches for (the KMS's
/// audit-signer key, a recovering KMS's share recipient): with none, nothing is appended; else
/// the [`claims_digest`].
pub fn endpoint_report_data(
    nonce: &[u8],
    spki_der: &[u8],
    claims: &BTreeMap<String, String>,
) -> [u8; 64] {
    let mut hash = Sha512::new()
        .chain_update(ENDPOINT_LABEL)
        .chain_update(Sha256::digest(nonce))
        .chain_update(Sha256::digest(spki_der));
    if !claims.is_empty() {
        hash.update(claims_digest(claims));
    }
    hash.finalize().into()
}

/// SHA-256 over the claims in key order, each key and value preceded by its length (u32 big
/// endian): no two claim sets encode alike.
pub fn claims_digest(claims: &BTreeMap<String, String>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (key, value) in claims {
        for part in [key, value] {
            // Claims are short names and keys; a longer one is cut to the u32 range in the
            // length only, which a verifier computing the same digest reproduces.
            hash.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            hash.update(part.as_bytes());
        }
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_binding() {
        let none = BTreeMap::new();
        let base = session_report_data(Side::Client, Role::Kms, &[1; 32], b"cert");
        assert_ne!(
            base,
            session_report_data(Side::Server, Role::Kms, &[1; 32], b"cert")
        );
        assert_ne!(
            base,
            session_report_data(Side::Client, Role::Client, &[1; 32], b"cert")
        );
        assert_ne!(
            base,
            session_report_data(Side::Client, Role::Kms, &[2; 32], b"cert")
        );
        assert_ne!(
            base,
            session_report_data(Side::Client, Role::Kms, &[1; 32], b"cert2")
        );
        assert_ne!(
            endpoint_report_data(b"n", b"k", &none),
            endpoint_report_data(b"n2", b"k", &none)
        );
        assert_ne!(
            endpoint_report_data(b"n", b"k", &none),
            endpoint_report_data(b"n", b"k2", &none)
        );
        let claim = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let with = endpoint_report_data(b"n", b"k", &claim("a", "b"));
        assert_ne!(with, endpoint_report_data(b"n", b"k", &none));
        assert_ne!(with, endpoint_report_data(b"n", b"k", &claim("a", "c")));
        // Lengths are encoded: moving a byte between key and value changes the digest.
        assert_ne!(with, endpoint_report_data(b"n", b"k", &claim("ab", "")));
    }
}
