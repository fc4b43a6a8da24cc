//! The attestation report parser, then every check, on arbitrary bytes: errors are fine, panics
//! are bugs. The VCEK is a real one, so inputs that parse reach the signature and TCB checks.
#![no_main]

use coffer_verify::explain::{render_report, render_text, ReportSummary};
use coffer_verify::{verify_authenticity_only, AmdRoots, Certificate, Evidence, Report, Timestamp};
use libfuzzer_sys::fuzz_target;

const VCEK: &[u8] = include_bytes!("../../attestation/verify/testdata/trustee/test-vcek.der");

fuzz_target!(|data: &[u8]| {
    let Ok(report) = Report::parse(data) else { return };
    let _ = report.nonzero_reserved();
    let (Ok(vek), Ok(roots), Ok(at)) = (
        Certificate::from_der(VCEK),
        AmdRoots::builtin(),
        Timestamp::from_unix_seconds(1_800_000_000),
    ) else {
        return;
    };
    let evidence = Evidence { report, vek, ask: None, ark: None };
    let verdict = verify_authenticity_only(&evidence, &roots, at);
    let _ = render_text(&verdict, None);
    let _ = render_report(&ReportSummary::new(&evidence.report, verdict.generation()));
});
