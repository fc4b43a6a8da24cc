//! The TPM 2.0 NV counter anchor (Azure vTPM; swtpm in tests), through tss-esapi 7.7.
//!
//! The anchor is an NV index of type *counter* (TPM 2.0 Part 1, 37.2.3): 8 bytes the TPM only
//! increments (TPM2_NV_Increment), never writes. Its first increment starts it from the highest
//! value any counter on that TPM has held, so deleting and re-creating the index does not take
//! it back either. [`TpmNvCounter::advance_to`] increments until the counter reaches the
//! requested version: one increment per committed write in steady state.
//!
//! Owner authorization with an empty password, as the Azure vTPM's owner hierarchy has. Each
//! call opens its own ESYS context and closes every handle it opened (the anchor is `Send`, an
//! ESYS context is not).

use std::str::FromStr;

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::{CapabilityType, NvIndexType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, NvPublicBuilder};
use tss_esapi::{Context, TctiNameConf};

use super::{AnchorError, VersionAnchor};

/// The default NV index of the KMS state counter: in the owner range (TCG handle registry:
/// 0x01000000-0x013FFFFF), away from the Azure paravisor's 0x014000xx indices.
pub const DEFAULT_NV_INDEX: u32 = 0x0100_C0FF;

/// The TCTI inside an Azure guest: the kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// A TPM NV counter used as the rollback anchor.
#[derive(Debug, Clone)]
pub struct TpmNvCounter {
    tcti: String,
    index: u32,
}

impl TpmNvCounter {
    /// The counter at NV `index` of the TPM reached through `tcti`
    /// (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=N`). Nothing is sent to the TPM yet;
    /// the index is defined on the first [`VersionAnchor::advance_to`].
    pub fn new(tcti: impl Into<String>, index: u32) -> Self {
        Self {
            tcti: tcti.into(),
            index,
        }
    }

    fn err(&self, op: &'static str) -> impl Fn(tss_esapi::Error) -> AnchorError + '_ {
        move |e| AnchorError::Backend {
            anchor: self.describe(),
            op,
            reason: e.to_string(),
        }
    }

    fn refuse(&self, op: &'static str, reason: String) -> AnchorError {
        AnchorError::Backend {
            anchor: self.describe(),
            op,
            reason,
        }
    }

    fn connect(&self) -> Result<Context, AnchorError> {
        let conf = TctiNameConf::from_str(&self.tcti).map_err(self.err("TCTI"))?;
        let mut ctx = Context::new(conf).map_err(self.err("connect"))?;
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        Ok(ctx)
    }

    fn tpm_index(&self) -> Result<NvIndexTpmHandle, AnchorError> {
        NvIndexTpmHandle::new(self.index).map_err(self.err("NV index handle"))
    }

    fn exists(&self, ctx: &mut Context) -> Result<bool, AnchorError> {
        let (data, _) = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, self.index, 1))
            .map_err(self.err("TPM2_GetCapability(TPM_CAP_HANDLES)"))?;
        Ok(matches!(data, CapabilityData::Handles(list)
            if list.iter().any(|h| u32::from(*h) == self.index)))
    }

    /// Runs `f` on an ESYS handle of the existing index, closing the handle afterwards (also
    /// when `f` fails). Refuses an index that is not an 8-byte counter: anything else at this
    /// handle is not ours, and a plain NV index could be written backwards.
    fn with_index<T>(
        &self,
        ctx: &mut Context,
        f: impl FnOnce(&mut Context, NvIndexHandle, bool) -> Result<T, AnchorError>,
    ) -> Result<T, AnchorError> {
        let tpm = self.tpm_index()?;
        let object = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm)))
            .map_err(self.err("ESYS_TR_FromTPMPublic"))?;
        let handle = NvIndexHandle::from(object);
        let result = (|| {
            let (public, _) = ctx
                .execute_without_session(|c| c.nv_read_public(handle))
                .map_err(self.err("TPM2_NV_ReadPublic"))?;
            let attributes = public.attributes();
            let kind = attributes.index_type().map_err(self.err("NV index type"))?;
            if kind != NvIndexType::Counter || public.data_size() != 8 {
                return Err(self.refuse(
                    "checking the NV index",
                    format!(
                        "it is a {kind:?} index of {} bytes, not an 8-byte counter",
                        public.data_size()
                    ),
                ));
            }
            f(ctx, handle, attributes.written())
        })();
        let mut object = ObjectHandle::from(handle);
        let closed = ctx.tr_close(&mut object).map_err(self.err("ESYS_TR_Close"));
        let value = result?;
        closed?;
        Ok(value)
    }

    fn define(&self, ctx: &mut Context) -> Result<(), AnchorError> {
        let attributes = NvIndexAttributesBuilder::new()
            .with_nv_index_type(NvIndexType::Counter)
            .with_owner_write(true)
            .with_owner_read(true)
            // Dictionary-attack lockout is for guessable passwords; this index has none.
            .with_no_da(true)
            .build()
            .map_err(self.err("NV counter attributes"))?;
        let public = NvPublicBuilder::new()
            .with_nv_index(self.tpm_index()?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .map_err(self.err("NV counter public area"))?;
        let handle = ctx
            .nv_define_space(Provision::Owner, None, public)
            .map_err(self.err("TPM2_NV_DefineSpace"))?;
        let mut object = ObjectHandle::from(handle);
        ctx.tr_close(&mut object).map_err(self.err("ESYS_TR_Close"))
    }

    fn value(&self, ctx: &mut Context, handle: NvIndexHandle) -> Result<u64, AnchorError> {
        let data = ctx
            .nv_read(NvAuth::Owner, handle, 8, 0)
            .map_err(self.err("TPM2_NV_Read"))?;
        let bytes: [u8; 8] = data
            .as_slice()
            .try_into()
            .map_err(|_| self.refuse("TPM2_NV_Read", format!("{} bytes, not 8", data.len())))?;
        // TPM counters are big-endian UINT64 (TPM 2.0 Part 2, TPMA_NV counter).
        Ok(u64::from_be_bytes(bytes))
    }
}

impl VersionAnchor for TpmNvCounter {
    fn describe(&self) -> String {
        format!("TPM NV counter {:#010x} at {}", self.index, self.tcti)
    }

    fn read(&mut self) -> Result<Option<u64>, AnchorError> {
        let mut ctx = self.connect()?;
        if !self.exists(&mut ctx)? {
            return Ok(None);
        }
        self.with_index(&mut ctx, |ctx, handle, written| {
            // A counter never incremented has no value (TPM_RC_NV_UNINITIALIZED): unset.
            if written {
                self.value(ctx, handle).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    fn advance_to(&mut self, version: u64) -> Result<u64, AnchorError> {
        let mut ctx = self.connect()?;
        if !self.exists(&mut ctx)? {
            self.define(&mut ctx)?;
        }
        self.with_index(&mut ctx, |ctx, handle, written| {
            let mut current = if written {
                Some(self.value(ctx, handle)?)
            } else {
                None
            };
            while current.is_none_or(|c| c < version) {
                ctx.nv_increment(NvAuth::Owner, handle)
                    .map_err(self.err("TPM2_NV_Increment"))?;
                let next = self.value(ctx, handle)?;
                if current.is_some_and(|c| next <= c) {
                    return Err(self.refuse(
                        "TPM2_NV_Increment",
                        format!("the counter did not move ({next})"),
                    ));
                }
                current = Some(next);
            }
            Ok(current.unwrap_or(version))
        })
    }
}
