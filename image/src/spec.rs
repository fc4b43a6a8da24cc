//! Image specs: `image/specs/<role>.toml`, one per role, reviewed like code.
//!
//! [`RawSpec`] is the file as written (unknown fields rejected); [`ImageSpec`] is the validated
//! form the builder uses. Everything in a spec ends up in the initramfs or on the kernel command
//! line, and so in the launch measurement.

use std::collections::BTreeSet;
use std::path::Path;

use coffer_types::{NetworkConfig, PortSpec, RestartPolicy, Role, ServiceConfig};
use serde::Deserialize;

use crate::ImageError;

/// The spec file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    role: String,
    package: String,
    cmdline: String,
    modules: Vec<String>,
    health_port: u16,
    stop_timeout_ms: u64,
    network: NetworkConfig,
    restart: RestartPolicy,
    #[serde(rename = "service")]
    services: Vec<ServiceConfig>,
    #[serde(rename = "port", default)]
    ports: Vec<PortSpec>,
    #[serde(default)]
    data_disk_mib: Option<u32>,
    snp: SnpLaunchConfigs,
}

/// The SEV-SNP launch configurations an image is measured (and pinned) for: every combination
/// of the listed vCPU counts, vCPU types and guest features.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpLaunchConfigs {
    /// vCPU counts.
    pub vcpus: Vec<u32>,
    /// vCPU types, as `sev-snp-measure --vcpu-type` names them.
    pub vcpu_types: Vec<String>,
    /// Guest features, hex (`0x1`).
    pub guest_features: Vec<String>,
}

/// A validated image spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Which appliance.
    pub role: Role,
    /// Cargo package of the image's multi-call binary.
    pub package: String,
    /// Kernel command line.
    pub cmdline: String,
    /// Modules the image needs (their dependencies are added by the builder).
    pub modules: Vec<String>,
    /// Guest port of `GET /healthz`.
    pub health_port: u16,
    /// SIGTERM-to-SIGKILL time at shutdown.
    pub stop_timeout_ms: u64,
    /// Network bring-up.
    pub network: NetworkConfig,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// The fixed service set.
    pub services: Vec<ServiceConfig>,
    /// Ports to forward.
    pub ports: Vec<PortSpec>,
    /// The size of the persistent data disk the image needs, if any (see
    /// [`coffer_types::DATA_DISK_SERIAL`]).
    pub data_disk_mib: Option<u32>,
    /// Launch configurations to measure.
    pub snp: SnpLaunchConfigs,
}

impl ImageSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates spec text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ImageError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| ImageError::SpecSyntax {
            path: origin.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| format!(" (at line {})", line_of(text, s.start)))
                    .unwrap_or_default(),
        })?;
        let invalid = |reason: String| ImageError::SpecInvalid {
            path: origin.to_owned(),
            reason,
        };
        let role: Role = raw.role.parse().map_err(|e| invalid(format!("{e}")))?;
        if raw.package.trim().is_empty() {
            return Err(invalid("package is empty".into()));
        }
        if raw.cmdline.contains('\n') || raw.cmdline.len() > 2048 {
            return Err(invalid(
                "cmdline must be one line of at most 2048 bytes".into(),
            ));
        }
        if raw.services.is_empty() {
            return Err(invalid("an image needs at least one [[service]]".into()));
        }
        let mut names = BTreeSet::new();
        for service in &raw.services {
            if service.name.is_empty() || service.applet.is_empty() {
                return Err(invalid(
                    "every [[service]] needs a name and an applet".into(),
                ));
            }
            if !names.insert(service.name.as_str()) {
                return Err(invalid(format!(
                    "service '{}' is listed twice",
                    service.name
                )));
            }
            if service.uid.is_some() != service.gid.is_some() {
                return Err(invalid(format!(
                    "service '{}': give both uid and gid, or neither",
                    service.name
                )));
            }
        }
        if raw.restart.initial_backoff_ms == 0
            || raw.restart.max_backoff_ms < raw.restart.initial_backoff_ms
            || raw.restart.window_ms == 0
        {
            return Err(invalid(
                "restart: need 0 < initial_backoff_ms <= max_backoff_ms and window_ms > 0".into(),
            ));
        }
        let mut port_numbers = BTreeSet::new();
        for port in &raw.ports {
            if port.guest == 0 || !port_numbers.insert(port.guest) {
                return Err(invalid(format!(
                    "port '{}': guest port {} is zero or listed twice",
                    port.name, port.guest
                )));
            }
        }
        if !port_numbers.contains(&raw.health_port) {
            return Err(invalid(format!(
                "health_port {} is not one of the [[port]] entries",
                raw.health_port
            )));
        }
        if let Some(mib) = raw
            .data_disk_mib
            .filter(|mib| !(16..=1 << 20).contains(mib))
        {
            return Err(invalid(format!(
                "data_disk_mib {mib} is outside 16..=1048576"
            )));
        }
        let snp = &raw.snp;
        if snp.vcpus.is_empty() || snp.vcpu_types.is_empty() || snp.guest_features.is_empty() {
            return Err(invalid(
                "snp: vcpus, vcpu_types and guest_features must not be empty".into(),
            ));
        }
        if let Some(n) = snp.vcpus.iter().find(|n| **n == 0 || **n > 512) {
            return Err(invalid(format!(
                "snp: {n} vCPUs is not a supported launch configuration"
            )));
        }
        for name in &snp.vcpu_types {
            coffer_measurements::snp::CpuSignature::from_vcpu_type(name)
                .map_err(|e| invalid(format!("snp: {e}")))?;
        }
        for features in &snp.guest_features {
            parse_hex_u64(features).ok_or_else(|| {
                invalid(format!(
                    "snp: guest feature value '{features}' is not hex like 0x1"
                ))
            })?;
        }
        Ok(ImageSpec {
            role,
            package: raw.package,
            cmdline: raw.cmdline,
            modules: raw.modules,
            health_port: raw.health_port,
            stop_timeout_ms: raw.stop_timeout_ms,
            network: raw.network,
            restart: raw.restart,
            services: raw.services,
            ports: raw.ports,
            data_disk_mib: raw.data_disk_mib,
            snp: raw.snp,
        })
    }
}

/// Parses `0x`-prefixed hex.
pub fn parse_hex_u64(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
role = "kms"
package = "kms-appliance"
cmdline = "console=ttyS0"
modules = ["virtio_net"]
health_port = 8080
stop_timeout_ms = 5000
network = { mode = "static", interface = "eth0", address = "10.0.2.15/24", gateway = "10.0.2.2" }
restart = { initial_backoff_ms = 100, max_backoff_ms = 1000, max_restarts = 5, window_ms = 60000 }

[[service]]
name = "kms"
applet = "health"
args = []
uid = 1000
gid = 1000
critical = true

[[port]]
name = "health"
guest = 8080

[snp]
vcpus = [1]
vcpu_types = ["EPYC-v4"]
guest_features = ["0x1"]
"#;

    #[test]
    fn the_example_spec_is_valid() {
        let spec = ImageSpec::parse(GOOD, "good.toml").unwrap();
        assert_eq!(spec.role, Role::Kms);
        assert_eq!(spec.services.len(), 1);
    }

    /// Each broken spec gets an error that names the problem.
    #[test]
    fn broken_specs_are_rejected_with_a_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("role = \"kms\"", "role = \"hub\"", "unknown role 'hub'"),
            (
                "health_port = 8080",
                "health_port = 9000",
                "health_port 9000",
            ),
            ("name = \"kms\"", "name = \"\"", "needs a name"),
            ("uid = 1000\n", "", "both uid and gid"),
            (
                "initial_backoff_ms = 100",
                "initial_backoff_ms = 0",
                "restart:",
            ),
            (
                "mode = \"static\"",
                "mode = \"carrier-pigeon\"",
                "unknown variant",
            ),
            (
                "critical = true",
                "critical = true\nshell = true",
                "unknown field `shell`",
            ),
            (
                "stop_timeout_ms = 5000",
                "stop_timeout_ms = \"soon\"",
                "line 7",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = ImageSpec::parse(&text, "bad.toml").unwrap_err().to_string();
            assert!(err.starts_with("image spec bad.toml: "), "{err}");
            assert!(err.contains(expected), "expected '{expected}' in: {err}");
        }
    }

    #[test]
    fn the_committed_specs_are_valid() {
        for role in Role::ALL {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("specs")
                .join(format!("{role}.toml"));
            let spec = ImageSpec::load(&path).unwrap();
            assert_eq!(spec.role, role);
            assert_eq!(spec.package, format!("{role}-appliance"));
        }
    }
}
