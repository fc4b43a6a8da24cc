//! The guest's check of its own deployment manifest.
//!
//! The manifest arrives on a config disk the host wrote: untrusted. The launcher also put the
//! manifest's SHA-256 into HOST_DATA, which the secure processor signs into every report of this
//! guest. So the guest asks for its own evidence and compares: a host that hands the guest a
//! manifest other than the one it launched it with is caught here, before any service starts
//! (the init then refuses to run them). On real SEV-SNP hardware this is a real check (the host
//! cannot change HOST_DATA after launch). On the sim platform the host plays the secure processor
//! too, so it only catches mistakes, not malice; that is what simulation means.

use coffer_types::{deployment_digest, Deployment, DeploymentError};
use sha2::{Digest, Sha512};

use crate::{Evidence, EvidenceError, EvidenceProvider};

/// HOST_DATA's place in an SNP report (AMD SEV-SNP ABI #56860, Table 23: offset 0xC0, 32 bytes).
const HOST_DATA: std::ops::Range<usize> = 0xC0..0xE0;
/// REPORT_DATA's place (offset 0x50, 64 bytes).
const REPORT_DATA: std::ops::Range<usize> = 0x50..0x90;

/// Domain separator of the self-check's REPORT_DATA.
const SELF_CHECK_LABEL: &[u8] = b"coffer deployment self-check v1\0";

/// Why the guest refuses the manifest it was given.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentCheckError {
    /// The manifest itself is refused.
    #[error(transparent)]
    Manifest(#[from] DeploymentError),
    /// No evidence could be had.
    #[error("cannot obtain this guest's own evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// The manifest is for another platform.
    #[error("the manifest is for platform {manifest}, but this guest runs on {guest}")]
    Platform {
        /// The manifest's platform.
        manifest: &'static str,
        /// This guest's.
        guest: &'static str,
    },
    /// HOST_DATA names another deployment.
    #[error(
        "deployment mismatch: HOST_DATA is {got}, but the manifest given hashes to {expected}"
    )]
    HostData {
        /// SHA-256 of the manifest, hex.
        expected: String,
        /// HOST_DATA from the evidence, hex.
        got: String,
    },
    /// The report is not an answer to this check.
    #[error("the report is malformed or answers another request: {0}")]
    Report(String),
    /// This platform binds the deployment another way.
    #[error("platform {0}: the deployment is bound by measuring it into a PCR, not HOST_DATA")]
    Unsupported(&'static str),
}

/// Parses `manifest_bytes` and checks that this guest's evidence names it in HOST_DATA.
/// Returns the manifest when it does.
pub fn check_manifest(
    provider: &dyn EvidenceProvider,
    manifest_bytes: &[u8],
) -> Result<Deployment, DeploymentCheckError> {
    let deployment = Deployment::from_json(manifest_bytes)?;
    let guest = provider.platform();
    if deployment.platform != guest {
        return Err(DeploymentCheckError::Platform {
            manifest: deployment.platform.as_str(),
            guest: guest.as_str(),
        });
    }
    let digest = deployment_digest(manifest_bytes);
    let report_data: [u8; 64] = Sha512::new()
        .chain_update(SELF_CHECK_LABEL)
        .chain_update(digest)
        .finalize()
        .into();
    match provider.attest(&report_data)? {
        Evidence::Snp { report, .. } => {
            let (Some(host_data), Some(echoed)) = (report.get(HOST_DATA), report.get(REPORT_DATA))
            else {
                return Err(DeploymentCheckError::Report(format!(
                    "{} bytes, too short",
                    report.len()
                )));
            };
            if echoed != report_data {
                return Err(DeploymentCheckError::Report(
                    "REPORT_DATA is not the one asked for".into(),
                ));
            }
            if host_data != digest {
                return Err(DeploymentCheckError::HostData {
                    expected: hex::encode(digest),
                    got: hex::encode(host_data),
                });
            }
            Ok(deployment)
        }
        Evidence::AzureVtpm { .. } => Err(DeploymentCheckError::Unsupported(guest.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::Platform;
    use zeroize::Zeroizing;

    /// A fake platform that echoes REPORT_DATA into a zeroed report with a chosen HOST_DATA: the
    /// self-check reads only those two fields.
    struct Echo {
        host_data: [u8; 32],
        platform: Platform,
    }

    impl EvidenceProvider for Echo {
        fn platform(&self) -> Platform {
            self.platform
        }
        fn attest(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
            let mut report = vec![0u8; 0x4A0];
            report[REPORT_DATA].copy_from_slice(report_data);
            report[HOST_DATA].copy_from_slice(&self.host_data);
            Ok(Evidence::Snp {
                report,
                vek: vec![],
                ask: None,
                ark: None,
            })
        }
        fn sealing_key(&self, _: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
            Err(EvidenceError::Refused("not here".into()))
        }
    }

    const MANIFEST: &str = r#"{"format_version":1,"deployment_id":"t","platform":"qemu-snp",
        "trust_root":"amd","roles":{},"session_max_age_secs":60,
        "bootstrap":{"org":"o","admin":"a"}}"#;

    #[test]
    fn the_manifest_named_by_host_data_is_accepted() {
        let echo = Echo {
            host_data: deployment_digest(MANIFEST.as_bytes()),
            platform: Platform::QemuSnp,
        };
        let deployment = check_manifest(&echo, MANIFEST.as_bytes()).unwrap();
        assert_eq!(deployment.deployment_id, "t");
    }

    #[test]
    fn another_manifest_is_refused_with_both_digests() {
        let echo = Echo {
            host_data: [7; 32],
            platform: Platform::QemuSnp,
        };
        match check_manifest(&echo, MANIFEST.as_bytes()) {
            Err(DeploymentCheckError::HostData { expected, got }) => {
                assert_eq!(
                    expected,
                    hex::encode(deployment_digest(MANIFEST.as_bytes()))
                );
                assert_eq!(got, "07".repeat(32));
            }
            other => panic!("expected a HOST_DATA mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_manifest_for_another_platform_is_refused() {
        let echo = Echo {
            host_data: deployment_digest(MANIFEST.as_bytes()),
            platform: Platform::Sim,
        };
        assert!(matches!(
            check_manifest(&echo, MANIFEST.as_bytes()),
            Err(DeploymentCheckError::Platform { .. })
        ));
    }
}
