//! Coffer's shared vocabulary.
//!
//! Producers and consumers of the same document use the types here, so that they cannot drift:
//! the image builder writes an [`ApplianceConfig`] into the initramfs and the init reads it; the
//! image builder writes an [`ImageManifest`] beside the artifacts and the launcher (and later the
//! measurement tools) read it.
//!
//! This crate does no I/O and holds no secrets. It goes into every appliance binary, so it stays
//! small: serde, thiserror and sha2 (for the [`deployment_digest`]).

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod deployment;
pub use deployment::*;

/// The three appliance images. Each role has exactly one image spec and one multi-call binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Key management service: releases keys to attested, authorised peers.
    Kms,
    /// The customer's appliance: REST API, web UI, client-side encryption.
    Client,
    /// Runs approved jobs on encrypted data.
    Executor,
}

impl Role {
    /// Every role, in the order images are built and listed.
    pub const ALL: [Role; 3] = [Role::Kms, Role::Client, Role::Executor];

    /// The role's name as it appears in specs, manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Kms => "kms",
            Role::Client => "client",
            Role::Executor => "executor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}' (expected one of: kms, client, executor)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Path of the baked configuration inside every appliance image.
pub const APPLIANCE_CONFIG_PATH: &str = "/etc/coffer/appliance.json";

/// The configuration the image builder bakes into an image and the init obeys.
///
/// It is part of the initramfs and therefore of the launch measurement: nothing here can be
/// changed at run time by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Which appliance this is.
    pub role: Role,
    /// Version of the image (the workspace version it was built from).
    pub version: String,
    /// Kernel modules to load, in dependency order, as paths inside the initramfs.
    pub modules: Vec<String>,
    /// How the init brings up the network.
    pub network: NetworkConfig,
    /// The fixed service set, in start order (stopped in reverse order).
    pub services: Vec<ServiceConfig>,
    /// When and how crashed services are restarted.
    pub restart: RestartPolicy,
    /// How long a service gets between SIGTERM and SIGKILL at shutdown, in milliseconds.
    pub stop_timeout_ms: u64,
}

/// How the init configures the appliance's network interface (after loopback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum NetworkConfig {
    /// A fixed address, as used with QEMU user networking.
    Static {
        /// Interface name as the kernel names it (no udev in the image), e.g. `eth0`.
        interface: String,
        /// IPv4 address with prefix length, e.g. `10.0.2.15/24`.
        address: String,
        /// Default gateway, e.g. `10.0.2.2`.
        gateway: String,
    },
    /// Address, prefix, router and DNS servers from a DHCPv4 server, as on clouds.
    Dhcp {
        /// Interface name as the kernel names it, e.g. `eth0`.
        interface: String,
    },
    /// Loopback only.
    None,
}

/// One service of the fixed service set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name used in logs and in the health report.
    pub name: String,
    /// The applet of the appliance's multi-call binary that implements the service.
    pub applet: String,
    /// Arguments passed to the applet.
    pub args: Vec<String>,
    /// Unprivileged user and group the service runs as; `None` keeps root (only where needed).
    pub uid: Option<u32>,
    /// Group id matching `uid`.
    pub gid: Option<u32>,
    /// A critical service that keeps crashing powers the VM off (fail-stop).
    pub critical: bool,
}

/// Restart policy for crashed services: exponential backoff, and a crash-loop limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Delay before the first restart, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Upper bound of the delay, in milliseconds.
    pub max_backoff_ms: u64,
    /// A service that exits this many times within `window_ms` is in a crash loop.
    pub max_restarts: u32,
    /// The crash-loop window, in milliseconds.
    pub window_ms: u64,
}

/// Version of the [`ImageManifest`] format. Bump on any incompatible change.
pub const IMAGE_MANIFEST_VERSION: u32 = 1;

/// File name of the manifest inside an image directory.
pub const IMAGE_MANIFEST_FILE: &str = "manifest.json";

/// What the image builder produced, and from what. Written as `manifest.json` beside the
/// artifacts; every file is named with its sha256 so that anyone can re-check the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// [`IMAGE_MANIFEST_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Which appliance the image is.
    pub role: Role,
    /// The workspace version the image was built from.
    pub version: String,
    /// The kernel command line the image must be booted with (part of the measurement).
    pub cmdline: String,
    /// Every input, with its sha256: pinned files, the appliance binary, the spec.
    pub inputs: Vec<FileDigest>,
    /// Every output file in the image directory, with its sha256.
    pub outputs: Vec<FileDigest>,
    /// Kernel modules in the image, in load order.
    pub modules: Vec<String>,
    /// Guest TCP ports the image serves, to be forwarded by a launcher.
    pub ports: Vec<PortSpec>,
    /// The guest port of the health endpoint (`GET /healthz`).
    pub health_port: u16,
    /// The persistent data disk the image needs, in MiB: a launcher attaches one (serial
    /// [`DATA_DISK_SERIAL`]) and keeps it across runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk_mib: Option<u32>,
}

/// Serial number of the virtio-blk data disk that holds an appliance's persistent state (the
/// KMS store). The host sees only ciphertext on it.
pub const DATA_DISK_SERIAL: &str = "coffer-data";

/// Where, on a blank data disk, a launcher may leave a **join hint**: the mesh address of a KMS
/// that the new KMS should join (replica or upgrade) instead of starting a new root key. Bytes
/// `64..` of the disk: [`JOIN_HINT_MAGIC`], a u16 little-endian length, the address. Untrusted
/// (the host wrote it): a false hint can only make the KMS join another pinned KMS of the same
/// deployment, or start empty, never release anything.
pub const JOIN_HINT_OFFSET: u64 = 64;
/// Magic of the join hint.
pub const JOIN_HINT_MAGIC: &[u8; 8] = b"COFJOIN1";
/// The longest join hint address.
pub const MAX_JOIN_HINT: usize = 255;

/// Writes a join hint for `address` into the data disk `disk` (see [`JOIN_HINT_OFFSET`]).
pub fn write_join_hint(disk: &std::path::Path, address: &str) -> std::io::Result<()> {
    write_hint(
        disk,
        JOIN_HINT_OFFSET,
        JOIN_HINT_MAGIC,
        address.as_bytes(),
        MAX_JOIN_HINT,
        "join address",
    )
}

/// Reads the join hint of the data disk `disk`, if it has one.
pub fn read_join_hint(disk: &std::path::Path) -> std::io::Result<Option<String>> {
    let raw = read_hint_bytes(disk, JOIN_HINT_OFFSET, MAX_JOIN_HINT)?;
    parse_join_hint(&raw)
}

/// The join hint in `raw`, the bytes of a data disk from [`JOIN_HINT_OFFSET`] on (host-written:
/// anything is possible).
pub fn parse_join_hint(raw: &[u8]) -> std::io::Result<Option<String>> {
    parse_hint(raw, JOIN_HINT_MAGIC, MAX_JOIN_HINT, "join hint")?
        .map(|bytes| {
            String::from_utf8(bytes.to_vec()).map_err(|_| invalid_data("join hint is not UTF-8"))
        })
        .transpose()
}

/// Where a launcher leaves the **peer hint** on a KMS data disk, at every start: the KMS's own
/// witness URL and those of its peers ([`PeerHint`], JSON), which the KMS's rollback witnesses
/// use. Bytes `1024..` of the disk: [`PEER_HINT_MAGIC`], a u16 little-endian length, the JSON.
/// Untrusted (the host wrote it): a witness is named by its attested process, not its URL, so a
/// false hint can only keep a KMS from proving its state fresh, never make it accept an old one.
pub const PEER_HINT_OFFSET: u64 = 1024;
/// Magic of the peer hint.
pub const PEER_HINT_MAGIC: &[u8; 8] = b"COFPEER1";
/// The longest peer hint.
pub const MAX_PEER_HINT: usize = 2048;

/// The peer hint's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerHint {
    /// This KMS's own witness URL as its peers reach it (`https://HOST:PORT`).
    #[serde(default, rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_url: Option<String>,
    /// The witness URLs of its peers.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Where the replicas' shared store is (a PostgreSQL URL), when the manifest keeps the KMS
    /// state in one ([`crate::KmsSettings::shared_store`]). A hint like the rest:
    /// everything in it is sealed and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// Writes `hint` into the data disk `disk` (see [`PEER_HINT_OFFSET`]), replacing any before.
pub fn write_peer_hint(disk: &std::path::Path, hint: &PeerHint) -> std::io::Result<()> {
    let json = serde_json::to_vec(hint).map_err(std::io::Error::other)?;
    write_hint(
        disk,
        PEER_HINT_OFFSET,
        PEER_HINT_MAGIC,
        &json,
        MAX_PEER_HINT,
        "peer hint",
    )
}

/// Reads the peer hint of the data disk `disk`, if it has one.
pub fn read_peer_hint(disk: &std::path::Path) -> std::io::Result<Option<PeerHint>> {
    let raw = read_hint_bytes(disk, PEER_HINT_OFFSET, MAX_PEER_HINT)?;
    parse_peer_hint(&raw)
}

/// The peer hint in `raw`, the bytes of a data disk from [`PEER_HINT_OFFSET`] on.
pub fn parse_peer_hint(raw: &[u8]) -> std::io::Result<Option<PeerHint>> {
    parse_hint(raw, PEER_HINT_MAGIC, MAX_PEER_HINT, "peer hint")?
        .map(|bytes| {
            serde_json::from_slice(bytes).map_err(|e| invalid_data(&format!("peer hint: {e}")))
        })
        .transpose()
}

fn invalid_data(reason: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_owned())
}

/// Writes `magic ‖ u16 LE length ‖ payload` at `offset` of `disk` and syncs it.
fn write_hint(
    disk: &std::path::Path,
    offset: u64,
    magic: &[u8; 8],
    payload: &[u8],
    max: usize,
    what: &str,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&n| usize::from(n) <= max && n > 0)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{what} of {} bytes (1..={max})", payload.len()),
            )
        })?;
    let mut hint = magic.to_vec();
    hint.extend_from_slice(&len.to_le_bytes());
    hint.extend_from_slice(payload);
    let file = std::fs::OpenOptions::new().write(true).open(disk)?;
    file.write_all_at(&hint, offset)?;
    file.sync_all()
}

fn read_hint_bytes(disk: &std::path::Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(disk)?;
    let mut raw = vec![0u8; 10 + max];
    file.read_exact_at(&mut raw, offset)?;
    Ok(raw)
}

/// The payload of a hint in `raw` (`None` without the magic); refuses a length outside
/// `1..=max` or past the end.
fn parse_hint<'a>(
    raw: &'a [u8],
    magic: &[u8; 8],
    max: usize,
    what: &str,
) -> std::io::Result<Option<&'a [u8]>> {
    if raw.get(..8) != Some(magic.as_slice()) {
        return Ok(None);
    }
    let len = match raw.get(8..10) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        _ => return Err(invalid_data(&format!("{what} cut short"))),
    };
    raw.get(10..10 + len)
        .filter(|_| len > 0 && len <= max)
        .map(Some)
        .ok_or_else(|| invalid_data(&format!("{what} of length {len} is not 1..={max} bytes")))
}

/// Where the init links the data disk's device inside a running appliance.
pub const DATA_DISK_RUNTIME_PATH: &str = "/run/coffer/data-disk";

/// `/dev/<name>` of the block device whose serial (in `sys_block/<name>/serial`, normally
/// `/sys/block`) is `serial`. Serials are how the launcher names its disks: device names
/// depend on probe order.
pub fn find_disk_by_serial(
    sys_block: &std::path::Path,
    serial: &str,
) -> Option<std::path::PathBuf> {
    std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let found = std::fs::read_to_string(entry.path().join("serial")).ok()?;
            (found.trim() == serial).then(|| std::path::Path::new("/dev").join(entry.file_name()))
        })
}

/// A named file and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// What the file is (`kernel`, `initramfs`, `module:virtio_net`, ...).
    pub name: String,
    /// Path: relative to the image directory for outputs, to the workspace for inputs.
    pub path: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A TCP port served inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Name of the port (`health`, `api`, ...).
    pub name: String,
    /// Port number inside the guest.
    pub guest: u16,
}

/// File name of the measurement set inside an image directory.
pub const MEASUREMENTS_FILE: &str = "measurements.json";

/// Version of the [`MeasurementSet`] and [`PinFile`] formats. Bump on any incompatible change.
pub const MEASUREMENTS_VERSION: u32 = 1;

/// The launch measurements of one image build: one SEV-SNP launch digest per supported launch
/// configuration. Written as `measurements.json` beside the image's artifacts; anyone can
/// recompute it from those artifacts with `coffer measure snp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSet {
    /// [`MEASUREMENTS_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Which appliance.
    pub role: Role,
    /// The workspace version the image was built from.
    pub version: String,
    /// sha256 of the image's initramfs: names the build the digests belong to.
    pub initramfs_sha256: String,
    /// Launch digests for QEMU measured direct boot (AmdSev OVMF, `kernel-hashes=on`).
    pub snp: Vec<SnpLaunchDigest>,
}

/// One SEV-SNP launch configuration and its launch digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpLaunchDigest {
    /// VMM type as `sev-snp-measure` names it (`QEMU`).
    pub vmm: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// vCPU type (`EPYC-v4`, `EPYC-Milan`, ...).
    pub vcpu_type: String,
    /// Guest features, hex (`0x1`).
    pub guest_features: String,
    /// The 48-byte launch digest, lower-case hex.
    pub launch_digest: String,
}

/// Committed pins of a role (`measurements/pins/<role>.json`): an allow-list of measurement
/// sets, the incoming build first, then the outgoing one(s) a release still accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    /// [`MEASUREMENTS_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Which appliance.
    pub role: Role,
    /// Allowed builds, newest first.
    pub sets: Vec<MeasurementSet>,
}

/// The body of a `GET /healthz` answer, shared by the services and the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` when the service is serving.
    pub status: String,
    /// The appliance's role.
    pub role: Role,
    /// The service that answered.
    pub service: String,
    /// The appliance's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_hint_round_trips_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(8192).unwrap();
        assert_eq!(read_join_hint(&disk).unwrap(), None);
        write_join_hint(&disk, "10.0.2.2:7000").unwrap();
        assert_eq!(
            read_join_hint(&disk).unwrap().as_deref(),
            Some("10.0.2.2:7000")
        );
        assert!(write_join_hint(&disk, "").is_err());
        assert!(write_join_hint(&disk, &"x".repeat(MAX_JOIN_HINT + 1)).is_err());
        let mut raw = JOIN_HINT_MAGIC.to_vec();
        assert!(parse_join_hint(&raw).is_err(), "cut short");
        raw.extend_from_slice(&300u16.to_le_bytes());
        raw.extend_from_slice(&[b'a'; 300]);
        assert!(parse_join_hint(&raw)
            .unwrap_err()
            .to_string()
            .contains("length 300"));
        raw[8..10].copy_from_slice(&2u16.to_le_bytes());
        raw[10] = 0xff;
        assert!(parse_join_hint(&raw).is_err(), "not UTF-8");
    }

    #[test]
    fn a_peer_hint_sits_beside_the_join_hint_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(8192).unwrap();
        assert_eq!(read_peer_hint(&disk).unwrap(), None);
        write_join_hint(&disk, "10.0.2.2:7000").unwrap();
        let hint = PeerHint {
            self_url: Some("https://10.0.2.2:8443".into()),
            peers: vec!["https://10.0.2.2:8444".into()],
            store: Some("postgres://kms@10.0.2.2:5432/coffer".into()),
        };
        write_peer_hint(&disk, &hint).unwrap();
        assert_eq!(read_peer_hint(&disk).unwrap(), Some(hint));
        assert_eq!(
            read_join_hint(&disk).unwrap().as_deref(),
            Some("10.0.2.2:7000"),
            "the two hints do not overlap"
        );
        let mut raw = PEER_HINT_MAGIC.to_vec();
        raw.extend_from_slice(&5u16.to_le_bytes());
        raw.extend_from_slice(b"{\"x\":1");
        let err = parse_peer_hint(&raw).unwrap_err().to_string();
        assert!(err.starts_with("peer hint:"), "{err}");
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
    }

    #[test]
    fn an_unknown_role_is_named_in_the_error() {
        let err = "hub".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role 'hub' (expected one of: kms, client, executor)"
        );
    }

    #[test]
    fn network_config_rejects_unknown_fields() {
        let bad = r#"{"mode":"static","interface":"eth0","address":"10.0.2.15/24","gateway":"10.0.2.2","mtu":9000}"#;
        assert!(serde_json::from_str::<NetworkConfig>(bad).is_err());
    }
}
