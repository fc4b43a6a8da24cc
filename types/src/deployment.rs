//! The deployment manifest: one document per deployment that every VM of it receives.
//!
//! It names the deployment, the platform and the root of trust, what each role must measure
//! (its pins and TCB floors), where each role's services listen, and who bootstraps it. Its
//! SHA-256 over the **exact bytes** delivered ([`deployment_digest`]) is what binds a VM to the
//! deployment: the launcher puts it in HOST_DATA (qemu-snp and sim), so the VM's own evidence
//! names the deployment, the guest refuses to start services when the manifest it was handed does
//! not hash to that value, and mesh peers check that the other side carries the same digest.
//!
//! The manifest reaches the guest as untrusted input (a config disk); nothing in it is secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Role;

/// Version of the [`Deployment`] format. Bump on any incompatible change.
pub const DEPLOYMENT_VERSION: u32 = 1;

/// Where the verified manifest is kept inside a running appliance (written by the init, read by
/// services).
pub const DEPLOYMENT_RUNTIME_PATH: &str = "/run/coffer/deployment.json";

/// The vTPM PCR (sha256 bank) an Azure guest's init extends with the deployment digest before
/// any service starts: on Azure the deployment is bound by measurement, not HOST_DATA (which the
/// Azure host sets). Verifiers expect it to hold `SHA-256(0^32 ‖ digest)`: extended once.
pub const DEPLOYMENT_PCR: u8 = 15;

/// Serial number of the virtio-blk config disk that carries the manifest into the guest.
pub const CONFIG_DISK_SERIAL: &str = "coffer-config";

/// Magic at the start of the config disk: `COFFERCFG1`, then the manifest length as a
/// little-endian u32, then the manifest bytes; the rest of the disk is zero padding.
pub const CONFIG_DISK_MAGIC: &[u8; 10] = b"COFFERCFG1";

/// SHA-256 of a manifest's bytes exactly as delivered: the deployment's identity, carried in
/// HOST_DATA.
pub fn deployment_digest(manifest_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(manifest_bytes).into()
}

/// Where the VMs run, which decides what evidence they produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// QEMU/KVM on an AMD SEV-SNP host: launch-digest pins, HOST_DATA set at launch.
    QemuSnp,
    /// Azure confidential VMs: vTPM PCR pins, the HCL report.
    Azure,
    /// QEMU under TCG with the host-side simulated secure processor. Proves nothing about
    /// hardware; for development and CI.
    Sim,
}

impl Platform {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::QemuSnp => "qemu-snp",
            Platform::Azure => "azure",
            Platform::Sim => "sim",
        }
    }
}

/// Which root evidence must chain to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentTrustRoot {
    /// AMD's roots, built into the verifier.
    Amd,
    /// The simulation root named in [`Deployment::simulation_root`].
    Simulation,
}

/// The simulated secure processor's root certificates, for a `trust_root = simulation`
/// deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationRoot {
    /// The ARK-Sim certificate, PEM.
    pub ark_pem: String,
    /// The SEV-Sim (ASK) certificate, PEM.
    pub ask_pem: String,
}

/// Minimum TCB components of one kind (reported or committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbComponents {
    /// FMC SPL (Turin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bl: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub ucode: u8,
}

/// TCB floors of one processor generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbFloors {
    /// Floor for REPORTED_TCB.
    pub reported: TcbComponents,
    /// Floor for COMMITTED_TCB.
    pub committed: TcbComponents,
}

/// What a role's VMs must prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePins {
    /// Launch measurements accepted (96 hex digits each); from `measurements/pins/<role>.json`.
    pub measurements: Vec<String>,
    /// TCB floors per processor generation (`milan`, `genoa`, `turin`); a generation without
    /// floors is refused.
    pub min_tcb: BTreeMap<String, TcbFloors>,
    /// Azure: expected vTPM PCR values (sha256 bank), PCR index → 64 hex digits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcrs: BTreeMap<u32, String>,
}

/// Who bootstraps the deployment's control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// The first organisation.
    pub org: String,
    /// Its first administrator (an e-mail address or a user name).
    pub admin: String,
}

/// The deployment manifest (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// [`DEPLOYMENT_VERSION`].
    pub format_version: u32,
    /// The deployment's name: lower-case letters, digits and `-`, 1 to 63 characters.
    pub deployment_id: String,
    /// Where the VMs run.
    pub platform: Platform,
    /// Which root evidence must chain to.
    pub trust_root: DeploymentTrustRoot,
    /// The simulation root: present exactly when `trust_root` is `simulation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation_root: Option<SimulationRoot>,
    /// Pins per role. A role without pins cannot join the mesh.
    pub roles: BTreeMap<Role, RolePins>,
    /// Mesh endpoints per role, `host:port` as seen from the other VMs.
    #[serde(default)]
    pub endpoints: BTreeMap<Role, String>,
    /// Longest life of a mesh session before it must be re-established (and so re-attested).
    pub session_max_age_secs: u64,
    /// Who bootstraps the control plane.
    pub bootstrap: Bootstrap,
    /// The KMS's settings; without them the KMS accepts no credential (every request is denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<KmsSettings>,
}

/// The KMS's part of the manifest: bound to every VM like the rest, so the host cannot swap an
/// issuer key or a recovery officer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSettings {
    /// Who may sign identity tokens and job grants: `coffer_kms::AuthzConfig` as JSON (issuers
    /// with their keys, lifetimes, clock skew). Checked in full by the KMS at start and by
    /// `coffer deployment init`; here only its shape.
    pub authz: serde_json::Value,
    /// k-of-n recovery of the KMS root key, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryPolicy>,
    /// The KMS replicas keep their state in one PostgreSQL database that the launcher names to
    /// each (`coffer run --kms-store URL`), instead of each on its own data disk. Bound here so
    /// the host cannot switch a replica between the two: the URL is only where to find it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_store: bool,
}

/// Who can restore the KMS root key: any `threshold` of the `officers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPolicy {
    /// How many officers' shares restore the root key.
    pub threshold: u8,
    /// The officers' public keys: age X25519 recipients (`age1...`), one share each.
    pub officers: Vec<String>,
    /// Set to restore the root key of an earlier split: a KMS that starts on a blank data disk
    /// then waits for `threshold` shares of that split instead of generating a root key, and
    /// accepts only the root key with this commitment. Copied from the recovery kit and
    /// confirmed by the officers (each share names its split and commitment). Bound like the
    /// rest of the manifest, so the host cannot make a KMS accept a root key of its choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreFrom>,
}

/// The split a restoring KMS accepts shares of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFrom {
    /// The split's id, 32 hex digits.
    pub split_id: String,
    /// The root key's commitment, 64 hex digits.
    pub commitment: String,
}

/// The most recovery officers a policy may name.
pub const MAX_RECOVERY_OFFICERS: usize = 16;

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// Not JSON of the manifest's shape.
    #[error("deployment manifest: {0}")]
    Syntax(String),
    /// A field's value is not acceptable.
    #[error("deployment manifest field {field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Deployment {
    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DeploymentError> {
        let deployment: Deployment =
            serde_json::from_slice(bytes).map_err(|e| DeploymentError::Syntax(e.to_string()))?;
        deployment.validate()?;
        Ok(deployment)
    }

    /// Checks every rule a parsed manifest must follow.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        let invalid = |field: &str, reason: String| {
            Err(DeploymentError::Invalid {
                field: field.to_owned(),
                reason,
            })
        };
        if self.format_version != DEPLOYMENT_VERSION {
            return invalid(
                "format_version",
                format!("expected {DEPLOYMENT_VERSION}, got {}", self.format_version),
            );
        }
        let id = &self.deployment_id;
        if id.is_empty()
            || id.len() > 63
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid(
                "deployment_id",
                format!("{id:?} must be 1 to 63 of a-z, 0-9 and '-'"),
            );
        }
        match (self.trust_root, &self.simulation_root) {
            (DeploymentTrustRoot::Simulation, None) => {
                return invalid(
                    "simulation_root",
                    "trust_root is simulation but no simulation root is given".into(),
                )
            }
            (DeploymentTrustRoot::Amd, Some(_)) => {
                return invalid(
                    "simulation_root",
                    "given, but trust_root is amd: a simulation root has no place here".into(),
                )
            }
            _ => {}
        }
        // sim needs the simulation root, qemu-snp needs AMD's; azure takes either (simulation:
        // an swtpm provisioned as a simulated Azure vTPM, for CI).
        let root_fits = match self.platform {
            Platform::Sim => self.trust_root == DeploymentTrustRoot::Simulation,
            Platform::QemuSnp => self.trust_root == DeploymentTrustRoot::Amd,
            Platform::Azure => true,
        };
        if !root_fits {
            return invalid(
                "trust_root",
                format!(
                    "platform {} needs trust_root {}",
                    self.platform.as_str(),
                    if self.platform == Platform::Sim {
                        "simulation"
                    } else {
                        "amd"
                    }
                ),
            );
        }
        for (role, pins) in &self.roles {
            for m in &pins.measurements {
                if m.len() != 96 || hex_bytes(m).is_none() {
                    return invalid(
                        &format!("roles.{role}.measurements"),
                        format!("{m:?} is not 96 hex digits"),
                    );
                }
            }
            for (index, value) in &pins.pcrs {
                if *index > 23 || value.len() != 64 || hex_bytes(value).is_none() {
                    return invalid(
                        &format!("roles.{role}.pcrs"),
                        format!("PCR {index} = {value:?}: needs an index 0..=23 and 64 hex digits"),
                    );
                }
            }
        }
        for (role, endpoint) in &self.endpoints {
            let port_ok = endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return invalid(
                    &format!("endpoints.{role}"),
                    format!("{endpoint:?} is not host:port"),
                );
            }
        }
        if self.session_max_age_secs == 0 {
            return invalid("session_max_age_secs", "must be at least 1".into());
        }
        if let Some(kms) = &self.kms {
            if !kms.authz.is_object() {
                return invalid("kms.authz", "must be an object (an AuthzConfig)".into());
            }
            if let Some(recovery) = &kms.recovery {
                let n = recovery.officers.len();
                if n == 0 || n > MAX_RECOVERY_OFFICERS {
                    return invalid(
                        "kms.recovery.officers",
                        format!("{n} officers: give 1 to {MAX_RECOVERY_OFFICERS}"),
                    );
                }
                if recovery.threshold == 0 || usize::from(recovery.threshold) > n {
                    return invalid(
                        "kms.recovery.threshold",
                        format!(
                            "{} is not within 1..={n} (the officers)",
                            recovery.threshold
                        ),
                    );
                }
                if let Some(restore) = &recovery.restore {
                    if restore.split_id.len() != 32 || hex_bytes(&restore.split_id).is_none() {
                        return invalid(
                            "kms.recovery.restore.split_id",
                            format!("{:?} is not 32 hex digits", restore.split_id),
                        );
                    }
                    if restore.commitment.len() != 64 || hex_bytes(&restore.commitment).is_none() {
                        return invalid(
                            "kms.recovery.restore.commitment",
                            format!("{:?} is not 64 hex digits", restore.commitment),
                        );
                    }
                }
                if let Some(bad) = recovery.officers.iter().find(|o| !o.starts_with("age1")) {
                    return invalid(
                        "kms.recovery.officers",
                        format!("{bad:?} is not an age X25519 recipient (age1...)"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The origin line of the deployment's audit log (C2SP checkpoints):
    /// `coffer/<deployment id>/audit`. The KMS co-signs its checkpoints as `<origin>/kms`.
    pub fn audit_log_origin(&self) -> String {
        format!("coffer/{}/audit", self.deployment_id)
    }

    /// The measurements pinned for `role`, decoded (empty if the role has no pins).
    pub fn measurements(&self, role: Role) -> Vec<[u8; 48]> {
        self.roles
            .get(&role)
            .map(|pins| {
                pins.measurements
                    .iter()
                    .filter_map(|m| hex_bytes(m)?.try_into().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Lower-case or upper-case hex to bytes; `None` on anything else. (The types crate stays
/// dependency-light, and this is six lines.)
pub fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Deployment {
        Deployment {
            format_version: DEPLOYMENT_VERSION,
            deployment_id: "demo-1".into(),
            platform: Platform::QemuSnp,
            trust_root: DeploymentTrustRoot::Amd,
            simulation_root: None,
            roles: BTreeMap::from([(
                Role::Kms,
                RolePins {
                    measurements: vec!["ab".repeat(48)],
                    min_tcb: BTreeMap::new(),
                    pcrs: BTreeMap::new(),
                },
            )]),
            endpoints: BTreeMap::from([(Role::Kms, "10.0.2.2:7000".into())]),
            session_max_age_secs: 600,
            bootstrap: Bootstrap {
                org: "acme".into(),
                admin: "admin@acme.example".into(),
            },
            kms: None,
        }
    }

    #[test]
    fn a_valid_manifest_round_trips_and_hashes_its_exact_bytes() {
        let bytes = serde_json::to_vec_pretty(&sample()).unwrap();
        let parsed = Deployment::from_json(&bytes).unwrap();
        assert_eq!(parsed, sample());
        assert_eq!(parsed.measurements(Role::Kms), vec![[0xab; 48]]);
        assert!(parsed.measurements(Role::Client).is_empty());
        let mut other = bytes.clone();
        other.push(b'\n');
        assert_ne!(deployment_digest(&bytes), deployment_digest(&other));
    }

    #[test]
    fn bad_manifests_are_refused_by_field() {
        let field_of = |d: Deployment| match d.validate() {
            Err(DeploymentError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let mut d = sample();
        d.deployment_id = "Demo 1".into();
        assert_eq!(field_of(d), "deployment_id");
        let mut d = sample();
        d.trust_root = DeploymentTrustRoot::Simulation;
        assert_eq!(field_of(d), "simulation_root");
        let mut d = sample();
        d.platform = Platform::Sim;
        assert_eq!(field_of(d), "trust_root");
        let mut d = sample();
        d.roles.get_mut(&Role::Kms).unwrap().measurements = vec!["xyz".into()];
        assert_eq!(field_of(d), "roles.kms.measurements");
        let mut d = sample();
        d.endpoints.insert(Role::Client, "nohost".into());
        assert_eq!(field_of(d), "endpoints.client");
        let mut d = sample();
        d.session_max_age_secs = 0;
        assert_eq!(field_of(d), "session_max_age_secs");
        let kms = |threshold, officers: &[&str]| KmsSettings {
            authz: serde_json::json!({"issuers": []}),
            recovery: Some(RecoveryPolicy {
                threshold,
                officers: officers.iter().map(|o| o.to_string()).collect(),
                restore: None,
            }),
            shared_store: false,
        };
        let mut d = sample();
        d.kms = Some(kms(2, &["age1aaa", "age1bbb"]));
        d.validate().unwrap();
        d.kms.as_mut().unwrap().authz = serde_json::json!([]);
        assert_eq!(field_of(d), "kms.authz");
        let mut d = sample();
        d.kms = Some(kms(3, &["age1aaa", "age1bbb"]));
        assert_eq!(field_of(d), "kms.recovery.threshold");
        let mut d = sample();
        d.kms = Some(kms(0, &["age1aaa"]));
        assert_eq!(field_of(d), "kms.recovery.threshold");
        let mut d = sample();
        d.kms = Some(kms(1, &["ssh-ed25519 AAAA"]));
        assert_eq!(field_of(d), "kms.recovery.officers");
        let mut d = sample();
        d.kms = Some(kms(1, &[]));
        assert_eq!(field_of(d), "kms.recovery.officers");
        let mut d = sample();
        d.kms = Some(kms(1, &["age1aaa"]));
        d.kms.as_mut().unwrap().recovery.as_mut().unwrap().restore = Some(RestoreFrom {
            split_id: "00".repeat(16),
            commitment: "zz".repeat(32),
        });
        assert_eq!(field_of(d), "kms.recovery.restore.commitment");
        assert!(matches!(
            Deployment::from_json(b"{\"format_version\": 1}"),
            Err(DeploymentError::Syntax(_))
        ));
    }
}
