//! The measurement set of a freshly built image: one SEV-SNP launch digest per launch
//! configuration the spec lists, computed from the very bytes written to the image directory.

use coffer_measurements::snp::{
    firmware_digest, CpuSignature, GuestFeatures, SevHashes, SnpLaunch, Vmm,
};
use coffer_types::{MeasurementSet, Role, SnpLaunchDigest, MEASUREMENTS_VERSION};

use crate::lock::sha256_hex;
use crate::spec::{parse_hex_u64, SnpLaunchConfigs};
use crate::ImageError;

/// The artifacts a launch measures.
pub struct LaunchInputs<'a> {
    /// AmdSev OVMF.
    pub firmware: &'a [u8],
    /// The kernel.
    pub kernel: &'a [u8],
    /// The compressed initramfs.
    pub initramfs: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// Computes the digest of every configuration in `configs`, in a fixed order (vCPU type, then
/// vCPU count, then guest features).
pub fn measurement_set(
    role: Role,
    version: &str,
    configs: &SnpLaunchConfigs,
    inputs: &LaunchInputs<'_>,
) -> Result<MeasurementSet, ImageError> {
    let err = |e: &dyn std::fmt::Display| ImageError::Measure(e.to_string());
    // The firmware pages and the hashes table are the same for every configuration.
    let firmware = firmware_digest(inputs.firmware).map_err(|e| err(&e))?;
    let hashes = SevHashes::new(inputs.kernel, Some(inputs.initramfs), Some(inputs.cmdline));
    let mut snp = Vec::new();
    for vcpu_type in &configs.vcpu_types {
        let signature = CpuSignature::from_vcpu_type(vcpu_type).map_err(|e| err(&e))?;
        for &vcpus in &configs.vcpus {
            for features in &configs.guest_features {
                let bits = parse_hex_u64(features)
                    .ok_or_else(|| ImageError::Measure(format!("guest features '{features}'")))?;
                let digest = SnpLaunch::new(inputs.firmware, vcpus, Vmm::Qemu(signature))
                    .guest_features(GuestFeatures::from_bits(bits))
                    .direct_boot_hashes(hashes)
                    .precomputed_firmware_digest(firmware)
                    .measure()
                    .map_err(|e| err(&e))?;
                snp.push(SnpLaunchDigest {
                    vmm: "QEMU".to_owned(),
                    vcpus,
                    vcpu_type: vcpu_type.clone(),
                    guest_features: features.clone(),
                    launch_digest: digest.to_hex(),
                });
            }
        }
    }
    Ok(MeasurementSet {
        format_version: MEASUREMENTS_VERSION,
        role,
        version: version.to_owned(),
        initramfs_sha256: sha256_hex(inputs.initramfs),
        snp,
    })
}
