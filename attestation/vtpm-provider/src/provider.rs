//! The guest side: collect Azure vTPM evidence for a verifier's nonce.
//!
//! Steps of [`AzureVtpmProvider::collect`], each failing with a [`ProviderError`] naming it:
//!
//! 1. Open the TPM through the configured TCTI (`device:/dev/tpmrm0` in a guest).
//! 2. With [`ReportRefresh::WriteNonce`]: write the nonce to NV 0x01400002 (defining it, 64
//!    bytes, owner read/write, if absent or of another size, as Microsoft's and az-cvm-vtpm's
//!    tools do), then wait for Azure's paravisor to regenerate its report with the nonce as
//!    `user-data`. Best effort: any failure is reported in [`UserDataOutcome`] and collection
//!    goes on, since freshness comes from the quote nonce anyway. (An swtpm has no paravisor: the
//!    write lands but the report stays as provisioned.)
//! 3. Read NV 0x01400001 whole (in NV_BUFFER_MAX chunks; no size is assumed) and parse it as an
//!    HCL report.
//! 4. Check that the RSA key at persistent handle 0x81000003 is the report's `HCLAkPub`.
//! 5. TPM2_Quote over the sha256 PCR selection, qualifying data = the nonce, signed with the AK's
//!    own scheme (RSASSA-PKCS1-v1_5/SHA-256 on Azure); then TPM2_PCR_Read of the same PCRs. If
//!    SHA-256 of the values read is not the quote's pcrDigest, a PCR was extended in between:
//!    quote again (up to [`PCR_ATTEMPTS`] times).
//!
//! Nothing transient is created in the TPM (the AK is persistent, authorization is by password),
//! and every ESYS handle opened is closed on every path; [`crate::tpm::loaded_handles`] shows
//! the result.

use std::time::Duration;

use coffer_vtpm::evidence::AzureEvidence;
use coffer_vtpm::hcl::HclReport;
use coffer_vtpm::quote::Quote;
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::pcr;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::handles::{
    KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::{
    Data, NvPublicBuilder, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::error::ProviderError;
use crate::tpm::{
    close, connect, esys_handle, exists, loaded_handles, nv_read_all, nv_write_all, op,
    LoadedHandles, AK_PERSISTENT_HANDLE, DEFAULT_TCTI, HCL_REPORT_NV_INDEX, USER_DATA_NV_INDEX,
};

/// How many times to quote when PCRs move between TPM2_Quote and TPM2_PCR_Read.
pub const PCR_ATTEMPTS: u32 = 3;
/// The nonce size: TPM2B_DATA holds at most 64 bytes, and the user-data NV index is 64 bytes.
pub const NONCE_SIZE: usize = 64;
/// PCRs on a PC Client TPM.
const PCR_COUNT: u8 = 24;

/// Whether to ask Azure's paravisor for a fresh HCL report before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRefresh {
    /// Read NV 0x01400001 as it is (the report the paravisor made at boot, or last refreshed).
    Off,
    /// Write the nonce to NV 0x01400002, wait `wait` (az-cvm-vtpm waits 3 s on Azure), then read.
    /// The refreshed report's claims then carry the nonce as `user-data`, and its SNP report is
    /// new (current TCB).
    WriteNonce {
        /// Time given to the paravisor to regenerate the report.
        wait: Duration,
    },
}

/// What happened to the user-data write of [`ReportRefresh::WriteNonce`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDataOutcome {
    /// [`ReportRefresh::Off`]: nothing written.
    NotRequested,
    /// The nonce was written to NV 0x01400002 (`defined`: the index had to be (re)defined first).
    Written {
        /// True if the index was absent or of another size and was defined by us.
        defined: bool,
    },
    /// The index could not be defined or written; collection went on without a refresh.
    Unavailable {
        /// Why, with the TPM's response.
        reason: String,
    },
}

/// Evidence collected, with what happened to the report refresh.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The evidence: HCL report as read from NV (padding included), the caller's VCEK, the quote.
    pub evidence: AzureEvidence,
    /// The outcome of the user-data write.
    pub user_data: UserDataOutcome,
}

impl Collected {
    /// Only the evidence.
    pub fn into_evidence(self) -> AzureEvidence {
        self.evidence
    }
}

/// Collects Azure vTPM evidence from one TPM. Cheap to build; each [`collect`](Self::collect)
/// opens and closes its own TPM connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureVtpmProvider {
    tcti: String,
    pcrs: Vec<u8>,
    refresh: ReportRefresh,
}

impl AzureVtpmProvider {
    /// A provider for the TPM behind `tcti` (e.g. [`DEFAULT_TCTI`], or
    /// `swtpm:host=127.0.0.1,port=2321`) quoting the sha256-bank PCRs `pcrs` (any order, duplicates
    /// ignored; the quote selects them in ascending order). No report refresh
    /// ([`ReportRefresh::Off`]); see [`with_refresh`](Self::with_refresh). The TCTI is checked
    /// when the TPM is opened.
    pub fn new(tcti: impl Into<String>, pcrs: &[u8]) -> Result<Self, ProviderError> {
        let mut sorted = pcrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            return Err(ProviderError::PcrSelection {
                reason: "no PCR selected".into(),
            });
        }
        if let Some(bad) = sorted.iter().find(|i| **i >= PCR_COUNT) {
            return Err(ProviderError::PcrSelection {
                reason: format!("PCR {bad} is out of range 0..{PCR_COUNT}"),
            });
        }
        Ok(Self {
            tcti: tcti.into(),
            pcrs: sorted,
            refresh: ReportRefresh::Off,
        })
    }

    /// The Azure guest default: `device:/dev/tpmrm0`, sha256 PCRs 0..24 (what Azure's own tools
    /// quote), no refresh.
    pub fn azure_guest() -> Self {
        Self {
            tcti: DEFAULT_TCTI.into(),
            pcrs: (0..PCR_COUNT).collect(),
            refresh: ReportRefresh::Off,
        }
    }

    /// Sets whether to refresh the HCL report before reading it.
    pub fn with_refresh(mut self, refresh: ReportRefresh) -> Self {
        self.refresh = refresh;
        self
    }

    /// The TCTI.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The PCRs quoted, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    /// Transient objects and sessions loaded in this provider's TPM (see
    /// [`crate::tpm::loaded_handles`]).
    pub fn loaded_handles(&self) -> Result<LoadedHandles, ProviderError> {
        loaded_handles(&self.tcti)
    }

    /// Collects evidence for the verifier's `nonce`. `vcek` is the VCEK certificate (DER or PEM)
    /// that signed the SNP report; the TPM does not hold it (on Azure it comes from the IMDS THIM
    /// endpoint, in CI from the `SimRoot`), it is passed through into the evidence.
    pub fn collect(
        &self,
        nonce: &[u8; NONCE_SIZE],
        vcek: &[u8],
    ) -> Result<Collected, ProviderError> {
        let mut ctx = connect(&self.tcti)?;
        let user_data = match self.refresh {
            ReportRefresh::Off => UserDataOutcome::NotRequested,
            ReportRefresh::WriteNonce { wait } => match write_user_data(&mut ctx, nonce) {
                Ok(defined) => {
                    std::thread::sleep(wait);
                    UserDataOutcome::Written { defined }
                }
                Err(e) => UserDataOutcome::Unavailable {
                    reason: e.to_string(),
                },
            },
        };

        if !exists(&mut ctx, HCL_REPORT_NV_INDEX)? {
            return Err(ProviderError::NoHclReport);
        }
        let hcl_bytes = nv_read_all(&mut ctx, HCL_REPORT_NV_INDEX)
            .map_err(op("TPM2_NV_Read of NV 0x01400001 (HCL report)"))?;
        let hcl = HclReport::parse(&hcl_bytes).map_err(ProviderError::HclReport)?;
        let hcl_ak = hcl.ak_public_key().map_err(ProviderError::HclReport)?;

        if !exists(&mut ctx, AK_PERSISTENT_HANDLE)? {
            return Err(ProviderError::NoAk);
        }
        let ak_tpm = TpmHandle::Persistent(
            PersistentTpmHandle::new(AK_PERSISTENT_HANDLE)
                .map_err(op("the AK handle 0x81000003"))?,
        );
        let ak =
            esys_handle(&mut ctx, ak_tpm).map_err(op("ESYS handle for the AK at 0x81000003"))?;
        let result = self.quote_with(&mut ctx, ak.into(), &hcl_ak.modulus(), nonce);
        // Always close the ESYS handle, and report the first failure.
        let closed = close(&mut ctx, ak).map_err(op("closing the ESYS handle of the AK"));
        let quote = result?;
        closed?;

        Ok(Collected {
            evidence: AzureEvidence {
                hcl_report: hcl_bytes,
                vcek: vcek.to_vec(),
                quote,
            },
            user_data,
        })
    }

    /// Steps 4 and 5 with the AK's ESYS handle open.
    fn quote_with(
        &self,
        ctx: &mut Context,
        ak: KeyHandle,
        hcl_modulus: &[u8],
        nonce: &[u8; NONCE_SIZE],
    ) -> Result<Quote, ProviderError> {
        // ReadPublic takes no authorization (and fails with a password session).
        let (public, _, _) = ctx
            .execute_without_session(|c| c.read_public(ak))
            .map_err(op("TPM2_ReadPublic of the AK at 0x81000003"))?;
        let Public::Rsa { unique, .. } = &public else {
            return Err(ProviderError::AkNotRsa {
                found: format!("{:?}", public.object_attributes()),
            });
        };
        let tpm_modulus = unique.value();
        if strip_zeros(tpm_modulus) != strip_zeros(hcl_modulus) {
            return Err(ProviderError::AkMismatch {
                tpm: hex_sha256(tpm_modulus),
                hcl: hex_sha256(hcl_modulus),
            });
        }

        let selection = self.selection()?;
        for _ in 0..PCR_ATTEMPTS {
            let qualifying =
                Data::try_from(nonce.to_vec()).map_err(op("the nonce as TPM2B_DATA"))?;
            let (attest, signature) = ctx
                .quote(ak, qualifying, SignatureScheme::Null, selection.clone())
                .map_err(op("TPM2_Quote with the AK at 0x81000003"))?;
            let attest = attest.marshall().map_err(op("marshalling TPMS_ATTEST"))?;
            let signature = signature
                .marshall()
                .map_err(op("marshalling TPMT_SIGNATURE"))?;
            let values = self.read_pcrs(ctx, &selection)?;
            let quote = Quote::from_tpm2_tools(&signature, &attest, values)
                .map_err(ProviderError::QuoteContainer)?;
            let signed = quote
                .attest()
                .map_err(|e| ProviderError::QuoteContainer(e.into()))?
                .quote
                .pcr_digest;
            let mut hasher = Sha256::new();
            for value in quote.pcr_values() {
                hasher.update(value);
            }
            if signed.as_slice() == hasher.finalize().as_slice() {
                return Ok(quote);
            }
        }
        Err(ProviderError::PcrsUnstable {
            attempts: PCR_ATTEMPTS,
        })
    }

    fn selection(&self) -> Result<PcrSelectionList, ProviderError> {
        let slots = self
            .pcrs
            .iter()
            .map(|i| PcrSlot::try_from(1u32 << i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(op("PCR slots of the selection"))?;
        PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(op("the sha256 PCR selection"))
    }

    /// The selected sha256 PCR values, in ascending index order (the quote's digest order).
    fn read_pcrs(
        &self,
        ctx: &mut Context,
        selection: &PcrSelectionList,
    ) -> Result<Vec<[u8; 32]>, ProviderError> {
        let data = ctx
            .execute_without_session(|c| pcr::read_all(c, selection.clone()))
            .map_err(op("TPM2_PCR_Read of the selected sha256 PCRs"))?;
        let bank = data.pcr_bank(HashingAlgorithm::Sha256);
        self.pcrs
            .iter()
            .map(|&index| {
                let value = PcrSlot::try_from(1u32 << index)
                    .ok()
                    .and_then(|slot| bank?.get_digest(slot))
                    .and_then(|d| <[u8; 32]>::try_from(d.value()).ok());
                value.ok_or(ProviderError::PcrMissing { index })
            })
            .collect()
    }
}

/// Writes `nonce` to NV 0x01400002, (re)defining it if needed. Returns whether it was defined.
fn write_user_data(ctx: &mut Context, nonce: &[u8; NONCE_SIZE]) -> Result<bool, ProviderError> {
    let index = NvIndexTpmHandle::new(USER_DATA_NV_INDEX).map_err(op("NV index 0x01400002"))?;
    let mut defined = false;
    let handle: NvIndexHandle = if exists(ctx, USER_DATA_NV_INDEX)? {
        let handle: NvIndexHandle = esys_handle(ctx, TpmHandle::NvIndex(index))
            .map_err(op("ESYS handle for NV 0x01400002"))?
            .into();
        let size = ctx
            .execute_without_session(|c| c.nv_read_public(handle))
            .map(|(public, _)| public.data_size());
        match size {
            Ok(NONCE_SIZE) => handle,
            Ok(_) => {
                ctx.nv_undefine_space(Provision::Owner, handle)
                    .map_err(op("TPM2_NV_UndefineSpace of NV 0x01400002 (wrong size)"))?;
                defined = true;
                define_user_data(ctx, index)?
            }
            Err(e) => {
                let _ = close(ctx, handle.into());
                return Err(op("TPM2_NV_ReadPublic of NV 0x01400002")(e));
            }
        }
    } else {
        defined = true;
        define_user_data(ctx, index)?
    };
    let written = nv_write_all(ctx, handle, nonce).map_err(op("TPM2_NV_Write of NV 0x01400002"));
    let closed = close(ctx, ObjectHandle::from(handle)).map_err(op("closing NV 0x01400002"));
    written?;
    closed?;
    Ok(defined)
}

/// NV 0x01400002 as az-cvm-vtpm defines it: 64 bytes, owner read/write, name alg SHA-256.
fn define_user_data(
    ctx: &mut Context,
    index: NvIndexTpmHandle,
) -> Result<NvIndexHandle, ProviderError> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_owner_write(true)
        .with_owner_read(true)
        .build()
        .map_err(op("NV 0x01400002 attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(index)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(NONCE_SIZE)
        .build()
        .map_err(op("NV 0x01400002 public area"))?;
    ctx.nv_define_space(Provision::Owner, None, public)
        .map_err(op("TPM2_NV_DefineSpace of NV 0x01400002"))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_sorted_deduplicated_and_bounded() {
        let p = AzureVtpmProvider::new("swtpm:port=1", &[11, 4, 11, 0]).unwrap();
        assert_eq!(p.pcrs(), [0, 4, 11]);
        assert!(matches!(
            AzureVtpmProvider::new(DEFAULT_TCTI, &[]),
            Err(ProviderError::PcrSelection { .. })
        ));
        let err = AzureVtpmProvider::new(DEFAULT_TCTI, &[3, 24]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PCR selection: PCR 24 is out of range 0..24"
        );
        assert_eq!(AzureVtpmProvider::azure_guest().pcrs().len(), 24);
    }

    #[test]
    fn a_bad_tcti_is_a_named_error_not_a_panic() {
        let p = AzureVtpmProvider::new("nonsense-tcti:::", &[0]).unwrap();
        let err = p.collect(&[0; 64], b"").unwrap_err();
        assert!(
            matches!(
                err,
                ProviderError::Tcti { .. } | ProviderError::Connect { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn leading_zeros_do_not_matter_in_moduli() {
        assert_eq!(strip_zeros(&[0, 0, 1, 2]), [1, 2]);
        assert_eq!(strip_zeros(&[0, 0]), [] as [u8; 0]);
    }
}
