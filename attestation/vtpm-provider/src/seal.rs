//! The vTPM sealing key: the Azure counterpart of SEV-SNP's derived key.
//!
//! On SEV-SNP the firmware derives a key from the launch measurement. On Azure the guest cannot
//! ask the secure processor (the paravisor owns it), and the launch measurement is Microsoft's,
//! not our image's: what measures our image is the vTPM's PCRs. So the key comes from a secret
//! **sealed in the vTPM to the PCR values of the pinned boot chain**:
//!
//! - **The secret**: 32 bytes from TPM2_GetRandom, kept as the sensitive data of a *sealed data
//!   object* (keyedhash, scheme null, name algorithm SHA-256) with `fixedTPM | fixedParent |
//!   noDA | adminWithPolicy` and `userWithAuth` clear: no password opens it, only a policy session
//!   whose digest equals the object's `authPolicy`.
//! - **The policy**: TPM2_PolicyPCR over the sha256-bank PCRs [`SEAL_PCRS`] (4, 9, 11: what the
//!   Azure pins cover, see `coffer_vtpm::pins`: the UKI's stub and kernel, its sections and
//!   command line), with the values they hold when the secret is created, i.e. this image's
//!   boot. A different image, kernel or command line measures different values and cannot
//!   unseal.
//! - **The parent**: a storage primary key created from a fixed template in the owner hierarchy
//!   ([`storage_primary_template`]: ECC NIST P-256, AES-128-CFB, the usual SRK attributes), so the
//!   same vTPM gives the same parent every time; it is only needed to create the object.
//! - **The handle**: the object is made persistent at [`SEALED_SECRET_HANDLE`] (0x8100C0FF, owner
//!   persistent range 0x81000000-0x817FFFFF; away from Azure's AK at 0x81000003 and the
//!   usual SRK/EK handles 0x81000001 / 0x81010001). It is a persistent object, not an NV
//!   index, so it cannot clash with the KMS's NV counter at 0x0100C0FF.
//! - **The key**: `HKDF-SHA256(ikm = secret, salt = none, info = "coffer vtpm sealing key v1" ‖
//!   context)` ([`SEALING_KEY_INFO`]).
//!
//! **First use** (nothing at the handle): compute the policy digest in a trial session with the
//! current PCR values, create the object under the primary, load it, TPM2_EvictControl it to the
//! handle, flush every transient object; then unseal it exactly as a later use does, so the first
//! key is one the policy has already been seen to release.
//!
//! **Later uses**: check that the object at the handle is a sealed data object of that shape and
//! that its `authPolicy` is the PolicyPCR digest of the *current* values; then start a policy
//! session, TPM2_PolicyPCR, TPM2_Unseal (the TPM enforces the policy; the comparison before
//! only names the failure). If the values differ, this is another image or boot chain, and the
//! answer is [`SealError::PolicyMismatch`]. **Nothing is ever created over an existing handle**:
//! replacing the object would silently lose every state sealed under the old key, so a mismatch
//! fails closed. Every session and transient object is flushed and every ESYS handle closed, on
//! every path.
//!
//! **What it is bound to:** this vTPM (the object is `fixedTPM`; its seed and persistent storage
//! are the vTPM's, kept by Azure's paravisor at VMPL0 in the VM guest state, out of the host's
//! reach) and the values of PCRs 4, 9 and 11 at first use. **What it is not:** a PCR policy does
//! not know which values are the right ones: the first boot that finds the handle empty decides.
//! Any code that runs in this guest after a boot with the same PCR values (the guest OS is
//! trusted) can unseal, and so can anyone who makes the vTPM measure those values. A new vTPM
//! (a new VM, or a VM guest state reset) has no secret: the key is new and older sealed state
//! does not open.
//!
//! **Not done:** the unseal response is not parameter-encrypted (that needs a salted session).
//! On Azure the vTPM is the paravisor's, reached through guest-private memory, so the host does
//! not see the exchange; the secret crosses only the TCTI of this guest.

use hkdf::Hkdf;
use sha2::Sha256;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::error::SealError;
use crate::tpm::{close, connect, esys_handle, exists};

/// The sha256-bank PCRs the sealed secret's policy covers: 4 (boot applications: the UKI's stub
/// and kernel), 9 (what the kernel loaded: initrd) and 11 (the UKI's sections, with systemd-stub),
/// the PCRs the Azure pins predict. Not 0-3, 5-7 (Microsoft's firmware and configuration, which
/// change under us) nor 10 (IMA).
pub const SEAL_PCRS: [u8; 3] = [4, 9, 11];

/// Persistent handle of the sealed secret, in the owner's persistent range.
pub const SEALED_SECRET_HANDLE: u32 = 0x8100_C0FF;

/// HKDF info prefix of every vTPM sealing key; the caller's context follows it.
pub const SEALING_KEY_INFO: &[u8] = b"coffer vtpm sealing key v1";

/// Size of the sealed secret.
const SECRET_LEN: usize = 32;

/// Maps a tss-esapi error to [`SealError::Tpm`] naming the operation.
fn op(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> SealError {
    move |source| SealError::Tpm { op, source }
}

/// The sealing key for `context` from the vTPM behind `tcti`: unseals the secret at
/// [`SEALED_SECRET_HANDLE`] (creating it on first use) and derives the key with HKDF-SHA256.
pub fn sealing_key(tcti: &str, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut ctx = connect(tcti).map_err(SealError::Open)?;
    let secret = unseal_or_create(&mut ctx)?;
    Ok(derive(&secret, context))
}

/// `HKDF-SHA256(secret, info = SEALING_KEY_INFO ‖ context)`.
fn derive(secret: &[u8; SECRET_LEN], context: &[u8]) -> Zeroizing<[u8; 32]> {
    let hkdf = Hkdf::<Sha256>::new(None, secret);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA-256's 255 * 32-byte limit: expand cannot fail.
    let _ = hkdf.expand_multi_info(&[SEALING_KEY_INFO, context], out.as_mut());
    out
}

/// The secret: unsealed from the persistent object, which is created first if the handle is
/// empty (and only then).
fn unseal_or_create(ctx: &mut Context) -> Result<Zeroizing<[u8; SECRET_LEN]>, SealError> {
    let selection = selection()?;
    if !exists(ctx, SEALED_SECRET_HANDLE).map_err(SealError::Open)? {
        create(ctx, &selection)?;
    }
    unseal(ctx, &selection)
}

/// The sha256 bank, [`SEAL_PCRS`].
fn selection() -> Result<PcrSelectionList, SealError> {
    let slots = SEAL_PCRS
        .iter()
        .map(|i| PcrSlot::try_from(1u32 << i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(op("PCR slots of the sealing policy"))?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(op("the sealing policy's PCR selection"))
}

/// "4, 9, 11", for messages.
pub(crate) fn pcr_list() -> String {
    SEAL_PCRS
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A policy session (or a trial one) with the SHA-256 hash, no salt, no bind. It stays loaded
/// after the command that uses it (continueSession), so the caller flushes it on every path.
fn start_policy_session(ctx: &mut Context, kind: SessionType) -> Result<PolicySession, SealError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(op("TPM2_StartAuthSession (policy)"))?
        .ok_or(SealError::Tpm {
            op: "TPM2_StartAuthSession (policy) returned no session",
            source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        })?;
    let policy = PolicySession::try_from(session).map_err(op("policy session handle"));
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .build();
    let set = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(op("TPMA_SESSION continueSession"));
    match (policy, set) {
        (Ok(policy), Ok(())) => Ok(policy),
        (Err(e), _) | (_, Err(e)) => {
            let _ = flush_session(ctx, session);
            Err(e)
        }
    }
}

fn flush_session(ctx: &mut Context, session: AuthSession) -> Result<(), SealError> {
    let handle = tss_esapi::handles::SessionHandle::from(session);
    ctx.flush_context(ObjectHandle::from(handle))
        .map_err(op("TPM2_FlushContext of the policy session"))
}

/// Runs PolicyPCR(current values of `selection`) in `session`.
fn policy_pcr(
    ctx: &mut Context,
    session: PolicySession,
    selection: &PcrSelectionList,
) -> Result<(), SealError> {
    // An empty pcrDigest makes the TPM use the PCRs' current values.
    ctx.execute_without_session(|c| c.policy_pcr(session, Digest::default(), selection.clone()))
        .map_err(op("TPM2_PolicyPCR"))
}

/// The PolicyPCR digest of the current values of `selection` (a trial session).
fn current_policy_digest(
    ctx: &mut Context,
    selection: &PcrSelectionList,
) -> Result<Digest, SealError> {
    let session = start_policy_session(ctx, SessionType::Trial)?;
    let digest = policy_pcr(ctx, session, selection).and_then(|()| {
        ctx.execute_without_session(|c| c.policy_get_digest(session))
            .map_err(op("TPM2_PolicyGetDigest"))
    });
    let flushed = flush_session(ctx, session.into());
    let digest = digest?;
    flushed?;
    Ok(digest)
}

/// The storage primary: ECC NIST P-256, AES-128-CFB for its children, `fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt`, name algorithm SHA-256,
/// empty unique: the same vTPM (owner seed) gives the same key every time.
pub fn storage_primary_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The sealed data object: keyedhash, scheme null, `authPolicy` = `policy`, `userWithAuth`
/// clear (policy only), `sensitiveDataOrigin` clear (the caller supplies the data).
fn sealed_object_template(policy: Digest) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(false)
        .with_sensitive_data_origin(false)
        .with_sign_encrypt(false)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// First use: a fresh secret sealed to the current PCR values, persisted at
/// [`SEALED_SECRET_HANDLE`]. The primary and the loaded object are flushed on every path.
fn create(ctx: &mut Context, selection: &PcrSelectionList) -> Result<(), SealError> {
    let policy = current_policy_digest(ctx, selection)?;
    let random = ctx
        .execute_without_session(|c| c.get_random(SECRET_LEN))
        .map_err(op("TPM2_GetRandom"))?;
    if random.len() != SECRET_LEN {
        return Err(SealError::SecretSize {
            op: "TPM2_GetRandom",
            expected: SECRET_LEN,
            got: random.len(),
        });
    }
    // Digest and SensitiveData keep their bytes in `Zeroizing` buffers.
    let data = SensitiveData::try_from(random.value().to_vec())
        .map_err(op("the secret as TPM2B_SENSITIVE_DATA"))?;
    drop(random);

    let template = storage_primary_template().map_err(op("storage primary template"))?;
    let primary = ctx
        .create_primary(Hierarchy::Owner, template, None, None, None, None)
        .map_err(op("TPM2_CreatePrimary (owner storage key)"))?
        .key_handle;
    let created = create_under(ctx, primary, policy, data);
    let flushed = ctx
        .flush_context(primary.into())
        .map_err(op("TPM2_FlushContext of the storage primary"));
    created?;
    flushed
}

fn create_under(
    ctx: &mut Context,
    primary: KeyHandle,
    policy: Digest,
    data: SensitiveData,
) -> Result<(), SealError> {
    let template = sealed_object_template(policy).map_err(op("sealed object template"))?;
    let created = ctx
        .create(primary, template, None, Some(data), None, None)
        .map_err(op("TPM2_Create of the sealed secret"))?;
    let loaded = ctx
        .load(primary, created.out_private, created.out_public)
        .map_err(op("TPM2_Load of the sealed secret"))?;
    let persisted = persist(ctx, loaded);
    let flushed = ctx
        .flush_context(loaded.into())
        .map_err(op("TPM2_FlushContext of the transient sealed secret"));
    persisted?;
    flushed
}

/// TPM2_EvictControl of `object` to the (empty) [`SEALED_SECRET_HANDLE`]. If something got there
/// in between, the TPM refuses (TPM_RC_NV_DEFINED) and nothing is replaced.
fn persist(ctx: &mut Context, object: KeyHandle) -> Result<(), SealError> {
    let handle = persistent_handle()?;
    let new = ctx
        .evict_control(
            Provision::Owner,
            object.into(),
            Persistent::Persistent(handle),
        )
        .map_err(op(
            "TPM2_EvictControl persisting the sealed secret at 0x8100c0ff",
        ))?;
    close(ctx, new).map_err(op("closing the ESYS handle of 0x8100c0ff"))
}

fn persistent_handle() -> Result<PersistentTpmHandle, SealError> {
    PersistentTpmHandle::new(SEALED_SECRET_HANDLE).map_err(op("persistent handle 0x8100c0ff"))
}

/// Unseals the object at [`SEALED_SECRET_HANDLE`] with a PolicyPCR session; closes its ESYS
/// handle on every path.
fn unseal(
    ctx: &mut Context,
    selection: &PcrSelectionList,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, SealError> {
    let object = esys_handle(ctx, TpmHandle::Persistent(persistent_handle()?))
        .map_err(op("ESYS handle for 0x8100c0ff"))?;
    let secret = unseal_object(ctx, object, selection);
    let closed = close(ctx, object).map_err(op("closing the ESYS handle of 0x8100c0ff"));
    let secret = secret?;
    closed?;
    Ok(secret)
}

fn unseal_object(
    ctx: &mut Context,
    object: ObjectHandle,
    selection: &PcrSelectionList,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, SealError> {
    let (public, _, _) = ctx
        .execute_without_session(|c| c.read_public(object.into()))
        .map_err(op("TPM2_ReadPublic of 0x8100c0ff"))?;
    check_shape(&public)?;
    let current = current_policy_digest(ctx, selection)?;
    if public.auth_policy().value() != current.value() {
        return Err(policy_mismatch());
    }

    let session = start_policy_session(ctx, SessionType::Policy)?;
    let data = policy_pcr(ctx, session, selection).and_then(|()| {
        ctx.execute_with_session(Some(session.into()), |c| c.unseal(object))
            .map_err(|source| match source {
                // PCRs moved between the check above and the unseal.
                tss_esapi::Error::Tss2Error(rc)
                    if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail) =>
                {
                    policy_mismatch()
                }
                source => SealError::Tpm {
                    op: "TPM2_Unseal of 0x8100c0ff",
                    source,
                },
            })
    });
    let flushed = flush_session(ctx, session.into());
    let data = data?;
    flushed?;

    let bytes = data.value();
    if bytes.len() != SECRET_LEN {
        return Err(SealError::SecretSize {
            op: "TPM2_Unseal of 0x8100c0ff",
            expected: SECRET_LEN,
            got: bytes.len(),
        });
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    secret.copy_from_slice(bytes);
    Ok(secret)
}

fn policy_mismatch() -> SealError {
    SealError::PolicyMismatch {
        handle: SEALED_SECRET_HANDLE,
        pcrs: pcr_list(),
    }
}

/// Refuses anything at the handle that is not a sealed data object gated by a policy alone:
/// whatever else is there is not ours, and unsealing it (or replacing it) would be wrong.
fn check_shape(public: &Public) -> Result<(), SealError> {
    let Public::KeyedHash {
        object_attributes: a,
        name_hashing_algorithm,
        auth_policy,
        ..
    } = public
    else {
        return Err(SealError::NotASealedSecret {
            handle: SEALED_SECRET_HANDLE,
            found: "not a keyedhash object".into(),
        });
    };
    let problem = if a.sign_encrypt() || a.decrypt() {
        Some("a keyedhash key (sign or decrypt set), not a sealed data object".to_owned())
    } else if a.user_with_auth() {
        Some("userWithAuth is set (a password would open it)".to_owned())
    } else if !a.fixed_tpm() || !a.fixed_parent() {
        Some("not fixedTPM and fixedParent (it could be duplicated)".to_owned())
    } else if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        Some(format!(
            "name algorithm {name_hashing_algorithm:?}, not sha256"
        ))
    } else if auth_policy.len() != 32 {
        Some(format!(
            "a {}-byte authPolicy, not a SHA-256 policy digest",
            auth_policy.len()
        ))
    } else {
        None
    };
    match problem {
        Some(found) => Err(SealError::NotASealedSecret {
            handle: SEALED_SECRET_HANDLE,
            found,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HKDF-SHA256 computed independently (Python's hmac/hashlib, RFC 5869 with no salt):
    /// secret 0x42 × 32, info "coffer vtpm sealing key v1" ‖ "coffer-kms state v1".
    const KMS_KEY_OF_0X42: &str =
        "71aedc08ce040fc26024121ca2002ac18ae189aff98300766628ae901a5830be";
    /// The same with an empty context.
    const EMPTY_CONTEXT_KEY_OF_0X42: &str =
        "92fe66cb3e535fa37d606eee6bfdeb14c9086c8ec9d55ce7ae43c82207d88624";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_key_is_hkdf_of_the_secret_with_the_prefix_and_the_context_as_info() {
        let secret = [0x42; 32];
        assert_eq!(
            hex(derive(&secret, b"coffer-kms state v1").as_ref()),
            KMS_KEY_OF_0X42
        );
        assert_eq!(
            hex(derive(&secret, b"").as_ref()),
            EMPTY_CONTEXT_KEY_OF_0X42
        );
    }

    #[test]
    fn contexts_and_secrets_separate_keys() {
        let a = derive(&[1; 32], b"a");
        assert_eq!(*a, *derive(&[1; 32], b"a"));
        assert_ne!(*a, *derive(&[1; 32], b"b"));
        assert_ne!(*a, *derive(&[2; 32], b"a"));
    }

    #[test]
    fn the_selection_and_handle_are_what_the_docs_say() {
        assert_eq!(pcr_list(), "4, 9, 11");
        assert!(selection().is_ok());
        // Owner persistent range (TCG handle registry): 0x81000000-0x817FFFFF.
        assert!((0x8100_0000..=0x817F_FFFF).contains(&SEALED_SECRET_HANDLE));
        assert_ne!(SEALED_SECRET_HANDLE, crate::AK_PERSISTENT_HANDLE);
    }

    #[test]
    fn the_templates_build_and_the_sealed_object_needs_its_policy() {
        assert!(storage_primary_template().is_ok());
        let public = sealed_object_template(Digest::try_from(vec![7u8; 32]).unwrap()).unwrap();
        assert!(check_shape(&public).is_ok());
        let attributes = public.object_attributes();
        assert!(!attributes.user_with_auth());
        assert!(attributes.admin_with_policy());
    }

    #[test]
    fn an_object_that_is_not_a_policy_sealed_secret_is_refused_by_name() {
        let key = storage_primary_template().unwrap();
        let err = check_shape(&key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the object at persistent handle 0x8100c0ff is not a Coffer sealed secret: \
             not a keyedhash object"
        );
        let unpoliced = sealed_object_template(Digest::default()).unwrap();
        assert!(check_shape(&unpoliced)
            .unwrap_err()
            .to_string()
            .contains("0-byte authPolicy"));
    }
}
