//! Verified-collateral caching: a cached chain gives the same verdicts, says so, and never turns
//! a failure into a pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_verify::{verify, verify_with_cache, CertRole, CheckId, SignatureCache};
use common::{policy_for, roots, Case, CASES};

#[test]
fn a_cached_chain_gives_the_same_verdict_on_every_real_report() {
    let cache = SignatureCache::default();
    for case in &CASES {
        let evidence = case.evidence();
        let policy = policy_for(case);
        let plain = verify(&evidence, &roots(), &policy, case.at());
        let first = verify_with_cache(&evidence, &roots(), &policy, case.at(), Some(&cache));
        let second = verify_with_cache(&evidence, &roots(), &policy, case.at(), Some(&cache));
        assert!(plain.accepted(), "{}", case.name);
        for verdict in [&first, &second] {
            assert_eq!(verdict.accepted(), plain.accepted(), "{}", case.name);
            assert_eq!(
                verdict
                    .checks()
                    .iter()
                    .map(|c| (c.id, c.passed))
                    .collect::<Vec<_>>(),
                plain
                    .checks()
                    .iter()
                    .map(|c| (c.id, c.passed))
                    .collect::<Vec<_>>(),
                "{}",
                case.name
            );
        }
        let vek_role = case.kind.role();
        let got = |v: &coffer_verify::Verdict| {
            v.check(CheckId::ChainSignature(vek_role))
                .unwrap()
                .got
                .clone()
        };
        assert_eq!(got(&first), "verified", "{}", case.name);
        assert!(got(&second).contains("cached"), "{}", case.name);
    }
    assert!(!cache.is_empty());
}

#[test]
fn a_failed_signature_is_never_cached() {
    let case = Case::by_name("virtee milan v2");
    let cache = SignatureCache::default();
    // The Genoa ASK does not sign a Milan VCEK: give it as the intermediate, twice.
    let genoa_ask = common::load("../roots/genoa/ask.pem");
    let report = case.report_bytes();
    let evidence =
        coffer_verify::Evidence::parse(&report, &common::load(case.vek), Some(&genoa_ask), None)
            .unwrap();
    for _ in 0..2 {
        let verdict = verify_with_cache(
            &evidence,
            &roots(),
            &policy_for(&case),
            case.at(),
            Some(&cache),
        );
        assert!(!verdict.accepted());
        let check = verdict
            .check(CheckId::ChainSignature(CertRole::Ask))
            .unwrap();
        assert!(!check.passed);
        assert!(!check.got.contains("cached"), "{}", check.got);
    }
}
