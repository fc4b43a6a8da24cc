//! No input makes any parser (or the verifier) panic: truncations, random bytes and random
//! mutations of real evidence. A deterministic stand-in for the fuzz targets in fuzz/.

// Tests fail by panicking (helpers outside #[test] included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_verify::{
    verify, verify_authenticity_only, Certificate, Evidence, Policy, Report, Timestamp,
};
use common::{load, policy_for, roots, Case, CASES};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(8) {
            match self.below(4) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = self.next() as u8;
                }
                2 => out.truncate(self.below(out.len() + 1)),
                _ => {
                    let i = self.below(out.len() + 1);
                    out.insert(i, self.next() as u8);
                }
            }
        }
        out
    }
}

/// Everything a parsed certificate offers, exercised.
fn poke_cert(cert: &Certificate) {
    let _ = (
        cert.subject_cn(),
        cert.issuer_cn(),
        cert.subject(),
        cert.not_before(),
        cert.not_after(),
    );
    let _ = cert.vek_extensions();
    let _ = cert.p384_public_key();
    let _ = cert.verify_signed_by(cert);
}

fn all_certs() -> Vec<Vec<u8>> {
    let mut certs: Vec<Vec<u8>> = CASES.iter().map(|c| load(c.vek)).collect();
    for path in [
        "virtee-sev/vcek_turin.der",
        "trustee/test-vcek-invalid-legacy.der",
        "trustee/test-vcek-invalid-new.der",
    ] {
        certs.push(load(path));
    }
    certs.push(
        roots()
            .get(coffer_verify::Generation::Milan)
            .unwrap()
            .ark
            .der()
            .to_vec(),
    );
    certs
}

#[test]
fn truncated_reports_and_certificates_are_errors_not_panics() {
    let report = load("openanolis-trustee/turin-report.bin");
    for len in 0..report.len() {
        assert!(Report::parse(&report[..len]).is_err());
    }
    for der in all_certs() {
        for len in 0..der.len() {
            assert!(
                Certificate::from_der(&der[..len]).is_err(),
                "prefix {len} parsed"
            );
            let _ = Certificate::from_pem_or_der(&der[..len]);
        }
    }
    let pem = load("trustee/az-snp-vtpm_vcek.pem");
    for len in 0..pem.len() {
        if let Ok(certs) = Certificate::from_pem_bundle(&pem[..len]) {
            certs.iter().for_each(poke_cert);
        }
    }
}

#[test]
fn random_bytes_never_panic_any_parser() {
    let mut rng = Rng(0x5EED_0000_C0FF_EE01);
    for _ in 0..3000 {
        let len = rng.below(1500);
        let bytes = rng.bytes(len);
        let _ = Report::parse(&bytes);
        if let Ok(cert) = Certificate::from_pem_or_der(&bytes) {
            poke_cert(&cert);
        }
        let _ = Certificate::from_pem_bundle(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Policy::from_toml(&text);
        let _ = Timestamp::parse_rfc3339(&text);
    }
    // Random reports of the right size and a known version reach every field and the verifier.
    let case = Case::by_name("azure genoa v3");
    let evidence = case.evidence();
    for i in 0..200u32 {
        let mut bytes = rng.bytes(coffer_verify::report::REPORT_SIZE);
        bytes[..4].copy_from_slice(&[2u32, 3, 5][i as usize % 3].to_le_bytes());
        let report = Report::parse(&bytes).unwrap();
        let _ = report.nonzero_reserved();
        let forged = Evidence {
            report,
            ..evidence.clone()
        };
        let verdict = verify(&forged, &roots(), &policy_for(&case), case.at());
        assert!(!verdict.accepted());
    }
}

#[test]
fn mutated_real_evidence_never_panics_and_is_never_accepted_unless_unchanged() {
    let mut rng = Rng(0xD1CE_0000_0000_0042);
    let roots = roots();
    let certs = all_certs();
    for _ in 0..1500 {
        let der = &certs[rng.below(certs.len())];
        let mutated = rng.mutate(der);
        if let Ok(cert) = Certificate::from_der(&mutated) {
            poke_cert(&cert);
        }
    }
    for case in CASES {
        let report = case.report_bytes();
        let vek = load(case.vek);
        for _ in 0..12 {
            let r = rng.mutate(&report);
            let v = if rng.below(2) == 0 {
                vek.clone()
            } else {
                rng.mutate(&vek)
            };
            let Ok(evidence) = Evidence::parse(&r, &v, None, None) else {
                continue;
            };
            let verdict = verify_authenticity_only(&evidence, &roots, case.at());
            if verdict.accepted() {
                assert_eq!(
                    (r.as_slice(), v.as_slice()),
                    (report.as_slice(), vek.as_slice()),
                    "{}",
                    case.name
                );
            }
        }
    }
    let policy_text = VALID_POLICY;
    assert!(Policy::from_toml(policy_text).is_ok());
    for _ in 0..1000 {
        let _ = Policy::from_toml(&String::from_utf8_lossy(
            &rng.mutate(policy_text.as_bytes()),
        ));
    }
}

const VALID_POLICY: &str = r#"
min_report_version = 2
allowed_processors = ["milan", "turin"]
allowed_measurements = ["5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a5b0ce64a"]
allowed_vmpl = [0, 1]
allow_smt = true
allowed_cpuid = [{ family = 0x19, model = 0x01 }]
host_data = "0000000000000000000000000000000000000000000000000000000000000000"
min_guest_svn = 1
[min_tcb.milan]
reported = { bl = 3, tee = 0, snp = 8, ucode = 115 }
committed = { bl = 3, tee = 0, snp = 8, ucode = 115 }
[min_tcb.turin]
reported = { fmc = 1, bl = 3, tee = 2, snp = 5, ucode = 97 }
committed = { fmc = 1, bl = 3, tee = 2, snp = 5, ucode = 97 }
"#;
