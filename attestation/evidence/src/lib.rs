//! `coffer-evidence`: how a Coffer guest proves what it is.
//!
//! **Owns:** the [`Evidence`] a guest hands to a verifier (an SEV-SNP report with its VEK chain,
//! or Azure vTPM evidence), the [`EvidenceProvider`] trait with one backend per platform, the
//! wire protocol of the simulated secure processor ([`sim::wire`]), and the guest's check of its
//! own deployment manifest against its evidence ([`deployment`]).
//!
//! **Backends:**
//! - [`snp`]: real SEV-SNP, through the kernel's `/dev/sev-guest` (`SNP_GET_EXT_REPORT`, whose
//!   certificate table carries the VCEK chain the host provisioned, so no AMD KDS fetch is on the
//!   hot path) or configfs-tsm; sealing keys through `SNP_GET_DERIVED_KEY`.
//! - [`sim`]: the simulated secure processor on the host, over a virtio-serial port. It signs
//!   with a test chain that real verifiers refuse.
//! - Azure vTPM lives in `coffer-vtpm-provider` (it links the shared libtss2, which the static
//!   appliance binaries cannot).
//!
//! **Trusts:** the kernel's device interfaces. It **checks nothing** about evidence: verifying is
//! the verifier's job (`coffer-verify`, `coffer-vtpm`, `coffer-mesh`). The one exception is
//! [`deployment::check_manifest`], the guest refusing to run a deployment its own evidence does
//! not name.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub mod deployment;
pub mod sim;
pub mod snp;

pub use coffer_types::Platform;

/// Bytes of REPORT_DATA a guest chooses: the nonce or key binding its evidence carries.
pub const REPORT_DATA_LEN: usize = 64;

/// Attestation evidence, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Evidence {
    /// An SEV-SNP attestation report (real or simulated) with the certificates that sign it.
    Snp {
        /// The 1184-byte report.
        #[serde(with = "hex")]
        report: Vec<u8>,
        /// The VCEK or VLEK, DER.
        #[serde(with = "hex")]
        vek: Vec<u8>,
        /// The ASK or ASVK, DER, when the platform provided it.
        #[serde(default, with = "hex_option")]
        ask: Option<Vec<u8>>,
        /// The ARK, DER, when the platform provided it (verifiers use their own pinned copy).
        #[serde(default, with = "hex_option")]
        ark: Option<Vec<u8>>,
    },
    /// Azure vTPM evidence: the Trustee `az-snp-vtpm` version 2 JSON document (HCL report, VCEK,
    /// TPM quote with the nonce).
    AzureVtpm {
        /// The document's bytes.
        #[serde(with = "hex")]
        document: Vec<u8>,
    },
}

impl Evidence {
    /// The raw SNP report, if this is SNP evidence.
    pub fn snp_report(&self) -> Option<&[u8]> {
        match self {
            Evidence::Snp { report, .. } => Some(report),
            Evidence::AzureVtpm { .. } => None,
        }
    }
}

/// Why evidence or a sealing key could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// No attestation device of any kind was found.
    #[error("no TEE found: none of {0} exists (is this a confidential VM?)")]
    NoTee(String),
    /// A device or file could not be used.
    #[error("{path}: {reason}")]
    Device {
        /// The device or file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The platform answered something that is not an answer to the question.
    #[error("attestation protocol: {0}")]
    Protocol(String),
    /// The platform refused the request.
    #[error("the secure processor refused: {0}")]
    Refused(String),
    /// The platform did not answer in time.
    #[error("the secure processor did not answer within {0} ms")]
    Timeout(u64),
}

/// A source of evidence inside a guest. Calls block (they talk to a device or the host), so
/// async callers run them on a blocking thread.
pub trait EvidenceProvider: Send + Sync {
    /// The platform this provider attests.
    fn platform(&self) -> Platform;

    /// Evidence whose REPORT_DATA is `report_data` (a nonce, or a hash that binds the evidence to
    /// a session).
    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError>;

    /// A 32-byte sealing key bound to this guest's launch measurement and policy and to
    /// `context` (the same inputs give the same key after a reboot of the same image; any other
    /// image gets another key).
    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError>;
}

/// The provider for the platform this guest runs on: real SEV-SNP when `/dev/sev-guest` or
/// configfs-tsm exists, else the simulated secure processor when its virtio-serial port exists.
///
/// Real hardware always wins: a host that adds a simulator port to an SNP guest gets evidence
/// nobody trusts, and a host that hides the SNP device gets simulated evidence, which every
/// verifier not configured for simulation refuses.
pub fn detect() -> Result<Box<dyn EvidenceProvider>, EvidenceError> {
    if let Some(provider) = snp::detect() {
        return Ok(provider);
    }
    if let Some(port) = sim::find_port(std::path::Path::new(sim::VIRTIO_PORTS_SYSFS)) {
        return Ok(Box::new(sim::SimPortProvider::new(port)));
    }
    Err(EvidenceError::NoTee(format!(
        "{}, {}, a virtio port named {}",
        snp::SEV_GUEST_DEVICE,
        snp::CONFIGFS_TSM_REPORT,
        sim::PORT_NAME
    )))
}

/// serde for `Option<Vec<u8>>` as an optional hex string.
mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&hex::encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| hex::decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_round_trips_through_json() {
        let evidence = Evidence::Snp {
            report: vec![1, 2, 3],
            vek: vec![4],
            ask: None,
            ark: Some(vec![5, 6]),
        };
        let json = serde_json::to_string(&evidence).unwrap();
        assert!(json.contains("\"kind\":\"snp\""), "{json}");
        assert_eq!(serde_json::from_str::<Evidence>(&json).unwrap(), evidence);
        assert!(
            serde_json::from_str::<Evidence>(r#"{"kind":"snp","report":"zz","vek":""}"#).is_err()
        );
    }
}
