//! No parser panics: every truncation of every real input, then seeded random mutations, then
//! random bytes, through every parser and the checks behind it. (cargo-fuzz targets for the same
//! entry points are in fuzz/.) Mutation counts are kept modest because RSA verification in an
//! unoptimised build costs ~2 ms per quote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_vtpm::eventlog::EventLog;
use coffer_vtpm::pe::{authenticode_sha256, sections};
use coffer_vtpm::predict::UkiComponents;
use coffer_vtpm::tpm::{alg, Attest, Signature};
use coffer_vtpm::{verify_azure_vtpm, verify_quote, AkPublicKey, HclReport, PcrPins, Quote};
use common::{hammer, testdata, testdata_str, Rng};

fn pins() -> PcrPins {
    PcrPins::new().pin_zero(11).unwrap()
}

fn hcl_all(bytes: &[u8], quote: &Quote) {
    if let Ok(report) = HclReport::parse(bytes) {
        let _ = report.check_binding();
        let _ = report.claims().map(|c| c.user_data_bytes());
        let _ = report.ak_public_key();
        let _ = report.snp_report();
        let _ = verify_azure_vtpm(&report, quote, b"challenge", &pins());
    }
}

fn quote_all(bytes: &[u8], ak: &AkPublicKey) {
    if let Ok(quote) = Quote::parse_az_cvm_vtpm(bytes) {
        let v = verify_quote(ak, &quote, b"challenge", &pins());
        let _ = v.to_string();
        let _ = quote.pcrs();
    }
}

fn log_all(bytes: &[u8]) {
    if let Ok(log) = EventLog::parse(bytes) {
        for bank in [alg::SHA1, alg::SHA256, alg::SHA384, alg::SHA512] {
            let _ = log.replay(bank);
        }
        let _ = coffer_vtpm::predict::boot_option_retries_in_log(&log);
    }
}

fn pe_all(bytes: &[u8]) {
    let _ = authenticode_sha256(bytes);
    if let Ok(table) = sections(bytes) {
        for s in &table {
            let _ = s.loaded();
        }
    }
    let _ = UkiComponents::from_uki(bytes);
}

#[test]
fn hcl_reports_never_panic() {
    let quote = Quote::parse_az_cvm_vtpm(&testdata("azure/quote.bin")).unwrap();
    for (seed, file) in [
        (1, "azure/hcl-report-snp.bin"),
        (2, "azure/hcl-report-tdx.bin"),
    ] {
        hammer(&testdata(file), 1000, seed, |b| hcl_all(b, &quote));
    }
}

#[test]
fn quotes_never_panic() {
    let ak = AkPublicKey::from_spki_pem(&testdata_str("azure/akpub.pem")).unwrap();
    let bytes = testdata("azure/quote.bin");
    hammer(&bytes, 1000, 3, |b| quote_all(b, &ak));

    // The TPM structures on their own.
    let quote = Quote::parse_az_cvm_vtpm(&bytes).unwrap();
    hammer(quote.attest_bytes(), 5000, 4, |b| {
        let _ = Attest::parse(b);
        let _ = Attest::peek_magic_and_type(b);
    });
    let Signature::RsaSsa { sig, .. } = quote.signature() else {
        panic!()
    };
    let mut tpmt = vec![0x00, 0x14, 0x00, 0x0b, 0x01, 0x00];
    tpmt.extend(sig);
    let mut tpm2b = (quote.attest_bytes().len() as u16).to_be_bytes().to_vec();
    tpm2b.extend(quote.attest_bytes());
    hammer(&tpmt, 300, 5, |b| {
        if let Ok(q) = Quote::from_tpm2(b, &tpm2b, quote.pcr_values().to_vec()) {
            let _ = verify_quote(&ak, &q, b"challenge", &pins());
        }
    });
    hammer(&tpm2b, 300, 6, |b| {
        if let Ok(q) = Quote::from_tpm2(&tpmt, b, quote.pcr_values().to_vec()) {
            let _ = verify_quote(&ak, &q, b"challenge", &pins());
        }
    });
}

#[test]
fn event_logs_never_panic() {
    for (seed, file) in [
        (7, "pcr-qemu/eventlog-nosb.bin"),
        (8, "pcr-qemu/eventlog-sb.bin"),
        (9, "pcr-qemu/eventlog-nosb-bootorder-retry.bin"),
    ] {
        hammer(&testdata(file), 400, seed, log_all);
    }
}

#[test]
fn pe_images_never_panic() {
    hammer(&testdata("pe/uki-signed.efi"), 1500, 10, pe_all);
}

#[test]
fn random_bytes_never_panic() {
    let ak = AkPublicKey::from_spki_pem(&testdata_str("azure/akpub.pem")).unwrap();
    let quote = Quote::parse_az_cvm_vtpm(&testdata("azure/quote.bin")).unwrap();
    let mut rng = Rng::new(11);
    for _ in 0..2000 {
        let len = rng.below(3000);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Sometimes start with a valid magic so the parsers get past their first check.
        match rng.below(4) {
            0 if len >= 4 => bytes[..4].copy_from_slice(b"HCLA"),
            1 if len >= 2 => bytes[..2].copy_from_slice(b"MZ"),
            _ => {}
        }
        hcl_all(&bytes, &quote);
        quote_all(&bytes, &ak);
        log_all(&bytes);
        pe_all(&bytes);
        let _ = Attest::parse(&bytes);
        let _ = Signature::parse(&bytes);
        let _ = AkPublicKey::from_spki_der(&bytes);
    }
}
