//! The Azure vTPM evidence path against a real swtpm: provision it as a simulated Azure vTPM,
//! collect evidence with the guest-side provider, verify it with the verifiers the relying party
//! uses (coffer-vtpm for the vTPM half, coffer-verify for the SNP report in the HCL report).
//!
//! Each test starts its own `swtpm socket --tpm2` on free 127.0.0.1 ports in a temp dir and kills
//! it when done. If the `swtpm` binary is absent the tests say so and return; any other problem
//! (swtpm not starting, provisioning, collection, verification) fails them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;

use coffer_sim::SimRoot;
use coffer_verify::{verify, AmdRoots, Evidence, Policy, Timestamp, Verdict};
use coffer_vtpm::evidence::{parse_trustee_json, to_trustee_json_v2, AzureEvidence};
use coffer_vtpm::{verify_azure_vtpm, CheckId, HclReport, PcrPins};
use coffer_vtpm_provider::swtpm::{Swtpm, SwtpmError};
use coffer_vtpm_provider::{
    provision_swtpm, AzureVtpmProvider, ProviderError, Provisioned, ReportRefresh, SimPlatform,
    UserDataOutcome, AK_PERSISTENT_HANDLE, USER_DATA_NV_INDEX,
};
use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, RsaSchemeAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::structures::{RsaExponent, RsaScheme};

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const HOST_DATA: [u8; 32] = [0x11; 32];
/// What the test extends into PCR 11 (as systemd-stub would a UKI section digest).
const PCR11_EVENT: [u8; 32] = [0xab; 32];

// ---------------------------------------------------------------------------------------------
// swtpm

/// A fresh swtpm, or `None` (after saying so) when the binary is not installed.
fn start_swtpm() -> Option<Swtpm> {
    match Swtpm::start() {
        Ok(tpm) => Some(tpm),
        Err(SwtpmError::NotInstalled) => {
            eprintln!("SKIPPED: the swtpm binary is not installed (Debian: apt-get install swtpm)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// fixtures

/// One simulation root per test binary (RSA-4096 generation is slow), generated in a temp dir
/// that is removed once the root is loaded.
fn root() -> &'static SimRoot {
    static ROOT: OnceLock<SimRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        SimRoot::load_or_generate(&dir.path().join("sim")).unwrap()
    })
}

fn fresh_nonce() -> [u8; 64] {
    let mut nonce = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut nonce)
        .unwrap();
    nonce
}

fn provision(tpm: &Swtpm) -> Provisioned {
    provision_swtpm(
        &tpm.tcti(),
        root(),
        &SimPlatform::new(MEASUREMENT, HOST_DATA),
    )
    .unwrap()
}

/// Extends PCR 11 (sha256 bank) once with [`PCR11_EVENT`]; returns the value it then holds.
fn extend_pcr11(tpm: &Swtpm) -> [u8; 32] {
    tpm.extend_pcr(11, PCR11_EVENT).unwrap()
}

/// PCR pins for a fresh swtpm after `extend_pcr11`: 11 extended once, 4/9/12/13 never extended,
/// 17 at its locality-4 reset value (all ones).
fn pins(pcr11: [u8; 32]) -> PcrPins {
    PcrPins::new()
        .pin(11, [pcr11])
        .unwrap()
        .pin_zero(4)
        .unwrap()
        .pin_zero(9)
        .unwrap()
        .pin_zero(12)
        .unwrap()
        .pin_zero(13)
        .unwrap()
        .pin(17, [[0xff; 32]])
        .unwrap()
}

fn sim_roots() -> AmdRoots {
    AmdRoots::builtin()
        .unwrap()
        .with_simulation_root(root().ark_der(), root().ask_der())
        .unwrap()
}

/// The SNP policy for the report inside the HCL report: the measurement, host data and the
/// claims binding pinned. `trust_root` is "simulation" or "amd".
fn snp_policy(trust_root: &str, report_data: &[u8; 64]) -> Policy {
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
        host = hex::encode(HOST_DATA),
        rd = hex::encode(report_data),
        bl = t.bl,
        tee = t.tee,
        snp = t.snp,
        ucode = t.ucode,
    ))
    .unwrap()
}

/// The SNP half: the report inside the HCL report against the sim roots and a policy.
fn verify_snp(evidence: &AzureEvidence, trust_root: &str) -> Verdict {
    let hcl = HclReport::parse(&evidence.hcl_report).unwrap();
    let snp = Evidence::parse(hcl.snp_report().unwrap(), &evidence.vcek, None, None).unwrap();
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&hcl.claims_sha256());
    verify(
        &snp,
        &sim_roots(),
        &snp_policy(trust_root, &report_data),
        Timestamp::now().unwrap(),
    )
}

fn failed_snp(verdict: &Verdict) -> Vec<String> {
    verdict
        .checks()
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.id.name())
        .collect()
}

/// Provisioned swtpm, PCR 11 extended, evidence collected for a fresh nonce.
struct Run {
    tpm: Swtpm,
    provisioned: Provisioned,
    pcr11: [u8; 32],
    nonce: [u8; 64],
    provider: AzureVtpmProvider,
    evidence: AzureEvidence,
    user_data: UserDataOutcome,
}

fn run() -> Option<Run> {
    let tpm = start_swtpm()?;
    let provisioned = provision(&tpm);
    let pcr11 = extend_pcr11(&tpm);
    let nonce = fresh_nonce();
    let provider = AzureVtpmProvider::new(tpm.tcti(), &(0..24).collect::<Vec<u8>>())
        .unwrap()
        .with_refresh(ReportRefresh::WriteNonce {
            wait: Duration::ZERO,
        });
    let collected = provider.collect(&nonce, root().vcek_der()).unwrap();
    Some(Run {
        tpm,
        provisioned,
        pcr11,
        nonce,
        provider,
        evidence: collected.evidence,
        user_data: collected.user_data,
    })
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn evidence_from_a_provisioned_swtpm_verifies_end_to_end() {
    let Some(run) = run() else { return };

    // What the provider read is what was provisioned (NV padding included).
    assert_eq!(run.evidence.hcl_report, run.provisioned.hcl_report);
    assert_eq!(run.evidence.hcl_report.len(), run.provisioned.nv_size);
    assert!(run.provisioned.nv_size <= coffer_vtpm_provider::SWTPM_NV_INDEX_MAX);
    assert_eq!(run.evidence.quote.pcr_values().len(), 24);
    assert_eq!(run.user_data, UserDataOutcome::Written { defined: true });

    // Through the Trustee v2 JSON and back, as a relying party would receive it.
    let json = to_trustee_json_v2(&run.evidence).unwrap();
    let received = parse_trustee_json(json.as_bytes()).unwrap();
    assert_eq!(received.hcl_report, run.evidence.hcl_report);
    assert_eq!(received.vcek, run.evidence.vcek);
    assert_eq!(received.quote, run.evidence.quote);

    // vTPM half: binding, AK, quote signature, nonce, PCR digest, and every pin.
    let hcl = HclReport::parse(&received.hcl_report).unwrap();
    assert_eq!(
        hcl.ak_public_key().unwrap().modulus(),
        run.provisioned.ak_modulus
    );
    let vtpm = verify_azure_vtpm(&hcl, &received.quote, &run.nonce, &pins(run.pcr11));
    assert!(vtpm.passed(), "{vtpm}");
    for id in [
        CheckId::HclClaimsHash,
        CheckId::HclReportDataTail,
        CheckId::HclAkPub,
        CheckId::QuoteSignature,
        CheckId::QuoteNonce,
        CheckId::QuotePcrDigest,
        CheckId::Pcr(11),
        CheckId::Pcr(17),
    ] {
        assert!(vtpm.get(id).unwrap().passed(), "{id}");
    }

    // SNP half: the report in the HCL report, sim chain, simulation policy, measurement pinned.
    let snp = verify_snp(&received, "simulation");
    assert!(snp.accepted(), "{snp:#?}");
    assert_eq!(failed_snp(&snp), Vec::<String>::new());

    // The nonce landed in NV 0x01400002 (on Azure the paravisor would now refresh the report).
    let mut ctx = run.tpm.context().unwrap();
    let user_data = tss_esapi::abstraction::nv::read_full(
        &mut ctx,
        NvAuth::Owner,
        tss_esapi::handles::NvIndexTpmHandle::new(USER_DATA_NV_INDEX).unwrap(),
    )
    .unwrap();
    assert_eq!(user_data, run.nonce);
    drop(ctx);

    // A second collection finds the index defined and just writes it.
    let again = run.provider.collect(&fresh_nonce(), b"vcek").unwrap();
    assert_eq!(again.user_data, UserDataOutcome::Written { defined: false });
}

#[test]
fn a_wrong_nonce_fails_the_quote_nonce_check_by_name() {
    let Some(run) = run() else { return };
    let hcl = HclReport::parse(&run.evidence.hcl_report).unwrap();
    let mut other = run.nonce;
    other[0] ^= 1;
    let v = verify_azure_vtpm(&hcl, &run.evidence.quote, &other, &pins(run.pcr11));
    assert!(!v.passed());
    assert_eq!(v.failed_ids(), vec![CheckId::QuoteNonce]);
    let failure = v.get(CheckId::QuoteNonce).unwrap().to_string();
    assert!(failure.starts_with("quote.nonce: FAILED"), "{failure}");
    assert!(failure.contains(&hex::encode(run.nonce)), "{failure}");
}

#[test]
fn the_same_evidence_under_an_amd_policy_is_rejected_by_chain_trust_root() {
    let Some(run) = run() else { return };
    assert!(verify_snp(&run.evidence, "simulation").accepted());
    let verdict = verify_snp(&run.evidence, "amd");
    assert!(!verdict.accepted());
    assert_eq!(failed_snp(&verdict), ["chain.trust_root"]);
    let c = verdict
        .checks()
        .iter()
        .find(|c| c.id.name() == "chain.trust_root")
        .unwrap();
    assert!(c.got.contains("Coffer simulation root"), "{c:?}");
}

#[test]
fn nothing_transient_is_left_in_the_tpm_after_provisioning_and_collection() {
    let Some(run) = run() else { return };
    let left = run.provider.loaded_handles().unwrap();
    assert!(
        left.transient.is_empty(),
        "transient objects left: {left:x?}"
    );
    assert!(left.sessions.is_empty(), "sessions left: {left:x?}");

    // Also straight from tss-esapi (getcap handles-transient), not through the crate.
    let mut ctx = run.tpm.context().unwrap();
    let (data, _) = ctx
        .execute_without_session(|c| {
            c.get_capability(
                tss_esapi::constants::CapabilityType::Handles,
                0x8000_0000,
                64,
            )
        })
        .unwrap();
    let tss_esapi::structures::CapabilityData::Handles(list) = data else {
        panic!("not a handle list: {data:?}")
    };
    assert!(list.is_empty(), "{list:?}");
}

#[test]
fn an_ak_that_is_not_the_hcl_reports_is_refused_and_nothing_is_left_behind() {
    let Some(tpm) = start_swtpm() else { return };
    provision(&tpm);
    // Replace the AK at 0x81000003 by another signing key: the HCL report no longer names it.
    {
        let mut ctx = tpm.context().unwrap();
        let persistent =
            Persistent::Persistent(PersistentTpmHandle::new(AK_PERSISTENT_HANDLE).unwrap());
        let old = ctx
            .execute_without_session(|c| {
                c.tr_from_tpm_public(TpmHandle::Persistent(
                    PersistentTpmHandle::new(AK_PERSISTENT_HANDLE).unwrap(),
                ))
            })
            .unwrap();
        ctx.evict_control(Provision::Owner, old, persistent)
            .unwrap();
        let template = tss_esapi::utils::create_unrestricted_signing_rsa_public(
            RsaScheme::create(RsaSchemeAlgorithm::RsaSsa, Some(HashingAlgorithm::Sha256)).unwrap(),
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )
        .unwrap();
        let key = ctx
            .create_primary(Hierarchy::Owner, template, None, None, None, None)
            .unwrap()
            .key_handle;
        let mut new = ctx
            .evict_control(Provision::Owner, key.into(), persistent)
            .unwrap();
        ctx.flush_context(key.into()).unwrap();
        ctx.tr_close(&mut new).unwrap();
    }
    let provider = AzureVtpmProvider::new(tpm.tcti(), &[0, 11]).unwrap();
    let err = provider.collect(&fresh_nonce(), b"").unwrap_err();
    assert!(matches!(err, ProviderError::AkMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("is not the HCL report's HCLAkPub"),
        "{err}"
    );
    assert!(provider.loaded_handles().unwrap().is_empty());
}

#[test]
fn an_unprovisioned_tpm_is_a_named_error() {
    let Some(tpm) = start_swtpm() else { return };
    let provider = AzureVtpmProvider::new(tpm.tcti(), &[0]).unwrap();
    let err = provider.collect(&fresh_nonce(), b"").unwrap_err();
    assert!(matches!(err, ProviderError::NoHclReport), "{err}");
    assert_eq!(
        err.to_string(),
        "NV index 0x01400001 (the HCL report) is not defined in this TPM"
    );
    // Nothing reachable on the port: a connection error, named, not a panic.
    let closed = format!("swtpm:host=127.0.0.1,port={}", free_port());
    let err = AzureVtpmProvider::new(closed, &[0])
        .unwrap()
        .collect(&fresh_nonce(), b"")
        .unwrap_err();
    assert!(matches!(err, ProviderError::Connect { .. }), "{err}");
}

#[test]
fn the_evidence_provider_trait_gives_the_same_verifiable_evidence() {
    use coffer_evidence::{Evidence, EvidenceProvider};
    let Some(tpm) = start_swtpm() else { return };
    let _provisioned = provision(&tpm);
    let pcr11 = extend_pcr11(&tpm);
    let provider = coffer_vtpm_provider::AzureVtpmEvidence::new(
        AzureVtpmProvider::new(tpm.tcti(), &(0..24).collect::<Vec<u8>>()).unwrap(),
        root().vcek_der().to_vec(),
    );
    assert_eq!(provider.platform(), coffer_evidence::Platform::Azure);
    let nonce = fresh_nonce();
    let Evidence::AzureVtpm { document } = provider.attest(&nonce).unwrap() else {
        panic!("an Azure provider must give Azure evidence");
    };
    let received = parse_trustee_json(&document).unwrap();
    let hcl = HclReport::parse(&received.hcl_report).unwrap();
    let vtpm = verify_azure_vtpm(&hcl, &received.quote, &nonce, &pins(pcr11));
    assert!(vtpm.passed(), "{vtpm}");
    assert!(verify_snp(&received, "simulation").accepted());
    // The same provider seals too (tests/seal.rs covers the sealing key in detail).
    let key = provider.sealing_key(b"ctx").unwrap();
    assert_eq!(*key, *provider.sealing_key(b"ctx").unwrap());
}
