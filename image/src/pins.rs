//! Committed pins: `measurements/pins/<role>.json`, the allow-list of launch measurements a
//! verifier accepts for a role.
//!
//! A pin file lists measurement sets, the incoming build first, then the outgoing build(s) a
//! release still accepts while deployments upgrade. `coffer image pin <role>` ("bless") puts the
//! current build first and keeps `keep_previous` older sets. A test checks that the current build
//! reproduces the first set, so a change that moves a measurement cannot land unnoticed.

use std::path::{Path, PathBuf};

use coffer_types::{MeasurementSet, PinFile, Role, MEASUREMENTS_VERSION};

use crate::ImageError;

/// Where a role's pins are committed.
pub fn pin_path(checkout: &Path, role: Role) -> PathBuf {
    checkout
        .join("measurements/pins")
        .join(format!("{role}.json"))
}

/// Reads a pin file; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<PinFile>, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(path, e)),
    };
    let pins: PinFile = serde_json::from_slice(&bytes).map_err(|e| ImageError::LockSyntax {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if pins.format_version != MEASUREMENTS_VERSION {
        return Err(ImageError::LockSyntax {
            path: path.display().to_string(),
            message: format!("unsupported format_version {}", pins.format_version),
        });
    }
    Ok(Some(pins))
}

/// The pin file after blessing `current`: it first, then up to `keep_previous` of the older
/// sets (a set for the same build is not kept twice).
pub fn bless(existing: Option<PinFile>, current: MeasurementSet, keep_previous: usize) -> PinFile {
    let role = current.role;
    let previous: Vec<MeasurementSet> = existing
        .map(|p| p.sets)
        .unwrap_or_default()
        .into_iter()
        .filter(|set| set.initramfs_sha256 != current.initramfs_sha256)
        .take(keep_previous)
        .collect();
    let mut sets = vec![current];
    sets.extend(previous);
    PinFile {
        format_version: MEASUREMENTS_VERSION,
        role,
        sets,
    }
}

/// Writes a pin file (pretty JSON, newline-terminated, so diffs read well in review).
pub fn save(path: &Path, pins: &PinFile) -> Result<(), ImageError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    }
    let mut json = serde_json::to_vec_pretty(pins).map_err(|e| ImageError::io(path, e.into()))?;
    json.push(b'\n');
    std::fs::write(path, json).map_err(|e| ImageError::io(path, e))
}

/// Checks that `current` is the incoming set of `pins`; explains the first difference.
pub fn check_reproduces(pins: &PinFile, current: &MeasurementSet) -> Result<(), String> {
    let Some(pinned) = pins.sets.first() else {
        return Err("the pin file lists no measurement set".into());
    };
    if pinned.initramfs_sha256 != current.initramfs_sha256 {
        return Err(format!(
            "initramfs differs: pinned sha256 {}, built {}",
            pinned.initramfs_sha256, current.initramfs_sha256
        ));
    }
    if pinned.snp.len() != current.snp.len() {
        return Err(format!(
            "pinned {} launch configurations, built {}",
            pinned.snp.len(),
            current.snp.len()
        ));
    }
    for (pin, built) in pinned.snp.iter().zip(&current.snp) {
        if pin != built {
            return Err(format!(
                "{} vCPUs {} features {}: pinned {}, built {}",
                built.vcpus,
                built.vcpu_type,
                built.guest_features,
                pin.launch_digest,
                built.launch_digest
            ));
        }
    }
    if pinned != current {
        return Err("the sets differ in their metadata (role or version)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::SnpLaunchDigest;

    fn set(initramfs: &str, digest: &str) -> MeasurementSet {
        MeasurementSet {
            format_version: MEASUREMENTS_VERSION,
            role: Role::Kms,
            version: "0.1.0".into(),
            initramfs_sha256: initramfs.into(),
            snp: vec![SnpLaunchDigest {
                vmm: "QEMU".into(),
                vcpus: 1,
                vcpu_type: "EPYC-v4".into(),
                guest_features: "0x1".into(),
                launch_digest: digest.into(),
            }],
        }
    }

    #[test]
    fn blessing_puts_the_new_build_first_and_keeps_the_outgoing_one() {
        let pins = bless(None, set("a", "1"), 1);
        let pins = bless(Some(pins), set("b", "2"), 1);
        let pins = bless(Some(pins), set("c", "3"), 1);
        let builds: Vec<_> = pins
            .sets
            .iter()
            .map(|s| s.initramfs_sha256.as_str())
            .collect();
        assert_eq!(builds, ["c", "b"]);
        // Re-blessing the same build does not list it twice.
        let again = bless(Some(pins), set("c", "3"), 1);
        let builds: Vec<_> = again
            .sets
            .iter()
            .map(|s| s.initramfs_sha256.as_str())
            .collect();
        assert_eq!(builds, ["c", "b"]);
    }

    #[test]
    fn a_moved_digest_is_explained() {
        let pins = bless(None, set("a", "1"), 1);
        assert!(check_reproduces(&pins, &set("a", "1")).is_ok());
        let err = check_reproduces(&pins, &set("b", "2")).unwrap_err();
        assert_eq!(err, "initramfs differs: pinned sha256 a, built b");
        let err = check_reproduces(&pins, &set("a", "2")).unwrap_err();
        assert_eq!(err, "1 vCPUs EPYC-v4 features 0x1: pinned 1, built 2");
    }
}
