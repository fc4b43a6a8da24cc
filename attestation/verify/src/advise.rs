//! Why a measurement did not match: the [`MeasurementAdvisor`] that recomputes nearby launch
//! digests.
//!
//! A report whose MEASUREMENT is not allowed most often comes from the right image launched a
//! little differently (another vCPU count or type, other guest features), or from another build
//! of the image. Given the image's artifacts (bytes, no I/O here) and the measurement sets
//! pinned for it, [`LaunchCandidates`] looks for the configuration that produces the report's
//! digest and says how it differs from what the policy allows.

use coffer_measurements::snp::{
    firmware_digest, CpuSignature, GuestFeatures, LaunchDigest, SevHashes, SnpLaunch, Vmm,
    VCPU_TYPES,
};
use coffer_types::MeasurementSet;

use crate::checks::results::MeasurementMismatch;
use crate::explain::MeasurementAdvisor;

/// vCPU counts tried when looking for the configuration behind a digest.
const VCPU_COUNTS: [u32; 19] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32, 64, 128,
];
/// Guest features tried: SNPActive, and SNPActive|DebugSwap (older host kernels).
const GUEST_FEATURES: [u64; 2] = [0x1, 0x21];

/// The launch inputs of one image, as bytes.
pub struct ImageArtifacts<'a> {
    /// AmdSev OVMF.
    pub firmware: &'a [u8],
    /// Kernel.
    pub kernel: &'a [u8],
    /// Initramfs.
    pub initrd: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a str,
}

/// A launch configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// vCPU count.
    pub vcpus: u32,
    /// vCPU type name.
    pub vcpu_type: String,
    /// Guest features.
    pub guest_features: u64,
}

impl std::fmt::Display for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vCPUs {} guest features {:#x}",
            self.vcpus, self.vcpu_type, self.guest_features
        )
    }
}

/// Looks for the launch behind a digest among the image's nearby configurations and the pinned
/// builds.
pub struct LaunchCandidates<'a> {
    artifacts: Option<ImageArtifacts<'a>>,
    pinned: Vec<MeasurementSet>,
}

impl<'a> LaunchCandidates<'a> {
    /// From the image's artifacts (if available) and the measurement sets pinned for it.
    pub fn new(artifacts: Option<ImageArtifacts<'a>>, pinned: Vec<MeasurementSet>) -> Self {
        Self { artifacts, pinned }
    }

    /// The configuration of this image that measures as `digest`, if any.
    pub fn find_config(&self, digest: &[u8; 48]) -> Option<LaunchConfig> {
        let artifacts = self.artifacts.as_ref()?;
        let firmware = firmware_digest(artifacts.firmware).ok()?;
        let hashes = SevHashes::new(
            artifacts.kernel,
            Some(artifacts.initrd),
            Some(artifacts.cmdline),
        );
        for (name, _) in VCPU_TYPES {
            let Ok(signature) = CpuSignature::from_vcpu_type(name) else {
                continue;
            };
            for vcpus in VCPU_COUNTS {
                for features in GUEST_FEATURES {
                    let measured = SnpLaunch::new(artifacts.firmware, vcpus, Vmm::Qemu(signature))
                        .guest_features(GuestFeatures::from_bits(features))
                        .direct_boot_hashes(hashes)
                        .precomputed_firmware_digest(firmware)
                        .measure();
                    if measured.is_ok_and(|m| m.as_bytes() == digest) {
                        return Some(LaunchConfig {
                            vcpus,
                            vcpu_type: name.to_owned(),
                            guest_features: features,
                        });
                    }
                }
            }
        }
        None
    }

    /// The pinned configurations whose digests the policy allows.
    fn allowed_configs(&self, allowed: &[[u8; 48]]) -> Vec<String> {
        self.pinned
            .iter()
            .flat_map(|set| &set.snp)
            .filter(|pin| {
                LaunchDigest::from_hex(&pin.launch_digest)
                    .is_ok_and(|d| allowed.iter().any(|a| a == d.as_bytes()))
            })
            .map(|pin| {
                format!(
                    "{} vCPUs {} guest features {}",
                    pin.vcpus, pin.vcpu_type, pin.guest_features
                )
            })
            .collect()
    }
}

impl MeasurementAdvisor for LaunchCandidates<'_> {
    fn likely_cause(&self, mismatch: &MeasurementMismatch) -> Option<String> {
        let got_hex = hex::encode(mismatch.got);
        let allowed = self.allowed_configs(&mismatch.allowed);
        let allowed = if allowed.is_empty() {
            String::new()
        } else {
            format!("; the policy allows {}", allowed.join(", "))
        };
        for set in &self.pinned {
            if let Some(pin) = set.snp.iter().find(|p| p.launch_digest == got_hex) {
                return Some(format!(
                    "it is the pinned {} build {} (initramfs sha256 {}) launched with {} vCPUs {} guest features {}, a build this policy does not allow{allowed}",
                    set.role,
                    set.version,
                    &set.initramfs_sha256[..16.min(set.initramfs_sha256.len())],
                    pin.vcpus,
                    pin.vcpu_type,
                    pin.guest_features
                ));
            }
        }
        match self.find_config(&mismatch.got) {
            Some(config) => Some(format!(
                "this image launched with {config} measures exactly so{allowed}"
            )),
            None if self.artifacts.is_some() => Some(format!(
                "no launch of this image with {} to {} vCPUs, any known vCPU type and guest features 0x1 or 0x21 measures so: another firmware, kernel, initrd or command line{allowed}",
                VCPU_COUNTS[0],
                VCPU_COUNTS[VCPU_COUNTS.len() - 1]
            )),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::{Role, SnpLaunchDigest, MEASUREMENTS_VERSION};

    fn synthetic(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../measurements/testdata/snp-synthetic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn digest(fw: &[u8], kernel: &[u8], initrd: &[u8], vcpus: u32, ty: &str, f: u64) -> [u8; 48] {
        let signature = CpuSignature::from_vcpu_type(ty).unwrap();
        let d = SnpLaunch::new(fw, vcpus, Vmm::Qemu(signature))
            .guest_features(GuestFeatures::from_bits(f))
            .direct_boot(kernel, Some(initrd), Some("console=ttyS0"))
            .measure()
            .unwrap();
        *d.as_bytes()
    }

    #[test]
    fn another_vcpu_count_type_and_features_are_named() {
        let (fw, kernel, initrd) = (
            synthetic("fw_kernel_hashes.bin"),
            synthetic("kernel.bin"),
            synthetic("initrd.bin"),
        );
        let allowed = digest(&fw, &kernel, &initrd, 1, "EPYC-v4", 0x1);
        let got = digest(&fw, &kernel, &initrd, 4, "EPYC-Milan", 0x21);
        let pinned = MeasurementSet {
            format_version: MEASUREMENTS_VERSION,
            role: Role::Kms,
            version: "0.1.0".into(),
            initramfs_sha256: "ab".repeat(32),
            snp: vec![SnpLaunchDigest {
                vmm: "QEMU".into(),
                vcpus: 1,
                vcpu_type: "EPYC-v4".into(),
                guest_features: "0x1".into(),
                launch_digest: hex::encode(allowed),
            }],
        };
        let advisor = LaunchCandidates::new(
            Some(ImageArtifacts {
                firmware: &fw,
                kernel: &kernel,
                initrd: &initrd,
                cmdline: "console=ttyS0",
            }),
            vec![pinned.clone()],
        );
        let cause = advisor
            .likely_cause(&MeasurementMismatch {
                got,
                allowed: vec![allowed],
            })
            .unwrap();
        assert_eq!(
            cause,
            "this image launched with 4 vCPUs EPYC-Milan guest features 0x21 measures exactly so; \
             the policy allows 1 vCPUs EPYC-v4 guest features 0x1"
        );

        // A digest of a pinned build the policy does not list is named as that build.
        let other = MeasurementMismatch {
            got: allowed,
            allowed: vec![got],
        };
        let cause = advisor.likely_cause(&other).unwrap();
        assert!(cause.starts_with("it is the pinned kms build 0.1.0 (initramfs sha256 abababababababab) launched with 1 vCPUs EPYC-v4"), "{cause}");

        // Nothing nearby: says so.
        let cause = advisor
            .likely_cause(&MeasurementMismatch {
                got: [7; 48],
                allowed: vec![allowed],
            })
            .unwrap();
        assert!(
            cause.starts_with("no launch of this image with 1 to 128 vCPUs"),
            "{cause}"
        );
    }
}
