//! Explanation for people, kept apart from the decision.
//!
//! Nothing here changes a verdict: these functions only render a [`Verdict`] and a [`Report`] as
//! text, or give a serializable view of the report's fields for JSON output.
//!
//! # Hook: why did the measurement not match?
//!
//! A measurement mismatch is the most common failure and the least informative on its own (two
//! 48-byte digests). [`MeasurementAdvisor`] is the place for a later explanation: the measurement
//! crate can recompute the launch digests of nearby configurations (another vCPU count or type,
//! other guest features, the previous image) and say which one the report matches
//! ([`crate::advise::LaunchCandidates`]). [`render_text`] calls the advisor it is given, only for
//! a failed `policy.measurement`, and prints its answer as a "likely cause" line.

use std::fmt::Write as _;

use serde::Serialize;

use crate::checks::results::{CheckId, MeasurementMismatch, Scope, Verdict};
use crate::report::Report;
use crate::tcb::{Generation, Tcb};

/// Explains a measurement that the policy does not allow (a hook, see the module docs).
pub trait MeasurementAdvisor {
    /// A short human explanation of what probably produced `mismatch.got` (for instance "the
    /// allowed image with 4 vCPUs instead of 2"), or `None` when nothing nearby matches.
    fn likely_cause(&self, mismatch: &MeasurementMismatch) -> Option<String>;
}

/// One line per check (`PASS name: expected ... got ...`), then the decision.
pub fn render_text(verdict: &Verdict, advisor: Option<&dyn MeasurementAdvisor>) -> String {
    let mut out = String::new();
    for check in verdict.checks() {
        let _ = writeln!(
            out,
            "{} {}: expected {}; got {}",
            if check.passed { "PASS" } else { "FAIL" },
            check.id,
            check.expected,
            check.got
        );
        if !check.passed && check.id == CheckId::PolicyMeasurement {
            let cause = verdict
                .measurement_mismatch()
                .and_then(|m| advisor.and_then(|a| a.likely_cause(m)));
            if let Some(cause) = cause {
                let _ = writeln!(out, "     likely cause: {cause}");
            }
        }
    }
    let failed = verdict.failures().count();
    let total = verdict.checks().len();
    let what = match verdict.scope() {
        Scope::AuthenticityOnly => {
            "genuine AMD SEV-SNP evidence (authenticity only: no policy applied)"
        }
        Scope::Policy => "evidence accepted by the policy",
    };
    if verdict.accepted() {
        let _ = writeln!(out, "ACCEPTED: {what}; {total} checks passed");
    } else {
        let _ = writeln!(out, "REJECTED: {failed} of {total} checks failed");
    }
    out
}

/// The report's fields as a serializable view (hex for byte strings, TCBs decoded when the
/// generation is known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    /// VERSION.
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// POLICY, hex.
    pub policy: String,
    /// Decoded POLICY flags.
    pub policy_flags: PolicyFlags,
    /// FAMILY_ID, hex.
    pub family_id: String,
    /// IMAGE_ID, hex.
    pub image_id: String,
    /// VMPL.
    pub vmpl: u32,
    /// SIGNATURE_ALGO.
    pub signature_algo: u32,
    /// PLATFORM_INFO, hex.
    pub platform_info: String,
    /// KEY_INFO.SIGNING_KEY.
    pub signing_key: String,
    /// REPORT_DATA, hex.
    pub report_data: String,
    /// MEASUREMENT, hex.
    pub measurement: String,
    /// HOST_DATA, hex.
    pub host_data: String,
    /// ID_KEY_DIGEST, hex.
    pub id_key_digest: String,
    /// AUTHOR_KEY_DIGEST, hex.
    pub author_key_digest: String,
    /// REPORT_ID, hex.
    pub report_id: String,
    /// REPORT_ID_MA, hex.
    pub report_id_ma: String,
    /// CPUID family/model/stepping (version 3+).
    pub cpuid: Option<String>,
    /// CHIP_ID, hex.
    pub chip_id: String,
    /// The generation used to decode TCBs.
    pub generation: Option<Generation>,
    /// CURRENT_TCB.
    pub current_tcb: TcbView,
    /// REPORTED_TCB.
    pub reported_tcb: TcbView,
    /// COMMITTED_TCB.
    pub committed_tcb: TcbView,
    /// LAUNCH_TCB.
    pub launch_tcb: TcbView,
    /// Current SNP firmware version.
    pub current_firmware: String,
    /// Committed SNP firmware version.
    pub committed_firmware: String,
    /// LAUNCH_MIT_VECTOR (version 5+), hex.
    pub launch_mit_vector: Option<String>,
    /// CURRENT_MIT_VECTOR (version 5+), hex.
    pub current_mit_vector: Option<String>,
}

/// The guest POLICY bits that matter for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyFlags {
    /// Minimum ABI version, `major.minor`.
    pub abi_major: u8,
    /// Minimum ABI minor version.
    pub abi_minor: u8,
    /// SMT allowed.
    pub smt: bool,
    /// Migration agent allowed.
    pub migrate_ma: bool,
    /// Debugging allowed.
    pub debug: bool,
    /// Single socket only.
    pub single_socket: bool,
}

/// A TCB: raw hex, and decoded when the layout is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcbView {
    /// The 8 bytes, hex.
    pub raw: String,
    /// The components, under the generation's layout.
    pub decoded: Option<Tcb>,
}

impl ReportSummary {
    /// A view of `report`, decoding TCBs with `generation` (use [`Verdict::generation`]).
    pub fn new(report: &Report, generation: Option<Generation>) -> Self {
        let f = report.fields();
        let tcb = |raw: crate::tcb::RawTcb| TcbView {
            raw: raw.to_string(),
            decoded: generation.map(|g| raw.decode(g)),
        };
        Self {
            version: f.version,
            guest_svn: f.guest_svn,
            policy: format!("{:#x}", f.policy.0),
            policy_flags: PolicyFlags {
                abi_major: f.policy.abi_major(),
                abi_minor: f.policy.abi_minor(),
                smt: f.policy.smt(),
                migrate_ma: f.policy.migrate_ma(),
                debug: f.policy.debug(),
                single_socket: f.policy.single_socket(),
            },
            family_id: hex::encode(f.family_id),
            image_id: hex::encode(f.image_id),
            vmpl: f.vmpl,
            signature_algo: f.signature_algo,
            platform_info: format!("{:#x}", f.platform_info.0),
            signing_key: f.key_info.signing_key().to_string(),
            report_data: hex::encode(f.report_data),
            measurement: hex::encode(f.measurement),
            host_data: hex::encode(f.host_data),
            id_key_digest: hex::encode(f.id_key_digest),
            author_key_digest: hex::encode(f.author_key_digest),
            report_id: hex::encode(f.report_id),
            report_id_ma: hex::encode(f.report_id_ma),
            cpuid: f.cpuid.map(|c| c.to_string()),
            chip_id: hex::encode(f.chip_id),
            generation,
            current_tcb: tcb(f.current_tcb),
            reported_tcb: tcb(f.reported_tcb),
            committed_tcb: tcb(f.committed_tcb),
            launch_tcb: tcb(f.launch_tcb),
            current_firmware: f.current_firmware.to_string(),
            committed_firmware: f.committed_firmware.to_string(),
            launch_mit_vector: f.launch_mit_vector.map(|v| format!("{v:#x}")),
            current_mit_vector: f.current_mit_vector.map(|v| format!("{v:#x}")),
        }
    }
}

/// The report's fields, one `name: value` line each.
pub fn render_report(summary: &ReportSummary) -> String {
    let tcb = |t: &TcbView| match &t.decoded {
        Some(d) => format!("{} ({d})", t.raw),
        None => format!("{} (layout unknown)", t.raw),
    };
    let f = &summary.policy_flags;
    let mut lines = vec![
        ("version", summary.version.to_string()),
        (
            "generation",
            summary
                .generation
                .map_or("unknown".into(), |g| g.to_string()),
        ),
        ("guest_svn", summary.guest_svn.to_string()),
        (
            "policy",
            format!(
                "{} (abi >= {}.{}, smt {}, migrate_ma {}, debug {}, single_socket {})",
                summary.policy,
                f.abi_major,
                f.abi_minor,
                f.smt,
                f.migrate_ma,
                f.debug,
                f.single_socket
            ),
        ),
        ("family_id", summary.family_id.clone()),
        ("image_id", summary.image_id.clone()),
        ("vmpl", summary.vmpl.to_string()),
        ("signature_algo", summary.signature_algo.to_string()),
        ("platform_info", summary.platform_info.clone()),
        ("signing_key", summary.signing_key.clone()),
        ("report_data", summary.report_data.clone()),
        ("measurement", summary.measurement.clone()),
        ("host_data", summary.host_data.clone()),
        ("id_key_digest", summary.id_key_digest.clone()),
        ("author_key_digest", summary.author_key_digest.clone()),
        ("report_id", summary.report_id.clone()),
        ("report_id_ma", summary.report_id_ma.clone()),
        ("chip_id", summary.chip_id.clone()),
        ("current_tcb", tcb(&summary.current_tcb)),
        ("reported_tcb", tcb(&summary.reported_tcb)),
        ("committed_tcb", tcb(&summary.committed_tcb)),
        ("launch_tcb", tcb(&summary.launch_tcb)),
        ("current_firmware", summary.current_firmware.clone()),
        ("committed_firmware", summary.committed_firmware.clone()),
    ];
    if let Some(c) = &summary.cpuid {
        lines.insert(2, ("cpuid", c.clone()));
    }
    if let Some(v) = &summary.launch_mit_vector {
        lines.push(("launch_mit_vector", v.clone()));
    }
    if let Some(v) = &summary.current_mit_vector {
        lines.push(("current_mit_vector", v.clone()));
    }
    let mut out = String::new();
    for (name, value) in lines {
        let _ = writeln!(out, "{name}: {value}");
    }
    out
}
