//! The simulated secure processor end to end: its evidence verifies with coffer-verify only when
//! the caller opted into the simulation root twice, and is rejected, by name, otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use coffer_sim::{ReportFields, SimRoot};
use coffer_verify::{
    verify, verify_authenticity_only, AmdRoots, Evidence, Policy, Timestamp, Verdict,
};

const MEASUREMENT: [u8; 48] = [0x42; 48];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coffer-sim-test-root")
}

/// One root per test binary (RSA-4096 key generation is slow), generated fresh each run through
/// `load_or_generate`.
fn root() -> &'static SimRoot {
    static ROOT: OnceLock<SimRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let _ = std::fs::remove_dir_all(dir());
        SimRoot::load_or_generate(&dir()).unwrap()
    })
}

fn fields() -> ReportFields {
    ReportFields {
        measurement: MEASUREMENT,
        host_data: [0x11; 32],
        report_data: [0x22; 64],
        ..ReportFields::default()
    }
}

fn evidence(report: &[u8]) -> Evidence {
    Evidence::parse(report, root().vcek_der(), None, None).unwrap()
}

fn sim_roots() -> AmdRoots {
    AmdRoots::builtin()
        .unwrap()
        .with_simulation_root(root().ark_der(), root().ask_der())
        .unwrap()
}

fn policy(trust_root: &str) -> Policy {
    let t = root().tcb();
    Policy::from_toml(&format!(
        r#"
trust_root = "{trust_root}"
min_report_version = 3
allowed_processors = ["genoa"]
allowed_measurements = ["{m}"]
allowed_vmpl = [0]
allow_smt = true
allowed_cpuid = [{{ family = 0x19, model = 0x11 }}]
allowed_chip_ids = ["{chip}"]
host_data = "{host}"
report_data = "{rd}"
[min_tcb.genoa]
reported = {{ bl = {bl}, tee = {tee}, snp = {snp}, ucode = {ucode} }}
committed = {{ bl = {bl}, tee = {tee}, snp = {snp}, ucode = {ucode} }}
"#,
        m = hex::encode(MEASUREMENT),
        chip = hex::encode(root().chip_id()),
        host = hex::encode([0x11; 32]),
        rd = hex::encode([0x22; 64]),
        bl = t.bl,
        tee = t.tee,
        snp = t.snp,
        ucode = t.ucode,
    ))
    .unwrap()
}

fn now() -> Timestamp {
    Timestamp::now().unwrap()
}

fn failed(verdict: &Verdict) -> Vec<String> {
    verdict
        .checks()
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.id.name())
        .collect()
}

fn check<'a>(verdict: &'a Verdict, name: &str) -> &'a coffer_verify::CheckResult {
    verdict
        .checks()
        .iter()
        .find(|c| c.id.name() == name)
        .unwrap()
}

#[test]
fn a_simulated_report_verifies_under_a_simulation_policy_with_every_check_passing() {
    let report = root().sign_report(&fields());
    let verdict = verify(
        &evidence(&report),
        &sim_roots(),
        &policy("simulation"),
        now(),
    );
    assert!(verdict.accepted(), "{verdict:#?}");
    assert_eq!(failed(&verdict), Vec::<String>::new());
    for name in [
        "chain.trust_root",
        "chain.ark.pinned",
        "report.signature",
        "report.reserved",
        "report.processor",
        "vek.chip_id",
        "vek.reported_tcb",
        "policy.measurement",
        "policy.chip_id",
        "policy.host_data",
        "policy.report_data",
        "policy.debug",
    ] {
        assert!(check(&verdict, name).passed, "{name}");
    }
}

#[test]
fn the_same_evidence_given_its_ark_and_ask_verifies_too() {
    let report = root().sign_report(&fields());
    let ev = Evidence::parse(
        &report,
        root().vcek_der(),
        Some(root().ask_der()),
        Some(root().ark_der()),
    )
    .unwrap();
    let verdict = verify(&ev, &sim_roots(), &policy("simulation"), now());
    assert!(verdict.accepted(), "{verdict:#?}");
}

#[test]
fn simulated_evidence_is_rejected_under_the_default_amd_policy() {
    let report = root().sign_report(&fields());
    // Even with the simulation roots supplied, an amd policy refuses it, by name.
    let verdict = verify(&evidence(&report), &sim_roots(), &policy("amd"), now());
    assert!(!verdict.accepted());
    assert_eq!(failed(&verdict), ["chain.trust_root"]);
    let c = check(&verdict, "chain.trust_root");
    assert!(c.expected.contains("AMD root"), "{c:?}");
    assert!(c.got.contains("Coffer simulation root (ARK-Sim"), "{c:?}");
    // With the built-in roots only, it also fails.
    let verdict = verify(
        &evidence(&report),
        &AmdRoots::builtin().unwrap(),
        &policy("amd"),
        now(),
    );
    assert!(!verdict.accepted());
    assert!(failed(&verdict).contains(&"chain.trust_root".to_owned()));
    assert!(failed(&verdict).contains(&"chain.vek_issuer".to_owned()));
}

#[test]
fn a_simulation_policy_without_the_simulation_roots_rejects_it() {
    let report = root().sign_report(&fields());
    let verdict = verify(
        &evidence(&report),
        &AmdRoots::builtin().unwrap(),
        &policy("simulation"),
        now(),
    );
    assert!(!verdict.accepted());
    let c = check(&verdict, "chain.trust_root");
    assert!(!c.passed);
    assert!(c.got.contains("these roots do not trust it"), "{c:?}");
}

#[test]
fn authenticity_only_rejects_simulated_evidence_with_the_builtin_roots() {
    let report = root().sign_report(&fields());
    let verdict =
        verify_authenticity_only(&evidence(&report), &AmdRoots::builtin().unwrap(), now());
    assert!(!verdict.accepted());
    assert!(
        failed(&verdict).contains(&"chain.trust_root".to_owned()),
        "{:?}",
        failed(&verdict)
    );
    // Only an explicit simulation-trusting roots value accepts it.
    let verdict = verify_authenticity_only(&evidence(&report), &sim_roots(), now());
    assert!(verdict.accepted(), "{verdict:#?}");
}

#[test]
fn flipping_any_signed_bit_fails_the_signature() {
    let report = root().sign_report(&fields());
    for offset in [0x050, 0x090, 0x0C0, 0x29F] {
        let mut bad = report;
        bad[offset] ^= 1;
        let verdict = verify_authenticity_only(&evidence(&bad), &sim_roots(), now());
        assert!(
            failed(&verdict).contains(&"report.signature".to_owned()),
            "{offset:#x}"
        );
    }
}

#[test]
fn debug_in_the_report_is_caught_by_the_policy() {
    let report = root().sign_report(&ReportFields {
        policy: ReportFields::DEFAULT_POLICY | ReportFields::POLICY_DEBUG,
        ..fields()
    });
    let verdict = verify(
        &evidence(&report),
        &sim_roots(),
        &policy("simulation"),
        now(),
    );
    assert_eq!(failed(&verdict), ["policy.debug"]);
}

#[test]
fn load_or_generate_keeps_the_same_chain_and_writes_keys_0600() {
    let first = root();
    let again = SimRoot::load_or_generate(&dir()).unwrap();
    assert_eq!(first.ark_der(), again.ark_der());
    assert_eq!(first.ask_der(), again.ask_der());
    assert_eq!(first.vcek_der(), again.vcek_der());
    assert_eq!(first.chip_id(), again.chip_id());
    assert_eq!(
        *first.derive_key(&MEASUREMENT, 0x30000, b"x"),
        *again.derive_key(&MEASUREMENT, 0x30000, b"x")
    );
    for key in ["vcek.key", "seal.key"] {
        let mode = std::fs::metadata(dir().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // A report from the reloaded root verifies against the first root's certificates.
    let report = again.sign_report(&fields());
    assert!(verify(
        &evidence(&report),
        &sim_roots(),
        &policy("simulation"),
        now()
    )
    .accepted());
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let copy = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coffer-sim-test-mode");
    let _ = std::fs::remove_dir_all(&copy);
    root().save(&copy).unwrap();
    std::fs::set_permissions(
        copy.join("seal.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = SimRoot::load_or_generate(&copy).unwrap_err();
    assert!(err.to_string().contains("mode 644"), "{err}");
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn derived_keys_differ_per_measurement_policy_and_context_and_are_stable() {
    let r = root();
    let base = r.derive_key(&MEASUREMENT, 0x30000, b"kms");
    assert_eq!(*base, *r.derive_key(&MEASUREMENT, 0x30000, b"kms"));
    assert_ne!(*base, *r.derive_key(&[0x43; 48], 0x30000, b"kms"));
    assert_ne!(*base, *r.derive_key(&MEASUREMENT, 0xB0000, b"kms"));
    assert_ne!(*base, *r.derive_key(&MEASUREMENT, 0x30000, b"hub"));
}

#[test]
fn debug_output_holds_no_key_material() {
    let shown = format!("{:?}", root());
    for key in ["vcek.key", "seal.key"] {
        let hex = std::fs::read_to_string(dir().join(key)).unwrap();
        let hex = hex.trim();
        assert_eq!(hex.len() % 2, 0);
        assert!(!shown.contains(hex), "{key} appears in Debug");
        assert!(!shown.contains(&hex[..16]), "{key} prefix appears in Debug");
    }
    assert!(shown.contains("[redacted]"));
    let derived = root().derive_key(&MEASUREMENT, 0, b"");
    assert!(!format!("{derived:?}").contains(&hex::encode(*derived)));
}

#[test]
fn certificates_are_named_as_simulated_and_an_amd_root_is_refused_as_one() {
    let ark = coffer_verify::Certificate::from_der(root().ark_der()).unwrap();
    let ask = coffer_verify::Certificate::from_der(root().ask_der()).unwrap();
    assert_eq!(ark.subject_cn().as_deref(), Some("ARK-Sim"));
    assert_eq!(ask.subject_cn().as_deref(), Some("SEV-Sim"));
    assert!(
        ark.subject().contains("Coffer simulation (NOT AMD)"),
        "{}",
        ark.subject()
    );
    let amd = AmdRoots::builtin().unwrap();
    let genoa = amd.get(coffer_verify::Generation::Genoa).unwrap().clone();
    let err = AmdRoots::builtin()
        .unwrap()
        .with_simulation_root(genoa.ark.der(), genoa.ask.der())
        .unwrap_err();
    assert!(
        err.to_string().contains("not a Coffer simulation root"),
        "{err}"
    );
}
