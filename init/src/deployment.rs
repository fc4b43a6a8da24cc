//! Binding the appliance to its deployment before any service starts.
//!
//! The launcher hands the deployment manifest over on a small virtio-blk disk with serial
//! [`CONFIG_DISK_SERIAL`] (raw: magic, length, bytes; no file system to parse). The disk is host
//! input and so untrusted; the manifest is accepted only if this guest's own evidence carries its
//! SHA-256 in HOST_DATA (`coffer_evidence::deployment::check_manifest`). Accepted, it is written
//! to [`DEPLOYMENT_RUNTIME_PATH`] for the services, and the attestation device is opened to the
//! services' group. Refused, the init fails stop: no service of a deployment it cannot prove
//! ever runs. Without a config disk the appliance runs standalone, outside any mesh.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use coffer_types::{
    deployment_digest, ApplianceConfig, CONFIG_DISK_MAGIC, CONFIG_DISK_SERIAL,
    DATA_DISK_RUNTIME_PATH, DATA_DISK_SERIAL, DEPLOYMENT_RUNTIME_PATH,
};
use tracing::info;

use crate::InitError;

/// Largest manifest accepted from the config disk.
const MAX_MANIFEST: usize = 1 << 20;

/// Finds the config disk, checks its manifest against this guest's evidence, and publishes it.
/// Returns the deployment id, or `None` when there is no config disk.
pub fn bind(config: &ApplianceConfig) -> Result<Option<String>, InitError> {
    let Some(disk) = find_config_disk(Path::new("/sys/block")) else {
        info!("no deployment config disk: standalone appliance, outside any mesh");
        return Ok(None);
    };
    let manifest = read_config_disk(&disk)?;
    let provider = coffer_evidence::detect().map_err(|e| InitError::Deployment(e.to_string()))?;
    let deployment = coffer_evidence::deployment::check_manifest(provider.as_ref(), &manifest)
        .map_err(|e| InitError::Deployment(e.to_string()))?;
    info!(
        deployment = %deployment.deployment_id,
        digest = %hex::encode(deployment_digest(&manifest)),
        platform = deployment.platform.as_str(),
        "deployment manifest matches this guest's HOST_DATA"
    );
    let path = Path::new(DEPLOYMENT_RUNTIME_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| deployment_io(dir, e))?;
    }
    std::fs::write(path, &manifest).map_err(|e| deployment_io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| deployment_io(path, e))?;
    grant_attestation_device(config)?;
    Ok(Some(deployment.deployment_id))
}

fn deployment_io(path: &Path, e: std::io::Error) -> InitError {
    InitError::Deployment(format!("{}: {e}", path.display()))
}

/// `/dev/<name>` of the block device whose serial is [`CONFIG_DISK_SERIAL`].
fn find_config_disk(sys_block: &Path) -> Option<PathBuf> {
    coffer_types::find_disk_by_serial(sys_block, CONFIG_DISK_SERIAL)
}

/// The manifest bytes on the config disk (magic, u32 LE length, bytes).
fn read_config_disk(disk: &Path) -> Result<Vec<u8>, InitError> {
    let mut file = std::fs::File::open(disk).map_err(|e| deployment_io(disk, e))?;
    let mut header = [0u8; CONFIG_DISK_MAGIC.len() + 4];
    file.read_exact(&mut header)
        .map_err(|e| deployment_io(disk, e))?;
    let (magic, len) = header.split_at(CONFIG_DISK_MAGIC.len());
    if magic != CONFIG_DISK_MAGIC {
        return Err(InitError::Deployment(format!(
            "{}: not a Coffer config disk (magic {magic:02x?})",
            disk.display()
        )));
    }
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 || len > MAX_MANIFEST {
        return Err(InitError::Deployment(format!(
            "{}: manifest length {len} outside 1..={MAX_MANIFEST}",
            disk.display()
        )));
    }
    let mut manifest = vec![0u8; len];
    file.read_exact(&mut manifest)
        .map_err(|e| deployment_io(disk, e))?;
    Ok(manifest)
}

/// The one group the services run as (today every image runs its services as one group), which
/// is given the devices they need.
fn services_gid(config: &ApplianceConfig) -> Option<u32> {
    let mut gids: Vec<u32> = config.services.iter().filter_map(|s| s.gid).collect();
    gids.sort_unstable();
    gids.dedup();
    gids.first().copied()
}

fn grant(device: &Path, gid: u32, what: &str) -> Result<(), InitError> {
    nix::unistd::chown(device, None, Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| InitError::Deployment(format!("chown {}: {e}", device.display())))?;
    std::fs::set_permissions(device, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| deployment_io(device, e))?;
    info!(device = %device.display(), gid, "{what} opened to the services");
    Ok(())
}

/// Lets the services' group use the attestation device (the sim port or /dev/sev-guest): they
/// attest mesh sessions. Nothing else in the guest can.
fn grant_attestation_device(config: &ApplianceConfig) -> Result<(), InitError> {
    let sim = coffer_evidence::sim::find_port(Path::new(coffer_evidence::sim::VIRTIO_PORTS_SYSFS));
    let devices = [
        Some(PathBuf::from(coffer_evidence::snp::SEV_GUEST_DEVICE)),
        sim,
    ];
    let Some(gid) = services_gid(config) else {
        return Ok(());
    };
    for device in devices.into_iter().flatten().filter(|d| d.exists()) {
        grant(&device, gid, "attestation device")?;
    }
    Ok(())
}

/// Lets the services' group use the data disk ([`DATA_DISK_SERIAL`]), when the launcher attached
/// one: the KMS keeps its sealed store on it. Published as [`DATA_DISK_RUNTIME_PATH`] (a
/// symlink), since device names depend on probe order.
pub fn grant_data_disk(config: &ApplianceConfig) -> Result<(), InitError> {
    let Some(disk) = coffer_types::find_disk_by_serial(Path::new("/sys/block"), DATA_DISK_SERIAL)
    else {
        return Ok(());
    };
    if let Some(gid) = services_gid(config) {
        grant(&disk, gid, "data disk")?;
    }
    let link = Path::new(DATA_DISK_RUNTIME_PATH);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|e| deployment_io(dir, e))?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&disk, link).map_err(|e| deployment_io(link, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_disk_is_found_by_serial_and_read_by_its_header() {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in [("vda", "other\n"), ("vdb", "coffer-config\n")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("serial"), serial).unwrap();
        }
        assert_eq!(
            find_config_disk(dir.path()),
            Some(PathBuf::from("/dev/vdb"))
        );
        let disk = dir.path().join("disk.img");
        let mut bytes = CONFIG_DISK_MAGIC.to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        bytes.resize(512, 0);
        std::fs::write(&disk, &bytes).unwrap();
        assert_eq!(read_config_disk(&disk).unwrap(), b"abc");
        bytes[0] = b'X';
        std::fs::write(&disk, &bytes).unwrap();
        let e = read_config_disk(&disk).unwrap_err().to_string();
        assert!(e.contains("not a Coffer config disk"), "{e}");
    }
}
