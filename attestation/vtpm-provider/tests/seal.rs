//! The vTPM sealing key against a real swtpm: the secret is sealed to PCRs 4, 9, 11 and persisted
//! at 0x8100C0FF on first use, unsealed again by a later provider, refused (and kept) once a
//! policy PCR moves, and different on another vTPM.
//!
//! Each test starts its own `swtpm socket --tpm2` (PCRs start at zero; the tests extend them as a
//! booting guest would). If the `swtpm` binary is absent the tests say so and return.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_evidence::{EvidenceError, EvidenceProvider};
use coffer_vtpm_provider::seal::{storage_primary_template, SEALED_SECRET_HANDLE, SEAL_PCRS};
use coffer_vtpm_provider::swtpm::{Swtpm, SwtpmError};
use coffer_vtpm_provider::tpm::loaded_handles;
use coffer_vtpm_provider::{AzureVtpmEvidence, AzureVtpmProvider, SealError};
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};

const CONTEXT: &[u8] = b"coffer-kms state v1";

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

/// A fresh provider instance on `tpm`, as a new process (or a reboot) would build it.
fn provider(tpm: &Swtpm) -> AzureVtpmEvidence {
    AzureVtpmEvidence::new(
        AzureVtpmProvider::new(tpm.tcti(), &[0]).unwrap(),
        Vec::new(),
    )
}

/// Boots "this image": extends each policy PCR once, as the stub and kernel would.
fn boot(tpm: &Swtpm) {
    for pcr in SEAL_PCRS {
        tpm.extend_pcr(pcr, [pcr; 32]).unwrap();
    }
}

/// The TPM name of the object at the sealed-secret handle, or `None` if there is none.
fn sealed_object_name(tpm: &Swtpm) -> Option<Vec<u8>> {
    let mut ctx = tpm.context().unwrap();
    let handle = PersistentTpmHandle::new(SEALED_SECRET_HANDLE).unwrap();
    let object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        .ok()?;
    let (_, name, _) = ctx
        .execute_without_session(|c| c.read_public(KeyHandle::from(object)))
        .unwrap();
    let mut object = object;
    ctx.tr_close(&mut object).unwrap();
    Some(name.value().to_vec())
}

fn assert_nothing_loaded(tpm: &Swtpm) {
    let loaded = loaded_handles(&tpm.tcti()).unwrap();
    assert!(loaded.is_empty(), "left in the TPM: {loaded:?}");
}

#[test]
fn the_same_vtpm_and_boot_give_the_same_key_to_a_new_provider() {
    let Some(tpm) = start_swtpm() else { return };
    boot(&tpm);
    assert_eq!(sealed_object_name(&tpm), None);

    let first = provider(&tpm).sealing_key(CONTEXT).unwrap();
    let name = sealed_object_name(&tpm).expect("the secret is persisted at 0x8100C0FF");
    assert_nothing_loaded(&tpm);

    // Another instance (a restart): unsealed, not created again.
    let again = provider(&tpm).sealing_key(CONTEXT).unwrap();
    assert_eq!(*first, *again);
    assert_eq!(sealed_object_name(&tpm), Some(name));

    let other = provider(&tpm).sealing_key(b"another context").unwrap();
    assert_ne!(*first, *other);
    assert_ne!(*first, [0u8; 32]);
    assert_nothing_loaded(&tpm);
}

#[test]
fn another_boot_chain_is_refused_by_name_and_the_secret_is_kept() {
    let Some(tpm) = start_swtpm() else { return };
    boot(&tpm);
    let key = provider(&tpm).sealing_key(CONTEXT).unwrap();
    let name = sealed_object_name(&tpm).unwrap();

    // Another kernel command line: PCR 11 moves.
    tpm.extend_pcr(11, [0xee; 32]).unwrap();
    for _ in 0..2 {
        let err = provider(&tpm).sealing_key(CONTEXT).unwrap_err();
        let EvidenceError::Refused(reason) = &err else {
            panic!("expected a refusal, got {err}");
        };
        assert_eq!(
            reason,
            "the vTPM refused to unseal the sealing secret at persistent handle 0x8100c0ff: its \
             PCR policy (sha256 PCRs 4, 9, 11) does not match this boot's PCR values (another \
             image or boot chain); no new secret was created"
        );
        // Fail closed: the old object stays, nothing new is created over it.
        assert_eq!(sealed_object_name(&tpm).as_deref(), Some(name.as_slice()));
        assert_nothing_loaded(&tpm);
    }

    // The typed error says the same.
    let err = coffer_vtpm_provider::seal::sealing_key(&tpm.tcti(), CONTEXT).unwrap_err();
    assert!(matches!(err, SealError::PolicyMismatch { .. }), "{err}");
    drop(key);
}

#[test]
fn a_pcr_outside_the_policy_does_not_change_the_key() {
    let Some(tpm) = start_swtpm() else { return };
    boot(&tpm);
    let key = provider(&tpm).sealing_key(CONTEXT).unwrap();
    // PCR 15 (the deployment) and PCR 10 (IMA) are not in the policy.
    tpm.extend_pcr(15, [0x15; 32]).unwrap();
    tpm.extend_pcr(10, [0x10; 32]).unwrap();
    assert_eq!(*key, *provider(&tpm).sealing_key(CONTEXT).unwrap());
}

#[test]
fn another_vtpm_gives_another_key() {
    let (Some(a), Some(b)) = (start_swtpm(), start_swtpm()) else {
        return;
    };
    // Same boot chain, same PCR values: only the vTPM differs.
    boot(&a);
    boot(&b);
    let ka = provider(&a).sealing_key(CONTEXT).unwrap();
    let kb = provider(&b).sealing_key(CONTEXT).unwrap();
    assert_ne!(*ka, *kb);
}

#[test]
fn another_object_at_the_handle_is_refused_and_left_alone() {
    let Some(tpm) = start_swtpm() else { return };
    // Someone else's key at 0x8100C0FF.
    let mut ctx = tpm.context().unwrap();
    let primary = ctx
        .create_primary(
            Hierarchy::Owner,
            storage_primary_template().unwrap(),
            None,
            None,
            None,
            None,
        )
        .unwrap()
        .key_handle;
    let handle = PersistentTpmHandle::new(SEALED_SECRET_HANDLE).unwrap();
    let mut persisted = ctx
        .evict_control(
            Provision::Owner,
            primary.into(),
            Persistent::Persistent(handle),
        )
        .unwrap();
    ctx.tr_close(&mut persisted).unwrap();
    ctx.flush_context(primary.into()).unwrap();
    drop(ctx);
    let name = sealed_object_name(&tpm).unwrap();

    let err = coffer_vtpm_provider::seal::sealing_key(&tpm.tcti(), CONTEXT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the object at persistent handle 0x8100c0ff is not a Coffer sealed secret: not a \
         keyedhash object"
    );
    assert!(matches!(
        provider(&tpm).sealing_key(CONTEXT),
        Err(EvidenceError::Device { .. })
    ));
    assert_eq!(sealed_object_name(&tpm), Some(name));
    assert_nothing_loaded(&tpm);
}

#[test]
fn no_debug_output_shows_the_key() {
    let Some(tpm) = start_swtpm() else { return };
    boot(&tpm);
    let provider = provider(&tpm);
    let key = provider.sealing_key(CONTEXT).unwrap();
    tpm.extend_pcr(4, [0x44; 32]).unwrap();
    let refused = provider.sealing_key(CONTEXT).unwrap_err();
    let typed = coffer_vtpm_provider::seal::sealing_key(&tpm.tcti(), CONTEXT).unwrap_err();

    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let decimal = format!("{:?}", &key[..4]); // how a byte array would print
    let decimal = decimal.trim_end_matches(']');
    for text in [
        format!("{provider:?}"),
        format!("{refused:?}"),
        format!("{refused}"),
        format!("{typed:?}"),
    ] {
        assert!(!text.contains(&hex), "{text}");
        assert!(!text.contains(decimal), "{text}");
    }
}

/// Runs Unseal on the sealed secret with a fresh policy session, after PolicyPCR over the
/// policy PCRs if `with_pcr_policy`; flushes the session.
fn unseal_with_policy_session(
    tpm: &Swtpm,
    with_pcr_policy: bool,
) -> tss_esapi::Result<tss_esapi::structures::SensitiveData> {
    use tss_esapi::constants::SessionType;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::session_handles::PolicySession;
    use tss_esapi::structures::{Digest, PcrSelectionListBuilder, PcrSlot, SymmetricDefinition};

    let mut ctx = tpm.context().unwrap();
    let handle = PersistentTpmHandle::new(SEALED_SECRET_HANDLE).unwrap();
    let mut object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        .unwrap();
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
        })
        .unwrap()
        .unwrap();
    if with_pcr_policy {
        let slots: Vec<PcrSlot> = SEAL_PCRS
            .iter()
            .map(|i| PcrSlot::try_from(1u32 << i).unwrap())
            .collect();
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .unwrap();
        ctx.execute_without_session(|c| {
            c.policy_pcr(
                PolicySession::try_from(session).unwrap(),
                Digest::default(),
                selection,
            )
        })
        .unwrap();
    }
    let result = ctx.execute_with_session(Some(session), |c| c.unseal(object));
    // A failed command leaves the session loaded; a successful one may have ended it.
    let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    ctx.tr_close(&mut object).unwrap();
    result
}

#[test]
fn the_tpm_itself_enforces_the_pcr_policy() {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
    let Some(tpm) = start_swtpm() else { return };
    boot(&tpm);
    provider(&tpm).sealing_key(CONTEXT).unwrap();

    // No password opens it (userWithAuth clear).
    let mut ctx = tpm.context().unwrap();
    let handle = PersistentTpmHandle::new(SEALED_SECRET_HANDLE).unwrap();
    let mut object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        .unwrap();
    assert!(ctx.unseal(object).is_err());
    ctx.tr_close(&mut object).unwrap();
    drop(ctx);

    // A policy session without PolicyPCR does not either; with it, this boot's values do.
    assert!(unseal_with_policy_session(&tpm, false).is_err());
    assert_eq!(unseal_with_policy_session(&tpm, true).unwrap().len(), 32);

    // After PCR 9 moves the TPM answers TPM_RC_POLICY_FAIL, whatever our own checks say.
    tpm.extend_pcr(9, [0x99; 32]).unwrap();
    let Err(tss_esapi::Error::Tss2Error(rc)) = unseal_with_policy_session(&tpm, true) else {
        panic!("the TPM unsealed after a policy PCR moved");
    };
    assert_eq!(rc.kind(), Some(Tss2ResponseCodeKind::PolicyFail), "{rc}");
    assert_nothing_loaded(&tpm);
}
