//! Full SEV-SNP report verification (AMD chain + signature + chip ID and TCB against the VCEK +
//! every policy check) with `coffer-verify`, against the `sev` crate's chain + signature verify
//! alone, on the same real Milan report, VCEK, ASK and ARK, in one run. Both include parsing the
//! report and the certificates. Prints the ratio of medians (target <= 1.2).

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_bench::summarize;
use coffer_verify::{verify, AmdRoots, Evidence, Policy, Timestamp};
use sev::certs::snp::{Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

const BATCHES: usize = 15;
const PER_BATCH: usize = 20;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attestation/verify"
    ));
    let read = |p: &str| std::fs::read(root.join(p)).with_context(|| p.to_owned());
    let report = read("testdata/trustee/test-report.bin")?;
    let vcek = read("testdata/trustee/test-vcek.der")?;
    let ask = read("roots/milan/ask.pem")?;
    let ark = read("roots/milan/ark.pem")?;

    // A policy this report satisfies, so that every check runs and passes.
    let measurement = hex::encode(&report[0x90..0xC0]);
    let policy = Policy::from_toml(&format!(
        "min_report_version = 2\nallowed_processors = [\"milan\"]\nallowed_measurements = [\"{measurement}\"]\n\
         allowed_vmpl = [0, 1, 2, 3]\nallow_smt = true\n\
         [min_tcb.milan]\nreported = {{ bl = 0, tee = 0, snp = 0, ucode = 0 }}\n\
         committed = {{ bl = 0, tee = 0, snp = 0, ucode = 0 }}\n"
    ))?;
    let roots = AmdRoots::builtin()?;
    let at = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;

    let ours = || -> anyhow::Result<bool> {
        let evidence = Evidence::parse(&report, &vcek, Some(&ask), Some(&ark))?;
        Ok(verify(&evidence, &roots, &policy, at).accepted())
    };
    let theirs = || -> anyhow::Result<bool> {
        let chain = Chain::from_pem(&ark, &ask, &pem_of_der(&vcek))?;
        let parsed = AttestationReport::from_bytes(&report)?;
        Ok((&chain, &parsed).verify().is_ok())
    };
    if !ours()? || !theirs()? {
        bail!("the report must verify with both before it is timed");
    }
    let time = |f: &dyn Fn() -> anyhow::Result<bool>| -> anyhow::Result<Vec<Duration>> {
        f()?; // warm-up
        let mut samples = Vec::new();
        for _ in 0..BATCHES {
            let started = Instant::now();
            for _ in 0..PER_BATCH {
                black_box(f()?);
            }
            samples.push(started.elapsed() / PER_BATCH as u32);
        }
        Ok(samples)
    };
    // Interleave the two so that machine drift hits both.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.extend(time(&ours)?);
        b.extend(time(&theirs)?);
    }
    let (Some(o), Some(t)) = (summarize(&a), summarize(&b)) else {
        bail!("no samples");
    };
    println!(
        "## SEV-SNP report verification, per report (Milan v2, {} batches of {PER_BATCH})",
        a.len()
    );
    println!();
    println!("| verifier | median | min | max |");
    println!("|---|---|---|---|");
    for (name, s) in [
        ("sev 8.0 (crypto_nossl): chain + signature", t),
        (
            "coffer-verify: chain + signature + dates + chip ID + TCB + policy",
            o,
        ),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |",
            s.median.as_secs_f64() * 1e3,
            s.min.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "Ratio coffer-verify / sev (median): {:.2} (target <= 1.2).",
        o.median.as_secs_f64() / t.median.as_secs_f64()
    );
    Ok(())
}

/// The sev crate's chain constructor takes PEM for all three certificates.
fn pem_of_der(der: &[u8]) -> Vec<u8> {
    use base64ct::{Base64, Encoding};
    let body = Base64::encode_string(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}
