//! Real Azure evidence (testdata/azure, see PROVENANCE.md) and a synthetic end-to-end chain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_vtpm::hcl::{HardwareReportType, HclError, CLAIMS_OFFSET};
use coffer_vtpm::tpm::{alg, Attest, Signature, TPM_GENERATED_VALUE};
use coffer_vtpm::{
    verify_azure_vtpm, verify_quote, AkPublicKey, CheckId, HclReport, Outcome, PcrPins, Quote,
};
use common::{h32, testdata, testdata_str};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};

const NONCE: &[u8] = b"challenge";
/// PCR values of testdata/azure/quote.bin (an Ubuntu grub/shim CVM), by index.
const PCR4: &str = "1d3b1cb141906329dd8ab09584214a88dffaf839ed14c8ef677a6bcf6ea27a02";
const PCR9: &str = "72eb9de18027746fae973c2853114928fe780807cebc932abfb0e6116d148f47";

fn snp_report() -> Vec<u8> {
    testdata("azure/hcl-report-snp.bin")
}

fn real_quote() -> Quote {
    Quote::parse_az_cvm_vtpm(&testdata("azure/quote.bin")).unwrap()
}

fn real_ak() -> AkPublicKey {
    AkPublicKey::from_spki_pem(&testdata_str("azure/akpub.pem")).unwrap()
}

/// Pins the real quote satisfies: PCR 4 and 9 as quoted, 8/11/13 zero.
fn real_pins() -> PcrPins {
    PcrPins::new()
        .pin(4, [h32(PCR4)])
        .unwrap()
        .pin(9, [[7; 32], h32(PCR9)])
        .unwrap()
        .pin_zero(8)
        .unwrap()
        .pin_zero(11)
        .unwrap()
        .pin_zero(13)
        .unwrap()
}

#[test]
fn the_real_snp_hcl_report_parses_and_binds_its_claims() {
    let report = HclReport::parse(&snp_report()).unwrap();
    assert_eq!(report.report_type(), HardwareReportType::Snp);
    assert_eq!(report.header().version, 1);
    let snp = report.snp_report().unwrap();
    assert_eq!(snp.len(), 1184);
    assert_eq!(&snp[..], &snp_report()[32..1216]);
    // SNP report version 2, VMPL 0, policy 0x3001f (shared/platform/azure-vtpm.md §1.3).
    assert_eq!(u32::from_le_bytes(snp[0..4].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(snp[8..16].try_into().unwrap()), 0x3001f);
    assert_eq!(u32::from_le_bytes(snp[0x30..0x34].try_into().unwrap()), 0);
    assert_eq!(report.claims_json().len(), 583);
    assert_eq!(&report.report_data()[..32], &report.claims_sha256());

    let binding = report.check_binding();
    assert!(binding.passed(), "{binding}");
    assert_eq!(binding.checks().len(), 2);

    let claims = report.claims().unwrap();
    let vm = claims.vm_configuration.as_ref().unwrap();
    assert_eq!(vm.secure_boot, Some(true));
    assert_eq!(vm.current_time, Some(1_678_652_405));
    assert_eq!(claims.user_data_bytes().unwrap(), None);
    let jwk = claims.ak_jwk().unwrap();
    assert_eq!(jwk.key_ops, vec!["encrypt".to_string()]);
    let ak = report.ak_public_key().unwrap();
    assert_eq!(ak.bits(), 2048);
    // The JWK's n, decoded, is the AK modulus ("tYVBpgABBOed..." in base64url).
    assert_eq!(&ak.modulus()[..6], &[0xb5, 0x85, 0x41, 0xa6, 0x00, 0x01]);
}

#[test]
fn the_real_tdx_hcl_report_binds_its_claims_too() {
    let report = HclReport::parse(&testdata("azure/hcl-report-tdx.bin")).unwrap();
    assert_eq!(report.report_type(), HardwareReportType::Tdx);
    assert!(report.snp_report().is_none());
    assert!(report.check_binding().passed());
    let claims = report.claims().unwrap();
    assert_eq!(claims.keys.len(), 2);
    assert_eq!(claims.user_data_bytes().unwrap(), Some([0; 64]));
    report.ak_public_key().unwrap();
}

#[test]
fn one_changed_claims_byte_fails_the_report_data_binding_by_name() {
    let mut bytes = snp_report();
    // "vmUniqueId":"BAEFD3E1-..." -> "CAEFD3E1-...": still valid JSON, still a valid AK.
    let json = &bytes[CLAIMS_OFFSET..CLAIMS_OFFSET + 583];
    let at = CLAIMS_OFFSET + json.windows(8).position(|w| w == b"BAEFD3E1").unwrap();
    bytes[at] = b'C';
    let report = HclReport::parse(&bytes).unwrap();
    let v = report.check_binding();
    assert_eq!(v.failed_ids(), vec![CheckId::HclClaimsHash]);
    let Outcome::Failed { expected, got } = &v.get(CheckId::HclClaimsHash).unwrap().outcome else {
        panic!()
    };
    assert_eq!(got, &hex::encode(&report.report_data()[..32]));
    assert_eq!(expected, &hex::encode(report.claims_sha256()));

    // A non-zero report_data tail is its own named failure.
    let mut bytes = snp_report();
    bytes[32 + 0x50 + 40] ^= 1;
    let v = HclReport::parse(&bytes).unwrap().check_binding();
    assert_eq!(v.failed_ids(), vec![CheckId::HclReportDataTail]);

    // Every single-bit flip anywhere in the claims is caught (or makes the report unparseable).
    for i in CLAIMS_OFFSET..CLAIMS_OFFSET + 583 {
        let mut bytes = snp_report();
        bytes[i] ^= 0x20;
        let v = HclReport::parse(&bytes).unwrap().check_binding();
        assert_eq!(v.failed_ids(), vec![CheckId::HclClaimsHash], "byte {i}");
    }
}

#[test]
fn hcl_structure_errors_are_named() {
    let mut bytes = snp_report();
    bytes[0] = b'X';
    assert!(matches!(
        HclReport::parse(&bytes),
        Err(HclError::Signature { .. })
    ));
    let mut bytes = snp_report();
    bytes[1228] = 2; // hash_type SHA-384
    assert!(matches!(
        HclReport::parse(&bytes),
        Err(HclError::HashType { got: 2 })
    ));
    let mut bytes = snp_report();
    bytes[1224] = 3;
    assert!(matches!(
        HclReport::parse(&bytes),
        Err(HclError::ReportType { got: 3 })
    ));
    let mut bytes = snp_report();
    bytes[1216] += 1; // data_size
    assert!(matches!(
        HclReport::parse(&bytes),
        Err(HclError::RuntimeDataSize { .. })
    ));
    assert!(matches!(
        HclReport::parse(&snp_report()[..1500]),
        Err(HclError::Truncated(t)) if t.field == "runtime claims"
    ));
}

#[test]
fn the_real_quote_verifies_with_akpub_nonce_and_pcrs() {
    let quote = real_quote();
    assert_eq!(quote.pcr_values().len(), 24);
    let attest = quote.attest().unwrap();
    assert_eq!(attest.magic, TPM_GENERATED_VALUE);
    assert_eq!(attest.extra_data, NONCE);
    assert_eq!(attest.firmware_version, 0x2020_0312_0012_0003);
    assert_eq!(attest.quote.pcr_select.len(), 1);
    assert_eq!(attest.quote.pcr_select[0].hash, alg::SHA256);
    assert_eq!(
        attest.quote.pcr_select[0].indices(),
        (0..24).collect::<Vec<u8>>()
    );

    let v = verify_quote(&real_ak(), &quote, NONCE, &real_pins());
    assert!(v.passed(), "{v}");
    // 7 quote checks + pins_present + 5 pins.
    assert_eq!(v.checks().len(), 13);
    assert_eq!(quote.pcrs().unwrap()[&4], h32(PCR4));
}

#[test]
fn quote_tampering_fails_the_right_named_check() {
    let ak = real_ak();
    let pins = real_pins();
    let check = |quote: &Quote, nonce: &[u8], pins: &PcrPins| {
        verify_quote(&ak, quote, nonce, pins).failed_ids()
    };

    // Wrong nonce.
    assert_eq!(
        check(&real_quote(), b"challengf", &pins),
        vec![CheckId::QuoteNonce]
    );
    // An empty nonce is never accepted.
    assert_eq!(check(&real_quote(), b"", &pins), vec![CheckId::QuoteNonce]);

    // One flipped signature bit.
    let bytes = testdata("azure/quote.bin");
    for bit in [0, 777, 2047] {
        let mut b = bytes.clone();
        b[8 + bit / 8] ^= 1 << (bit % 8);
        let q = Quote::parse_az_cvm_vtpm(&b).unwrap();
        assert_eq!(
            check(&q, NONCE, &pins),
            vec![CheckId::QuoteSignature],
            "bit {bit}"
        );
    }

    // One flipped attest bit: in the clock (only the signature notices), in the nonce, in the
    // magic, in the PCR digest.
    let attest_at = 8 + 256 + 8;
    for (offset, extra) in [
        (55, None),
        (47, Some(CheckId::QuoteNonce)),
        (0, Some(CheckId::QuoteMagic)),
        (100, Some(CheckId::QuotePcrDigest)),
    ] {
        let mut b = bytes.clone();
        b[attest_at + offset] ^= 0x10;
        let q = Quote::parse_az_cvm_vtpm(&b).unwrap();
        let mut want = vec![CheckId::QuoteSignature];
        want.extend(extra);
        assert_eq!(check(&q, NONCE, &pins), want, "attest byte {offset}");
    }
    // A flipped type makes the body unparseable: every dependent check fails, named.
    let mut b = bytes.clone();
    b[attest_at + 5] ^= 1;
    let q = Quote::parse_az_cvm_vtpm(&b).unwrap();
    let failed = check(&q, NONCE, &pins);
    for id in [
        CheckId::QuoteSignature,
        CheckId::QuoteType,
        CheckId::QuoteAttestParse,
        CheckId::QuoteNonce,
        CheckId::QuotePcrDigest,
    ] {
        assert!(failed.contains(&id), "{id} not in {failed:?}");
    }

    // A changed PCR value: the digest no longer matches, and the pin on it fails too.
    let mut q = real_quote();
    let mut values = q.pcr_values().to_vec();
    values[4][0] ^= 1;
    q = Quote::from_parts(
        q.signature().clone(),
        q.attest_bytes().to_vec(),
        values.clone(),
    );
    assert_eq!(
        check(&q, NONCE, &pins),
        vec![CheckId::QuotePcrDigest, CheckId::Pcr(4)]
    );
    // An unpinned PCR changed: only the digest catches it.
    values[4][0] ^= 1;
    values[10][0] ^= 1;
    let q = Quote::from_parts(
        q.signature().clone(),
        q.attest_bytes().to_vec(),
        values.clone(),
    );
    assert_eq!(check(&q, NONCE, &pins), vec![CheckId::QuotePcrDigest]);
    // A missing PCR value.
    values[10][0] ^= 1;
    values.pop();
    let q = Quote::from_parts(q.signature().clone(), q.attest_bytes().to_vec(), values);
    assert_eq!(
        check(&q, NONCE, &pins),
        vec![CheckId::QuotePcrSelection, CheckId::QuotePcrDigest]
    );

    // Pin mismatch: expected vs got reported under pcr.9.
    let strict = PcrPins::new()
        .pin(9, [[7; 32]])
        .unwrap()
        .pin_zero(12)
        .unwrap();
    let v = verify_quote(&ak, &real_quote(), NONCE, &strict);
    assert_eq!(v.failed_ids(), vec![CheckId::Pcr(9), CheckId::Pcr(12)]);
    let failure = v.get(CheckId::Pcr(9)).unwrap().to_string();
    assert_eq!(
        failure,
        format!(
            "pcr.9: FAILED (expected one of [{}], got {PCR9})",
            hex::encode([7; 32])
        )
    );
    // No pins at all is a failure, not a pass.
    assert_eq!(
        check(&real_quote(), NONCE, &PcrPins::new()),
        vec![CheckId::PcrPinsPresent]
    );

    // A different AK (the HCL sample's, from another VM) does not verify this quote.
    let other = HclReport::parse(&snp_report())
        .unwrap()
        .ak_public_key()
        .unwrap();
    assert_eq!(
        verify_quote(&other, &real_quote(), NONCE, &pins).failed_ids(),
        vec![CheckId::QuoteSignature]
    );
}

#[test]
fn a_tpmt_signature_and_tpm2b_attest_pair_verifies_too() {
    let q = real_quote();
    let Signature::RsaSsa { sig, .. } = q.signature() else {
        panic!()
    };
    let mut tpmt = vec![0x00, 0x14, 0x00, 0x0b];
    tpmt.extend((sig.len() as u16).to_be_bytes());
    tpmt.extend(sig);
    let mut tpm2b = (q.attest_bytes().len() as u16).to_be_bytes().to_vec();
    tpm2b.extend(q.attest_bytes());
    let pair = Quote::from_tpm2(&tpmt, &tpm2b, q.pcr_values().to_vec()).unwrap();
    assert!(verify_quote(&real_ak(), &pair, NONCE, &real_pins()).passed());

    // RSAPSS or SHA-1 signatures are refused by name.
    tpmt[1] = 0x16;
    let pss = Quote::from_tpm2(&tpmt, &tpm2b, q.pcr_values().to_vec()).unwrap();
    assert_eq!(
        verify_quote(&real_ak(), &pss, NONCE, &real_pins()).failed_ids(),
        vec![CheckId::QuoteSignature]
    );
}

// ---- Synthetic end-to-end chain: an HCL report whose claims carry a test AK (private key in
// testdata/synthetic), and a quote signed by it. The SNP report signature is not valid (and not
// this crate's business); everything this crate checks is real.

fn test_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(&testdata_str("synthetic/ak-test-key.pem")).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(bytes)
}

fn synthetic_hcl(key: &RsaPrivateKey) -> Vec<u8> {
    let claims = format!(
        r#"{{"keys":[{{"kid":"HCLAkPub","key_ops":["sign"],"kty":"RSA","e":"{}","n":"{}"}}],"vm-configuration":{{"console-enabled":false,"secure-boot":false,"tpm-enabled":true,"tpm-persisted":true,"vmUniqueId":"00000000-0000-0000-0000-000000000000"}},"user-data":"{}"}}"#,
        b64url(&key.e().to_bytes_be()),
        b64url(&key.n().to_bytes_be()),
        "00".repeat(64)
    );
    let mut bytes = snp_report()[..CLAIMS_OFFSET].to_vec();
    bytes[1216..1220].copy_from_slice(&(claims.len() as u32 + 20).to_le_bytes());
    bytes[1232..1236].copy_from_slice(&(claims.len() as u32).to_le_bytes());
    bytes.extend(claims.as_bytes());
    bytes.resize(2048, 0); // swtpm's largest NV index
    let hash = Sha256::digest(claims.as_bytes());
    bytes[32 + 0x50..32 + 0x70].copy_from_slice(&hash);
    bytes
}

fn synthetic_quote(key: &RsaPrivateKey, nonce: &[u8], pcrs: &[[u8; 32]]) -> Quote {
    // TPMS_ATTEST: magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion,
    // TPML_PCR_SELECTION (sha256: PCR 4, 9, 11), pcrDigest.
    let mut a = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
    a.extend(0x8018u16.to_be_bytes());
    a.extend([0x00, 0x02, 0x00, 0x0b]);
    a.extend((nonce.len() as u16).to_be_bytes());
    a.extend(nonce);
    a.extend([0u8; 17]);
    a.extend(1u64.to_be_bytes());
    a.extend([0, 0, 0, 1, 0x00, 0x0b, 3, 0b0001_0000, 0b0000_1010, 0]);
    let mut h = Sha256::new();
    for p in pcrs {
        h.update(p);
    }
    a.extend(32u16.to_be_bytes());
    a.extend(h.finalize());
    Attest::parse(&a).unwrap();
    let sig = key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&a))
        .unwrap();
    Quote::from_parts(
        Signature::RsaSsa {
            hash: alg::SHA256,
            sig,
        },
        a,
        pcrs.to_vec(),
    )
}

#[test]
fn a_synthetic_chain_verifies_end_to_end_with_the_ak_from_the_claims() {
    let key = test_key();
    let hcl = HclReport::parse(&synthetic_hcl(&key)).unwrap();
    assert_eq!(
        hcl.ak_public_key().unwrap(),
        AkPublicKey::from_spki_pem(&testdata_str("synthetic/ak-test-pub.pem")).unwrap()
    );
    let pcrs = [[4; 32], [9; 32], [11; 32]];
    let pins = PcrPins::new()
        .pin(4, [[4; 32]])
        .unwrap()
        .pin(9, [[9; 32]])
        .unwrap()
        .pin(11, [[11; 32]])
        .unwrap();
    let nonce = b"fresh verifier nonce";
    let quote = synthetic_quote(&key, nonce, &pcrs);
    let v = verify_azure_vtpm(&hcl, &quote, nonce, &pins);
    assert!(v.passed(), "{v}");
    assert_eq!(v.checks().len(), 2 + 1 + 7 + 1 + 3);

    // The real quote is signed by another AK: the chain breaks at the signature.
    let v = verify_azure_vtpm(&hcl, &real_quote(), NONCE, &real_pins());
    assert_eq!(v.failed_ids(), vec![CheckId::QuoteSignature]);

    // Claims changed after the fact: the binding fails by name, the rest still runs.
    let mut bytes = synthetic_hcl(&key);
    let at = bytes.windows(4).position(|w| w == b"true").unwrap();
    bytes[at..at + 4].copy_from_slice(b"TRUE");
    let tampered = HclReport::parse(&bytes).unwrap();
    let v = verify_azure_vtpm(&tampered, &quote, nonce, &pins);
    assert_eq!(
        v.failed_ids(),
        vec![
            CheckId::HclClaimsHash,
            CheckId::HclAkPub,
            CheckId::QuoteSignature
        ]
    );

    // Claims without an AK: named, and the signature cannot be checked.
    let mut bytes = synthetic_hcl(&key);
    let at = bytes.windows(8).position(|w| w == b"HCLAkPub").unwrap();
    bytes[at + 3] = b'E';
    let v = verify_azure_vtpm(&HclReport::parse(&bytes).unwrap(), &quote, nonce, &pins);
    assert_eq!(
        v.failed_ids(),
        vec![
            CheckId::HclClaimsHash,
            CheckId::HclAkPub,
            CheckId::QuoteSignature
        ]
    );
}
