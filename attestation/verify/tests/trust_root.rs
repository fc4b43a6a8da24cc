//! `chain.trust_root`: real AMD evidence passes under the default `amd` policy and is refused
//! under a `simulation` one. (Simulated evidence is tested from `coffer-sim`'s tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_verify::policy::TrustRoot;
use coffer_verify::{verify, verify_authenticity_only, CheckId, Policy};
use common::{policy_for, roots, CASES};

#[test]
fn policies_trust_amd_unless_they_say_simulation() {
    let base = "min_report_version = 2\nallowed_processors = [\"milan\"]\nallowed_measurements = [\"{m}\"]\nallowed_vmpl = [0]\n[min_tcb.milan]\nreported = { bl = 0, tee = 0, snp = 0, ucode = 0 }\ncommitted = { bl = 0, tee = 0, snp = 0, ucode = 0 }\n"
        .replace("{m}", &"00".repeat(48));
    assert_eq!(Policy::from_toml(&base).unwrap().trust_root, TrustRoot::Amd);
    let sim = format!("trust_root = \"simulation\"\n{base}");
    assert_eq!(
        Policy::from_toml(&sim).unwrap().trust_root,
        TrustRoot::Simulation
    );
    assert!(Policy::from_toml(&format!("trust_root = \"intel\"\n{base}")).is_err());
}

#[test]
fn amd_evidence_passes_trust_root_under_an_amd_policy_and_fails_under_a_simulation_one() {
    for case in CASES {
        let evidence = case.evidence();
        let mut policy = policy_for(&case);
        let verdict = verify(&evidence, &roots(), &policy, case.at());
        assert!(verdict.accepted(), "{}", case.name);
        assert!(verdict.check(CheckId::ChainTrustRoot).unwrap().passed);

        policy.trust_root = TrustRoot::Simulation;
        let verdict = verify(&evidence, &roots(), &policy, case.at());
        assert!(!verdict.accepted(), "{}", case.name);
        let failed: Vec<String> = verdict.failures().map(|c| c.id.name()).collect();
        assert_eq!(failed, ["chain.trust_root"], "{}", case.name);
        let check = verdict.check(CheckId::ChainTrustRoot).unwrap();
        assert!(check.expected.contains("simulation"), "{check:?}");
        assert!(check.got.contains("an AMD root"), "{check:?}");

        let verdict = verify_authenticity_only(&evidence, &roots(), case.at());
        assert!(
            verdict.check(CheckId::ChainTrustRoot).unwrap().passed,
            "{}",
            case.name
        );
    }
}
