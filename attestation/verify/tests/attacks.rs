//! Attacks, as tables: each names what it changes and which checks must fail. Every attack must
//! fail exactly the named checks while every other check still runs (no early exit).

// Tests fail by panicking (helpers outside #[test] included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_verify::explain::{render_text, MeasurementAdvisor};
use coffer_verify::{
    verify, verify_authenticity_only, CertRole, CheckId, Evidence, MeasurementMismatch, Report,
    Timestamp,
};
use common::{at, failed, load, names, policy_for, roots, Case};

/// Flips one bit of a real report and verifies it (with the report's own policy); returns the
/// verdict, or `None` when the flip made the report unparsable (only VERSION can do that).
fn flipped(
    case: &Case,
    evidence: &Evidence,
    byte: usize,
    bit: u8,
) -> Option<coffer_verify::Verdict> {
    let mut bytes = evidence.report.raw().to_vec();
    bytes[byte] ^= 1 << bit;
    let report = Report::parse(&bytes).ok()?;
    let evidence = Evidence {
        report,
        ..evidence.clone()
    };
    Some(verify(&evidence, &roots(), &policy_for(case), case.at()))
}

#[test]
fn flipping_any_bit_of_the_signed_region_fails_the_signature_check() {
    // Sampled positions across 0x000..0x2A0, plus every byte of the fields a forger wants.
    let mut positions: Vec<(usize, u8)> =
        (0..0x2A0).step_by(7).map(|b| (b, (b % 8) as u8)).collect();
    for (start, len) in [
        (0x008, 8),  // POLICY
        (0x030, 4),  // VMPL
        (0x048, 4),  // KEY_INFO
        (0x090, 48), // MEASUREMENT
        (0x0C0, 32), // HOST_DATA
        (0x180, 8),  // REPORTED_TCB
    ] {
        positions.extend((start..start + len).map(|b| (b, ((b * 5) % 8) as u8)));
    }
    // Split the work over two threads: each flip runs the full verification (debug build).
    for case in [Case::by_name("azure genoa v3"), Case::by_name("turin v5")] {
        let evidence = case.evidence();
        let (a, b) = positions.split_at(positions.len() / 2);
        std::thread::scope(|s| {
            for part in [a, b] {
                let evidence = &evidence;
                s.spawn(move || {
                    for &(byte, bit) in part {
                        match flipped(&case, evidence, byte, bit) {
                            None => {
                                assert!(byte < 4, "{}: flip at {byte:#x} unparsable", case.name)
                            }
                            Some(verdict) => {
                                assert!(
                                    !verdict.accepted(),
                                    "{}: flip at {byte:#x}.{bit} accepted",
                                    case.name
                                );
                                let sig = verdict.check(CheckId::ReportSignature).unwrap();
                                assert!(
                                    !sig.passed,
                                    "{}: flip at {byte:#x}.{bit}: signature passed",
                                    case.name
                                );
                            }
                        }
                    }
                });
            }
        });
    }
    eprintln!("{} flips per report", positions.len());
}

#[test]
fn flipping_signature_or_padding_bytes_is_rejected() {
    let case = Case::by_name("virtee milan v2");
    let evidence = case.evidence();
    // R, S, their zero padding and the reserved tail of the signature area.
    for (byte, want) in [
        (0x2A0, "report.signature"),
        (0x2A0 + 47, "report.signature"),
        (0x2A0 + 50, "report.reserved"),
        (0x2E8, "report.signature"),
        (0x2E8 + 60, "report.reserved"),
        (0x400, "report.reserved"),
    ] {
        let verdict = flipped(&case, &evidence, byte, 0).unwrap();
        assert!(
            failed(&verdict).contains(&want.to_owned()),
            "{byte:#x}: {:?}",
            failed(&verdict)
        );
    }
}

/// (attack, evidence builder, clock, checks that must fail and nothing else)
type Attack = (
    &'static str,
    fn() -> Evidence,
    &'static str,
    &'static [&'static str],
);

const CHAIN_ATTACKS: &[Attack] = &[
    (
        "another chip's VCEK (same TCB)",
        || {
            Evidence::parse(
                &load("trustee/test-report.bin"),
                &load("virtee-sev/vcek_milan.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2026-11-29T00:00:00Z",
        &["report.signature", "vek.chip_id"],
    ),
    (
        "a VLEK report with a VCEK chain",
        || {
            Evidence::parse(
                &load("trustee/test-vlek-report.bin"),
                &load("trustee/test-vcek.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2025-06-01T00:00:00Z",
        &[
            "report.signing_key",
            "report.signature",
            "vek.chip_id",
            "vek.reported_tcb",
        ],
    ),
    (
        "a VCEK report with a VLEK chain",
        || {
            Evidence::parse(
                &load("trustee/test-report.bin"),
                &load("trustee/test-vlek.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2025-06-01T00:00:00Z",
        &["report.signing_key", "report.signature", "vek.reported_tcb"],
    ),
    (
        "a VLEK with the ASK (VCEK chain) as its intermediate",
        || {
            let chain = load("virtee-sev/cert_chain_milan");
            let ask = coffer_verify::Certificate::from_pem_bundle(&chain).unwrap()[0]
                .der()
                .to_vec();
            Evidence::parse(
                &load("trustee/test-vlek-report.bin"),
                &load("trustee/test-vlek.der"),
                Some(&ask),
                None,
            )
            .unwrap()
        },
        "2025-06-01T00:00:00Z",
        &["chain.vlek.signature"],
    ),
    (
        "a Genoa ARK given with a Milan chain",
        || {
            let roots = roots();
            let ark = roots
                .get(coffer_verify::Generation::Genoa)
                .unwrap()
                .ark
                .der()
                .to_vec();
            Evidence::parse(
                &load("trustee/test-report.bin"),
                &load("trustee/test-vcek.der"),
                None,
                Some(&ark),
            )
            .unwrap()
        },
        "2026-11-29T00:00:00Z",
        &["chain.ark.pinned"],
    ),
    (
        "a VCEK whose AMD signature was broken (edited extensions)",
        || {
            Evidence::parse(
                &load("trustee/test-report.bin"),
                &load("trustee/test-vcek-invalid-new.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2026-11-29T00:00:00Z",
        &[
            "chain.vcek.signature",
            "report.signature",
            "vek.chip_id",
            "vek.reported_tcb",
        ],
    ),
    (
        "an expired VLEK (clock after notAfter)",
        || {
            Evidence::parse(
                &load("trustee/test-vlek-report.bin"),
                &load("trustee/test-vlek.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2026-11-29T00:00:00Z",
        &["chain.vlek.validity"],
    ),
    (
        "a VCEK not yet valid (clock before notBefore)",
        || {
            Evidence::parse(
                &load("virtee-sev/report_milan.hex"),
                &load("virtee-sev/vcek_milan.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2023-01-01T00:00:00Z",
        &["chain.vcek.validity"],
    ),
    (
        "every certificate not yet valid (clock before the ARK)",
        || {
            Evidence::parse(
                &load("openanolis-trustee/turin-report.bin"),
                &load("openanolis-trustee/turin-vcek.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2020-01-01T00:00:00Z",
        &[
            "chain.ark.validity",
            "chain.ask.validity",
            "chain.vcek.validity",
        ],
    ),
    (
        "a Turin VCEK that is not the report's (no report: chain fine, chip and key wrong)",
        || {
            Evidence::parse(
                &load("openanolis-trustee/turin-report.bin"),
                &load("virtee-sev/vcek_turin.der"),
                None,
                None,
            )
            .unwrap()
        },
        "2026-11-29T00:00:00Z",
        &["report.signature", "vek.chip_id", "vek.reported_tcb"],
    ),
    (
        "a non-AMD issuer (the ARK presented as the VEK)",
        || {
            let ark = roots()
                .get(coffer_verify::Generation::Milan)
                .unwrap()
                .ark
                .der()
                .to_vec();
            Evidence::parse(&load("trustee/test-report.bin"), &ark, None, None).unwrap()
        },
        "2026-11-29T00:00:00Z",
        &[
            "chain.vek_issuer",
            "report.signing_key",
            "report.signature",
            "vek.reported_tcb",
        ],
    ),
];

#[test]
fn chain_and_key_attacks_fail_exactly_the_named_checks() {
    let roots = roots();
    for (attack, evidence, clock, want) in CHAIN_ATTACKS {
        let verdict = verify_authenticity_only(&evidence(), &roots, at(clock));
        assert!(!verdict.accepted(), "{attack}: accepted");
        assert_eq!(
            failed(&verdict),
            *want,
            "{attack}:\n{}",
            render_text(&verdict, None)
        );
    }
}

#[test]
fn an_expired_certificate_is_named_with_its_dates() {
    let evidence = Evidence::parse(
        &load("trustee/test-vlek-report.bin"),
        &load("trustee/test-vlek.der"),
        None,
        None,
    )
    .unwrap();
    let verdict = verify_authenticity_only(&evidence, &roots(), at("2026-01-01T00:00:00Z"));
    let check = verdict
        .check(CheckId::ChainValidity(CertRole::Vlek))
        .unwrap();
    assert_eq!(check.expected, "SEV-VLEK valid at 2026-01-01T00:00:00Z");
    assert_eq!(
        check.got,
        "notBefore 2024-12-10T22:14:21Z, notAfter 2025-12-10T22:14:21Z: expired"
    );
    // The boundaries are inclusive (RFC 5280).
    let last_second = Timestamp::parse_rfc3339("2025-12-10T22:14:21Z").unwrap();
    assert!(verify_authenticity_only(&evidence, &roots(), last_second).accepted());
    let after = Timestamp::from_unix_seconds(last_second.unix_seconds() + 1).unwrap();
    assert!(!verify_authenticity_only(&evidence, &roots(), after).accepted());
}

/// (attack, report case, how the policy or report is changed, checks that must fail)
type PolicyAttack = (
    &'static str,
    &'static str,
    fn(&mut coffer_verify::Policy),
    &'static [&'static str],
);

const POLICY_ATTACKS: &[PolicyAttack] = &[
    (
        "TCB below the policy floor (snp)",
        "virtee milan v2",
        |p| p.min_tcb.values_mut().for_each(|f| f.reported.snp += 1),
        &["policy.reported_tcb.snp"],
    ),
    (
        "committed TCB below the floor (Turin fmc and ucode)",
        "turin v5",
        |p| {
            p.min_tcb.values_mut().for_each(|f| {
                f.committed.fmc = Some(2);
                f.committed.ucode = 98;
            })
        },
        &["policy.committed_tcb.fmc", "policy.committed_tcb.ucode"],
    ),
    (
        "a debuggable guest (real report, POLICY.DEBUG set)",
        "go-sev-guest milan v2 debug",
        |p| p.allow_debug = false,
        &["policy.debug"],
    ),
    (
        "wrong host_data",
        "azure genoa v3",
        |p| p.host_data = Some([1; 32]),
        &["policy.host_data"],
    ),
    (
        "wrong report_data (stale nonce)",
        "azure genoa v3",
        |p| p.report_data = Some([2; 64]),
        &["policy.report_data"],
    ),
    (
        "measurement not allowed",
        "azure milan v3",
        |p| p.allowed_measurements = vec![[0xAA; 48]],
        &["policy.measurement"],
    ),
    (
        "report version below the minimum",
        "trustee milan v2 id block",
        |p| p.min_report_version = 3,
        &["policy.report_version"],
    ),
    (
        "VMPL 1 where only 0 is allowed",
        "aws vlek milan v3",
        |p| p.allowed_vmpl = vec![0],
        &["policy.vmpl"],
    ),
    (
        "SMT forbidden and off on the platform (control: passes)",
        "azure genoa v3",
        |p| p.allow_smt = false,
        &[],
    ),
    (
        "SMT on where the policy forbids it (Milan, SMT_EN set)",
        "virtee milan v2",
        |p| p.allow_smt = false,
        &["policy.smt"],
    ),
    (
        "a processor the policy does not allow",
        "turin v5",
        |p| {
            p.allowed_processors = vec![coffer_verify::Generation::Milan];
            p.min_tcb.clear();
        },
        &[
            "policy.processor",
            "policy.reported_tcb",
            "policy.committed_tcb",
        ],
    ),
    (
        "a CPUID model the policy does not allow",
        "genoa-class 0xA0 v3",
        |p| p.allowed_cpuid = Some(vec![(0x19, 0x11)]),
        &["policy.cpuid"],
    ),
    (
        "a chip not on the allow-list",
        "azure milan v2",
        |p| p.allowed_chip_ids = Some(vec![[3; 64]]),
        &["policy.chip_id"],
    ),
    (
        "a masked chip ID with a chip allow-list",
        "aws vlek milan v2 masked chip",
        |p| p.allowed_chip_ids = Some(vec![[0; 64]]),
        &["policy.chip_id"],
    ),
    (
        "an ID key not on the allow-list",
        "trustee milan v2 id block",
        |p| p.allowed_id_key_digests = Some(vec![[4; 48]]),
        &["policy.id_key_digest"],
    ),
    (
        "an author key required but absent",
        "trustee milan v2 id block",
        |p| p.allowed_author_key_digests = Some(vec![[5; 48]]),
        &["policy.author_key_digest"],
    ),
    (
        "guest SVN below the minimum",
        "trustee milan v2 id block",
        |p| p.min_guest_svn = Some(5),
        &["policy.guest_svn"],
    ),
    (
        "everything wrong at once",
        "azure genoa v3",
        |p| {
            p.min_report_version = 5;
            p.allowed_measurements = vec![];
            p.host_data = Some([1; 32]);
            p.min_tcb.values_mut().for_each(|f| f.reported.bl += 1);
        },
        &[
            "policy.report_version",
            "policy.measurement",
            "policy.reported_tcb.bl",
            "policy.host_data",
        ],
    ),
];

#[test]
fn policy_attacks_fail_exactly_the_named_checks_and_every_check_still_runs() {
    let roots = roots();
    for (attack, case, change, want) in POLICY_ATTACKS {
        let case = Case::by_name(case);
        let evidence = case.evidence();
        let baseline = verify(&evidence, &roots, &policy_for(&case), case.at());
        assert!(baseline.accepted(), "{attack}: baseline rejected");
        let mut policy = policy_for(&case);
        change(&mut policy);
        let verdict = verify(&evidence, &roots, &policy, case.at());
        assert_eq!(
            failed(&verdict),
            *want,
            "{attack}:\n{}",
            render_text(&verdict, None)
        );
        assert_eq!(verdict.accepted(), want.is_empty(), "{attack}");
        // No early exit: every baseline check still ran, and the only new ones are those the
        // change configured (a generation without a floor collapses its TCB checks into one).
        let (now, before) = (names(&verdict), names(&baseline));
        for name in &before {
            let collapsed = name.starts_with("policy.reported_tcb.")
                || name.starts_with("policy.committed_tcb.");
            assert!(
                now.contains(name) || collapsed && want.contains(&"policy.processor"),
                "{attack}: {name} did not run"
            );
        }
        for name in now.iter().filter(|n| !before.contains(n)) {
            assert!(
                want.contains(&name.as_str()),
                "{attack}: unexpected check {name}"
            );
        }
    }
}

#[test]
fn setting_debug_in_a_signed_report_fails_both_the_signature_and_the_debug_check() {
    let case = Case::by_name("azure milan v3");
    let evidence = case.evidence();
    let mut bytes = evidence.report.raw().to_vec();
    bytes[0x008 + 2] |= 0x08; // POLICY bit 19
    let forged = Evidence {
        report: Report::parse(&bytes).unwrap(),
        ..evidence.clone()
    };
    let verdict = verify(&forged, &roots(), &policy_for(&case), case.at());
    assert_eq!(failed(&verdict), ["report.signature", "policy.debug"]);
    let baseline = verify(&evidence, &roots(), &policy_for(&case), case.at());
    assert_eq!(names(&verdict), names(&baseline));
}

struct Stub;
impl MeasurementAdvisor for Stub {
    fn likely_cause(&self, m: &MeasurementMismatch) -> Option<String> {
        Some(format!(
            "{} allowed, none matched {:02x}{:02x}...",
            m.allowed.len(),
            m.got[0],
            m.got[1]
        ))
    }
}

#[test]
fn a_measurement_mismatch_keeps_its_detail_for_the_likely_cause_hook() {
    let case = Case::by_name("azure milan v3");
    let mut policy = policy_for(&case);
    policy.allowed_measurements = vec![[0xAA; 48]];
    let verdict = verify(&case.evidence(), &roots(), &policy, case.at());
    let mismatch = verdict.measurement_mismatch().unwrap();
    assert_eq!(mismatch.allowed, vec![[0xAA; 48]]);
    let text = render_text(&verdict, Some(&Stub));
    assert!(
        text.contains("FAIL policy.measurement: expected aaaa"),
        "{text}"
    );
    assert!(
        text.contains("     likely cause: 1 allowed, none matched 5b0c..."),
        "{text}"
    );
    assert!(text.contains("\nREJECTED: 1 of "), "{text}");
    assert!(!render_text(&verdict, None).contains("likely cause"));
}
