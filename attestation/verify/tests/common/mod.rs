//! Shared fixtures: the real AMD-signed evidence in `testdata/` (see testdata/PROVENANCE.md),
//! each with a clock inside every certificate's validity, and a policy made to accept it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use coffer_verify::policy::{TcbFloor, TcbFloorsFile};
use coffer_verify::{AmdRoots, Evidence, Generation, Policy, Report, Timestamp, VekKind};

/// One real report with its VEK.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub report: &'static str,
    pub vek: &'static str,
    pub generation: Generation,
    pub kind: VekKind,
    pub version: u32,
    /// A time within the validity of the VEK, its ASK/ASVK and the ARK.
    pub at: &'static str,
}

pub const CASES: [Case; 10] = [
    case(
        "virtee milan v2",
        "virtee-sev/report_milan.hex",
        "virtee-sev/vcek_milan.der",
        Generation::Milan,
        VekKind::Vcek,
        2,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "go-sev-guest milan v2 debug",
        "go-sev-guest/attestation.bin",
        "go-sev-guest/vcek.testcer",
        Generation::Milan,
        VekKind::Vcek,
        2,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "trustee milan v2 id block",
        "trustee/test-report.bin",
        "trustee/test-vcek.der",
        Generation::Milan,
        VekKind::Vcek,
        2,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "azure milan v2",
        "trustee/derived/az-milan_snp-report.bin",
        "trustee/derived/az-milan_vcek.der",
        Generation::Milan,
        VekKind::Vcek,
        2,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "azure milan v3",
        "trustee/derived/az-v2-milan_snp-report.bin",
        "trustee/derived/az-v2-milan_vcek.der",
        Generation::Milan,
        VekKind::Vcek,
        3,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "azure genoa v3",
        "trustee/derived/az-genoa_snp-report.bin",
        "trustee/derived/az-genoa_vcek.der",
        Generation::Genoa,
        VekKind::Vcek,
        3,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "genoa-class 0xA0 v3",
        "trustee/derived/e2e-genoa_snp-report.bin",
        "trustee/derived/e2e-genoa_vcek.der",
        Generation::Genoa,
        VekKind::Vcek,
        3,
        "2026-11-29T00:00:00Z",
    ),
    case(
        "turin v5",
        "openanolis-trustee/turin-report.bin",
        "openanolis-trustee/turin-vcek.der",
        Generation::Turin,
        VekKind::Vcek,
        5,
        "2026-11-29T00:00:00Z",
    ),
    // The VLEKs have expired: pin the clock inside their one-year validity.
    case(
        "aws vlek milan v3",
        "trustee/test-vlek-report.bin",
        "trustee/test-vlek.der",
        Generation::Milan,
        VekKind::Vlek,
        3,
        "2025-06-01T00:00:00Z",
    ),
    case(
        "aws vlek milan v2 masked chip",
        "openanolis-trustee/test-vlek-report.bin",
        "openanolis-trustee/test-vlek.der",
        Generation::Milan,
        VekKind::Vlek,
        2,
        "2024-12-01T00:00:00Z",
    ),
];

#[allow(clippy::too_many_arguments)]
const fn case(
    name: &'static str,
    report: &'static str,
    vek: &'static str,
    generation: Generation,
    kind: VekKind,
    version: u32,
    at: &'static str,
) -> Case {
    Case {
        name,
        report,
        vek,
        generation,
        kind,
        version,
        at,
    }
}

/// A test data file's bytes (`.hex` files are decoded).
pub fn load(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(path);
    let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    if path.ends_with(".hex") {
        hex::decode(String::from_utf8(bytes).unwrap().trim()).unwrap()
    } else {
        bytes
    }
}

pub fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).unwrap()
}

pub fn roots() -> AmdRoots {
    AmdRoots::builtin().unwrap()
}

impl Case {
    pub fn report_bytes(&self) -> Vec<u8> {
        load(self.report)
    }
    pub fn evidence(&self) -> Evidence {
        Evidence::parse(&self.report_bytes(), &load(self.vek), None, None).unwrap()
    }
    pub fn at(&self) -> Timestamp {
        at(self.at)
    }
    pub fn by_name(name: &str) -> Case {
        *CASES.iter().find(|c| c.name == name).unwrap()
    }
}

/// A policy that accepts exactly this report: its own measurement, TCBs as floors, its flags,
/// and every optional check configured with the report's own values. (go-sev-guest's report has
/// POLICY 0xb0000: bit 19, DEBUG, is set; so this policy allows debugging for it.)
pub fn policy_for(case: &Case) -> Policy {
    let report = Report::parse(&case.report_bytes()).unwrap();
    let f = report.fields();
    let floor = |raw: coffer_verify::tcb::RawTcb| {
        let t = raw.decode(case.generation);
        TcbFloor {
            fmc: t.fmc,
            bl: t.bl,
            tee: t.tee,
            snp: t.snp,
            ucode: t.ucode,
        }
    };
    Policy {
        min_report_version: case.version,
        trust_root: coffer_verify::policy::TrustRoot::Amd,
        allowed_processors: vec![case.generation],
        allowed_measurements: vec![[0xAA; 48], f.measurement],
        any_measurement_with_pinned_id_key: false,
        allowed_vmpl: vec![f.vmpl],
        allow_debug: f.policy.debug(),
        allow_migration_agent: f.policy.migrate_ma(),
        allow_smt: f.platform_info.smt_enabled(),
        min_tcb: [(
            case.generation,
            TcbFloorsFile {
                reported: floor(f.reported_tcb),
                committed: floor(f.committed_tcb),
            },
        )]
        .into_iter()
        .collect(),
        allowed_cpuid: f.cpuid.map(|c| vec![(c.family, c.model)]),
        allowed_chip_ids: (case.kind == VekKind::Vcek).then(|| vec![f.chip_id]),
        host_data: Some(f.host_data),
        report_data: Some(f.report_data),
        allowed_id_key_digests: Some(vec![f.id_key_digest]),
        allowed_author_key_digests: f
            .key_info
            .author_key_en()
            .then(|| vec![f.author_key_digest]),
        min_guest_svn: Some(f.guest_svn),
    }
}

/// The names of the checks that failed.
pub fn failed(verdict: &coffer_verify::Verdict) -> Vec<String> {
    verdict.failures().map(|c| c.id.name()).collect()
}

/// The names of every check, in order.
pub fn names(verdict: &coffer_verify::Verdict) -> Vec<String> {
    verdict.checks().iter().map(|c| c.id.name()).collect()
}
