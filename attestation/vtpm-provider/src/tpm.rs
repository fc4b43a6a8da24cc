//! The Azure vTPM handles, and small tss-esapi helpers shared by the provider and the
//! provisioning: opening a context, asking whether a handle exists, NV reads and writes in
//! TPM-sized chunks, and listing what is loaded in a TPM.
//!
//! Authorization is by password (the Azure vTPM's owner hierarchy and AK have empty auth): a
//! password "session" is not a TPM session, so nothing here starts one that would need flushing.

use std::str::FromStr;

use tss_esapi::abstraction::nv;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, MaxNvBuffer};
use tss_esapi::{Context, TctiNameConf};

use crate::error::ProviderError;

/// NV index of the HCL report (Azure: 2600 bytes; here at most the TPM's NV index maximum).
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// NV index of the 64 bytes of user data the paravisor puts into a refreshed report's claims.
pub const USER_DATA_NV_INDEX: u32 = 0x0140_0002;
/// Persistent handle of the vTPM attestation key (RSA-2048, restricted, RSASSA/SHA-256).
pub const AK_PERSISTENT_HANDLE: u32 = 0x8100_0003;
/// The TCTI inside a guest: the kernel's TPM resource manager, so transient objects of other
/// processes never collide with ours.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// First handle of each handle type (TPM 2.0 Part 2, 7.4 TPM_HT).
const HT_TRANSIENT: u32 = 0x8000_0000;
const HT_LOADED_SESSION: u32 = 0x0200_0000;
const HT_SAVED_SESSION: u32 = 0x0300_0000;

/// Maps a tss-esapi error to [`ProviderError::Tpm`] naming the operation.
pub(crate) fn op(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> ProviderError {
    move |source| ProviderError::Tpm { op, source }
}

/// Opens an ESYS context on `tcti`, with a password session for commands that need
/// authorization.
pub(crate) fn connect(tcti: &str) -> Result<Context, ProviderError> {
    let conf = TctiNameConf::from_str(tcti).map_err(|source| ProviderError::Tcti {
        tcti: tcti.to_owned(),
        source,
    })?;
    let mut ctx = Context::new(conf).map_err(|source| ProviderError::Connect {
        tcti: tcti.to_owned(),
        source,
    })?;
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    Ok(ctx)
}

/// All handles of one type from `first` on (TPM2_GetCapability(TPM_CAP_HANDLES)), paging while
/// the TPM says there is more.
fn handles_from(ctx: &mut Context, first: u32) -> Result<Vec<u32>, ProviderError> {
    let mut out = Vec::new();
    let mut next = first;
    loop {
        let (data, more) = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 64))
            .map_err(op("TPM2_GetCapability(TPM_CAP_HANDLES)"))?;
        let CapabilityData::Handles(list) = data else {
            return Err(ProviderError::Tpm {
                op: "TPM2_GetCapability(TPM_CAP_HANDLES) answered another capability",
                source: tss_esapi::Error::WrapperError(
                    tss_esapi::WrapperErrorKind::WrongValueFromTpm,
                ),
            });
        };
        let page: Vec<u32> = list.iter().map(|h| u32::from(*h)).collect();
        let Some(last) = page.last().copied() else {
            break;
        };
        out.extend(page);
        if !more {
            break;
        }
        match last.checked_add(1) {
            Some(n) => next = n,
            None => break,
        }
    }
    // The TPM answers only handles of the type of `first`; keep it so if one does not.
    out.retain(|h| h >> 24 == first >> 24);
    Ok(out)
}

/// True if `handle` (an NV index or persistent handle) exists.
pub(crate) fn exists(ctx: &mut Context, handle: u32) -> Result<bool, ProviderError> {
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, handle, 1))
        .map_err(op("TPM2_GetCapability(TPM_CAP_HANDLES)"))?;
    Ok(
        matches!(data, CapabilityData::Handles(list) if list.iter().any(|h| u32::from(*h) == handle)),
    )
}

/// An ESYS handle for an existing TPM object (no TPM command, no TPM-side resource).
pub(crate) fn esys_handle(ctx: &mut Context, tpm: TpmHandle) -> tss_esapi::Result<ObjectHandle> {
    ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm))
}

/// Closes an ESYS handle (frees the ESYS resource; the TPM object stays).
pub(crate) fn close(ctx: &mut Context, mut handle: ObjectHandle) -> tss_esapi::Result<()> {
    ctx.tr_close(&mut handle)
}

/// Reads all of NV index `index` with owner authorization, in chunks of the TPM's
/// NV_BUFFER_MAX.
pub(crate) fn nv_read_all(ctx: &mut Context, index: u32) -> tss_esapi::Result<Vec<u8>> {
    nv::read_full(ctx, NvAuth::Owner, NvIndexTpmHandle::new(index)?)
}

/// Writes `data` at offset 0 of an open NV index with owner authorization, in chunks of the
/// TPM's NV_BUFFER_MAX.
pub(crate) fn nv_write_all(
    ctx: &mut Context,
    handle: NvIndexHandle,
    data: &[u8],
) -> tss_esapi::Result<()> {
    let chunk = nv::max_nv_buffer_size(ctx)?.clamp(1, MaxNvBuffer::MAX_SIZE);
    for (i, part) in data.chunks(chunk).enumerate() {
        let offset = u16::try_from(i * chunk).map_err(|_| {
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize)
        })?;
        ctx.nv_write(
            NvAuth::Owner,
            handle,
            MaxNvBuffer::try_from(part.to_vec())?,
            offset,
        )?;
    }
    Ok(())
}

/// What is loaded in a TPM: transient objects and sessions. Without a resource manager (a raw
/// swtpm socket, `/dev/tpm0`) anything left here stays until TPM2_FlushContext or a reset, and
/// the next key creation fails with TPM_RC_OBJECT_MEMORY.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedHandles {
    /// Transient object handles (0x80xxxxxx).
    pub transient: Vec<u32>,
    /// Loaded (0x02xxxxxx) and saved/active (0x03xxxxxx) session handles.
    pub sessions: Vec<u32>,
}

impl LoadedHandles {
    /// True if no transient object and no session is loaded.
    pub fn is_empty(&self) -> bool {
        self.transient.is_empty() && self.sessions.is_empty()
    }
}

/// Lists the transient objects and sessions loaded in the TPM behind `tcti`. Behind a resource
/// manager (`/dev/tpmrm0`, tabrmd) this shows only the caller's own connection's, i.e. nothing.
pub fn loaded_handles(tcti: &str) -> Result<LoadedHandles, ProviderError> {
    let mut ctx = connect(tcti)?;
    Ok(LoadedHandles {
        transient: handles_from(&mut ctx, HT_TRANSIENT)?,
        sessions: [
            handles_from(&mut ctx, HT_LOADED_SESSION)?,
            handles_from(&mut ctx, HT_SAVED_SESSION)?,
        ]
        .concat(),
    })
}
