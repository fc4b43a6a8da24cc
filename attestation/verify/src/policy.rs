//! The verification policy: what evidence is acceptable, as reviewed data.
//!
//! The file is TOML with unknown fields refused. Its shape ([`PolicyFile`]) is kept apart from
//! the validated [`Policy`] the checks use: hex is decoded and lengths checked at load time, and
//! a policy that could not decide a case (no TCB floor for a generation it allows, an empty
//! allow-list) is refused when it is loaded rather than when evidence arrives.
//!
//! ```toml
//! min_report_version = 3
//! trust_root = "amd"               # the default; "simulation" only for CI (coffer-sim)
//! allowed_processors = ["milan", "genoa", "turin"]
//! allowed_measurements = ["<96 hex digits>"]
//! allowed_vmpl = [0]
//! allow_debug = false              # the default
//! allow_migration_agent = false    # the default
//! allow_smt = true                 # default false
//!
//! # Optional; each adds a check when present. (Top-level keys go before the tables below.)
//! allowed_cpuid = [{ family = 0x19, model = 0x11 }]
//! allowed_chip_ids = ["<128 hex digits, or 16 for Turin>"]
//! host_data = "<64 hex digits>"
//! report_data = "<128 hex digits>"
//! allowed_id_key_digests = ["<96 hex digits>"]
//! allowed_author_key_digests = ["<96 hex digits>"]
//! min_guest_svn = 1
//!
//! [min_tcb.milan]
//! reported = { bl = 3, tee = 0, snp = 8, ucode = 115 }
//! committed = { bl = 3, tee = 0, snp = 8, ucode = 115 }
//! [min_tcb.genoa]
//! reported = { bl = 7, tee = 0, snp = 14, ucode = 72 }
//! committed = { bl = 7, tee = 0, snp = 14, ucode = 72 }
//! [min_tcb.turin]                  # Turin adds fmc
//! reported = { fmc = 1, bl = 1, tee = 1, snp = 1, ucode = 1 }
//! committed = { fmc = 1, bl = 1, tee = 1, snp = 1, ucode = 1 }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::PolicyError;
use crate::report::KNOWN_VERSIONS;
use crate::tcb::{Generation, TcbComponent};

/// The policy file as written (serde shape only; see [`Policy`] for the validated form).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Lowest acceptable report VERSION.
    pub min_report_version: u32,
    /// Which root evidence must chain to: `amd` (default) or `simulation` (the Coffer simulated
    /// secure processor, for CI; also needs roots from `AmdRoots::with_simulation_root`).
    #[serde(default)]
    pub trust_root: TrustRoot,
    /// Processor generations accepted (`milan`, `genoa`, `turin`).
    pub allowed_processors: Vec<Generation>,
    /// Launch measurements accepted, hex (96 digits each). May be empty only with
    /// `any_measurement_with_pinned_id_key`.
    #[serde(default)]
    pub allowed_measurements: Vec<String>,
    /// Accept any launch measurement, relying on `allowed_id_key_digests` instead. For Azure
    /// confidential VMs, whose measured firmware is Microsoft's paravisor and changes often: the
    /// image is then pinned by vTPM PCRs, and the firmware by Microsoft's ID key. Default: no.
    #[serde(default)]
    pub any_measurement_with_pinned_id_key: bool,
    /// VMPLs accepted (0 unless an SVSM runs below the guest OS).
    pub allowed_vmpl: Vec<u32>,
    /// Accept guests launched with debugging allowed. Default: no.
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept guests that allow a migration agent. Default: no.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Accept platforms with SMT enabled. Default: no.
    #[serde(default)]
    pub allow_smt: bool,
    /// Minimum TCBs per generation: each allowed generation needs an entry.
    pub min_tcb: BTreeMap<Generation, TcbFloorsFile>,
    /// If present, CPUID family/model pairs accepted (needs version 3+ reports).
    #[serde(default)]
    pub allowed_cpuid: Option<Vec<CpuidFile>>,
    /// If present, chip IDs accepted (hex; 128 digits, or 16 for a Turin 8-byte ID).
    #[serde(default)]
    pub allowed_chip_ids: Option<Vec<String>>,
    /// If present, the HOST_DATA expected (hex, 64 digits).
    #[serde(default)]
    pub host_data: Option<String>,
    /// If present, the REPORT_DATA expected (hex, 128 digits).
    #[serde(default)]
    pub report_data: Option<String>,
    /// If present, ID key digests accepted (hex, 96 digits each).
    #[serde(default)]
    pub allowed_id_key_digests: Option<Vec<String>>,
    /// If present, author key digests accepted (hex, 96 digits each).
    #[serde(default)]
    pub allowed_author_key_digests: Option<Vec<String>>,
    /// If present, the lowest GUEST_SVN accepted.
    #[serde(default)]
    pub min_guest_svn: Option<u32>,
}

/// The kind of root a policy trusts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRoot {
    /// AMD's roots compiled into the crate: real SEV-SNP hardware. The default.
    #[default]
    Amd,
    /// The Coffer simulation root (`ARK-Sim`, from `coffer-sim`): evidence from a simulated
    /// secure processor, which proves nothing about hardware. For CI only.
    Simulation,
}

impl std::fmt::Display for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustRoot::Amd => "amd",
            TrustRoot::Simulation => "simulation",
        })
    }
}

/// Minimum reported and committed TCB of one generation, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbFloorsFile {
    /// Floor for REPORTED_TCB.
    pub reported: TcbFloor,
    /// Floor for COMMITTED_TCB.
    pub committed: TcbFloor,
}

/// A minimum per TCB component. `fmc` is required for Turin and refused for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbFloor {
    /// Minimum FMC SPL (Turin only).
    #[serde(default)]
    pub fmc: Option<u8>,
    /// Minimum boot loader SPL.
    pub bl: u8,
    /// Minimum TEE SPL.
    pub tee: u8,
    /// Minimum SNP firmware SPL.
    pub snp: u8,
    /// Minimum microcode SPL.
    pub ucode: u8,
}

impl TcbFloor {
    /// The floor of one component (`None` for FMC outside Turin).
    pub fn get(&self, component: TcbComponent) -> Option<u8> {
        match component {
            TcbComponent::Fmc => self.fmc,
            TcbComponent::Bl => Some(self.bl),
            TcbComponent::Tee => Some(self.tee),
            TcbComponent::Snp => Some(self.snp),
            TcbComponent::Ucode => Some(self.ucode),
        }
    }
}

/// A CPUID family/model pair, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidFile {
    /// CPUID family (e.g. 0x19).
    pub family: u8,
    /// CPUID model (e.g. 0x11).
    pub model: u8,
}

/// A validated policy. Load one with [`Policy::from_toml`].
///
/// The fields are public so a caller can build or adjust a policy in code (for instance set
/// [`Policy::report_data`] to a fresh nonce). The checks are fail-closed whatever the values: an
/// empty allow-list allows nothing, a generation without a TCB floor is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lowest acceptable report VERSION.
    pub min_report_version: u32,
    /// Which root evidence must chain to (`chain.trust_root`).
    pub trust_root: TrustRoot,
    /// Processor generations accepted.
    pub allowed_processors: Vec<Generation>,
    /// Launch measurements accepted.
    pub allowed_measurements: Vec<[u8; 48]>,
    /// Any measurement is accepted; `allowed_id_key_digests` is then required (Azure).
    pub any_measurement_with_pinned_id_key: bool,
    /// VMPLs accepted.
    pub allowed_vmpl: Vec<u32>,
    /// Accept POLICY.DEBUG set.
    pub allow_debug: bool,
    /// Accept POLICY.MIGRATE_MA set.
    pub allow_migration_agent: bool,
    /// Accept PLATFORM_INFO.SMT_EN set.
    pub allow_smt: bool,
    /// Minimum TCBs per generation.
    pub min_tcb: BTreeMap<Generation, TcbFloorsFile>,
    /// CPUID (family, model) pairs accepted, if restricted.
    pub allowed_cpuid: Option<Vec<(u8, u8)>>,
    /// Chip IDs accepted, if restricted.
    pub allowed_chip_ids: Option<Vec<[u8; 64]>>,
    /// HOST_DATA expected, if checked.
    pub host_data: Option<[u8; 32]>,
    /// REPORT_DATA expected, if checked.
    pub report_data: Option<[u8; 64]>,
    /// ID key digests accepted, if restricted.
    pub allowed_id_key_digests: Option<Vec<[u8; 48]>>,
    /// Author key digests accepted, if restricted.
    pub allowed_author_key_digests: Option<Vec<[u8; 48]>>,
    /// Lowest GUEST_SVN accepted, if checked.
    pub min_guest_svn: Option<u32>,
}

impl Policy {
    /// Parses and validates a policy file.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        Self::from_file(file)
    }

    /// Validates a policy file already deserialized.
    pub fn from_file(file: PolicyFile) -> Result<Self, PolicyError> {
        let invalid = |field: &str, reason: String| PolicyError::Invalid {
            field: field.to_owned(),
            reason,
        };
        let min_known = KNOWN_VERSIONS.iter().min().copied().unwrap_or(2);
        let max_known = KNOWN_VERSIONS.iter().max().copied().unwrap_or(5);
        if !(min_known..=max_known).contains(&file.min_report_version) {
            return Err(invalid(
                "min_report_version",
                format!(
                    "{} is not a report version ({min_known}..={max_known})",
                    file.min_report_version
                ),
            ));
        }
        if file.allowed_processors.is_empty() {
            return Err(invalid(
                "allowed_processors",
                "empty: nothing would be accepted".into(),
            ));
        }
        if file.any_measurement_with_pinned_id_key {
            if file
                .allowed_id_key_digests
                .as_ref()
                .is_none_or(Vec::is_empty)
            {
                return Err(invalid(
                    "any_measurement_with_pinned_id_key",
                    "needs allowed_id_key_digests: otherwise any firmware would be accepted".into(),
                ));
            }
        } else if file.allowed_measurements.is_empty() {
            return Err(invalid(
                "allowed_measurements",
                "empty: nothing would be accepted".into(),
            ));
        }
        if file.allowed_vmpl.is_empty() {
            return Err(invalid(
                "allowed_vmpl",
                "empty: nothing would be accepted".into(),
            ));
        }
        if let Some(bad) = file.allowed_vmpl.iter().find(|&&v| v > 3) {
            return Err(invalid(
                "allowed_vmpl",
                format!("{bad} is not a VMPL (0..=3)"),
            ));
        }
        for generation in &file.allowed_processors {
            let name = format!("min_tcb.{}", generation.name().to_lowercase());
            let Some(floors) = file.min_tcb.get(generation) else {
                return Err(invalid(
                    &name,
                    format!("missing: {generation} is allowed, so it needs a TCB floor"),
                ));
            };
            for (which, floor) in [
                ("reported", floors.reported),
                ("committed", floors.committed),
            ] {
                match (generation.has_fmc(), floor.fmc) {
                    (true, None) => {
                        return Err(invalid(
                            &format!("{name}.{which}.fmc"),
                            "required for Turin".into(),
                        ))
                    }
                    (false, Some(_)) => {
                        return Err(invalid(
                            &format!("{name}.{which}.fmc"),
                            format!("{generation} has no FMC SPL"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        for generation in file.min_tcb.keys() {
            if !file.allowed_processors.contains(generation) {
                return Err(invalid(
                    &format!("min_tcb.{}", generation.name().to_lowercase()),
                    format!("{generation} is not in allowed_processors"),
                ));
            }
        }
        let list =
            |field: &str, values: &[String], len: usize| -> Result<Vec<Vec<u8>>, PolicyError> {
                if values.is_empty() {
                    return Err(invalid(field, "empty: nothing would be accepted".into()));
                }
                values
                    .iter()
                    .map(|v| decode_hex(field, v, &[len]))
                    .collect()
            };
        let fixed = |field: &str, values: &[String]| -> Result<Vec<[u8; 48]>, PolicyError> {
            list(field, values, 48)?
                .into_iter()
                .map(|v| to_array(field, v))
                .collect()
        };
        // Empty only with any_measurement_with_pinned_id_key (checked above).
        let allowed_measurements = if file.allowed_measurements.is_empty() {
            Vec::new()
        } else {
            fixed("allowed_measurements", &file.allowed_measurements)?
        };
        let allowed_cpuid = match file.allowed_cpuid {
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "allowed_cpuid",
                    "empty: nothing would be accepted".into(),
                ))
            }
            other => other.map(|l| l.iter().map(|c| (c.family, c.model)).collect()),
        };
        let allowed_chip_ids = file
            .allowed_chip_ids
            .as_deref()
            .map(|ids| {
                if ids.is_empty() {
                    return Err(invalid(
                        "allowed_chip_ids",
                        "empty: nothing would be accepted".into(),
                    ));
                }
                ids.iter()
                    .map(|id| {
                        let mut bytes = decode_hex("allowed_chip_ids", id, &[64, 8])?;
                        bytes.resize(64, 0); // a Turin chip ID is 8 bytes then zeros
                        to_array("allowed_chip_ids", bytes)
                    })
                    .collect()
            })
            .transpose()?;
        let host_data = file
            .host_data
            .as_deref()
            .map(|h| to_array("host_data", decode_hex("host_data", h, &[32])?))
            .transpose()?;
        let report_data = file
            .report_data
            .as_deref()
            .map(|h| to_array("report_data", decode_hex("report_data", h, &[64])?))
            .transpose()?;
        let allowed_id_key_digests = file
            .allowed_id_key_digests
            .as_deref()
            .map(|l| fixed("allowed_id_key_digests", l))
            .transpose()?;
        let allowed_author_key_digests = file
            .allowed_author_key_digests
            .as_deref()
            .map(|l| fixed("allowed_author_key_digests", l))
            .transpose()?;
        Ok(Self {
            min_report_version: file.min_report_version,
            trust_root: file.trust_root,
            allowed_processors: file.allowed_processors,
            allowed_measurements,
            any_measurement_with_pinned_id_key: file.any_measurement_with_pinned_id_key,
            allowed_vmpl: file.allowed_vmpl,
            allow_debug: file.allow_debug,
            allow_migration_agent: file.allow_migration_agent,
            allow_smt: file.allow_smt,
            min_tcb: file.min_tcb,
            allowed_cpuid,
            allowed_chip_ids,
            host_data,
            report_data,
            allowed_id_key_digests,
            allowed_author_key_digests,
            min_guest_svn: file.min_guest_svn,
        })
    }
}

/// Hex of one of the allowed byte lengths (an optional `0x` prefix is accepted).
fn decode_hex(field: &str, text: &str, lengths: &[usize]) -> Result<Vec<u8>, PolicyError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(digits).map_err(|e| PolicyError::Invalid {
        field: field.to_owned(),
        reason: format!("{text:?} is not hex: {e}"),
    })?;
    if !lengths.contains(&bytes.len()) {
        let want: Vec<String> = lengths.iter().map(|l| (l * 2).to_string()).collect();
        return Err(PolicyError::Invalid {
            field: field.to_owned(),
            reason: format!(
                "{text:?} has {} hex digits, expected {}",
                digits.len(),
                want.join(" or ")
            ),
        });
    }
    Ok(bytes)
}

fn to_array<const N: usize>(field: &str, bytes: Vec<u8>) -> Result<[u8; N], PolicyError> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| PolicyError::Invalid {
        field: field.to_owned(),
        reason: format!("{len} bytes, expected {N}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a";

    fn minimal() -> String {
        format!(
            r#"
min_report_version = 2
allowed_processors = ["milan", "turin"]
allowed_measurements = ["{M}"]
allowed_vmpl = [0]
[min_tcb.milan]
reported = {{ bl = 3, tee = 0, snp = 8, ucode = 115 }}
committed = {{ bl = 3, tee = 0, snp = 8, ucode = 115 }}
[min_tcb.turin]
reported = {{ fmc = 1, bl = 3, tee = 2, snp = 5, ucode = 97 }}
committed = {{ fmc = 1, bl = 3, tee = 2, snp = 5, ucode = 97 }}
"#
        )
    }

    #[test]
    fn any_measurement_needs_a_pinned_id_key() {
        let base = "min_report_version = 2\nallowed_processors = [\"milan\"]\nallowed_vmpl = [0]\n\
                    any_measurement_with_pinned_id_key = true\n";
        let tcb = "[min_tcb.milan]\nreported = { bl = 0, tee = 0, snp = 0, ucode = 0 }\n\
                   committed = { bl = 0, tee = 0, snp = 0, ucode = 0 }\n";
        let err = Policy::from_toml(&format!("{base}{tcb}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs allowed_id_key_digests"), "{err}");
        let with_key = format!(
            "{base}allowed_id_key_digests = [\"{}\"]\n{tcb}",
            "ab".repeat(48)
        );
        let policy = Policy::from_toml(&with_key).unwrap();
        assert!(policy.any_measurement_with_pinned_id_key);
        assert!(policy.allowed_measurements.is_empty());
    }

    #[test]
    fn a_minimal_policy_loads_with_safe_defaults() {
        let p = Policy::from_toml(&minimal()).unwrap();
        assert!(!p.allow_debug && !p.allow_migration_agent && !p.allow_smt);
        assert_eq!(p.allowed_measurements.len(), 1);
        assert_eq!(p.host_data, None);
    }

    #[test]
    fn the_module_doc_example_loads() {
        let doc = include_str!("policy.rs");
        let start = doc.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + doc[start..].find("//! ```\n").unwrap();
        let example: String = doc[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            })
            .map(|l| {
                l.replace("<96 hex digits>", M)
                    .replace("<64 hex digits>", &M[..64])
                    .replace("<128 hex digits>", &format!("{M}{}", &M[..32]))
                    .replace("<128 hex digits, or 16 for Turin>", &M[..16])
            })
            .collect::<Vec<_>>()
            .join("\n");
        let p = Policy::from_toml(&example).unwrap();
        assert_eq!(p.allowed_cpuid, Some(vec![(0x19, 0x11)]));
        assert_eq!(p.allowed_chip_ids.unwrap()[0][8..], [0u8; 56]);
    }

    #[test]
    fn refuses_policies_that_cannot_decide() {
        let base = minimal();
        let cases: &[(&str, &str, &str)] = &[
            ("allowed_vmpl = [0]", "allowed_vmpl = []", "allowed_vmpl"),
            ("allowed_vmpl = [0]", "allowed_vmpl = [4]", "allowed_vmpl"),
            (
                "min_report_version = 2",
                "min_report_version = 1",
                "min_report_version",
            ),
            (
                r#"["milan", "turin"]"#,
                r#"["milan", "turin", "genoa"]"#,
                "min_tcb.genoa",
            ),
            (r#"["milan", "turin"]"#, r#"["milan"]"#, "min_tcb.turin"),
            (
                "reported = { fmc = 1, bl",
                "reported = { bl",
                "min_tcb.turin.reported.fmc",
            ),
            (
                "reported = { bl = 3",
                "reported = { fmc = 0, bl = 3",
                "min_tcb.milan.reported.fmc",
            ),
            (&M[..4], "zz", "allowed_measurements"),
        ];
        for (from, to, field) in cases {
            let text = base.replacen(from, to, 1);
            match Policy::from_toml(&text) {
                Err(PolicyError::Invalid { field: f, .. }) => assert_eq!(&f, field, "{to}"),
                other => panic!("{to}: {other:?}"),
            }
        }
        let extra = format!("{base}\nallow_everything = true\n");
        assert!(matches!(
            Policy::from_toml(&extra),
            Err(PolicyError::Syntax(_))
        ));
        let short = base.replace(M, &M[..94]);
        assert!(matches!(
            Policy::from_toml(&short),
            Err(PolicyError::Invalid { .. })
        ));
        assert!(matches!(
            Policy::from_toml("not toml ["),
            Err(PolicyError::Syntax(_))
        ));
    }
}
