//! The Azure vTPM as a `coffer_evidence::EvidenceProvider`: the third backend of the one trait
//! (beside SEV-SNP and sim, which live in `coffer-evidence` because they build static).
//!
//! **Sealing keys** are vTPM-sealed ([`crate::seal`]): HKDF-SHA256 of a 32-byte secret that this
//! vTPM releases only to a PolicyPCR session over sha256 PCRs 4, 9 and 11 holding the values of
//! the boot that first asked (this image's stub, kernel, initrd, sections and command line). The
//! same image on the same VM gets the same key after a reboot; another image measures other PCR
//! values and is refused ([`EvidenceError::Refused`], naming the PCR policy mismatch) rather than
//! given a new key, so the KMS fails closed instead of starting over. Another VM (another vTPM)
//! has no such secret and gets a key of its own. What it is *not* bound to: the SNP launch
//! measurement (on Azure that is Microsoft's paravisor and firmware, not our image), nor
//! predicted PCR values: the first boot that finds no secret decides which values unseal it.

use coffer_evidence::{Evidence, EvidenceError, EvidenceProvider, Platform, REPORT_DATA_LEN};
use zeroize::Zeroizing;

use crate::error::SealError;
use crate::AzureVtpmProvider;

/// Evidence from an Azure vTPM (or an swtpm provisioned as one): REPORT_DATA is the quote's
/// qualifying data; the evidence is the Trustee `az-snp-vtpm` v2 document. Sealing keys come
/// from the same vTPM ([`crate::seal`]).
#[derive(Debug)]
pub struct AzureVtpmEvidence {
    provider: AzureVtpmProvider,
    vcek: Vec<u8>,
}

impl AzureVtpmEvidence {
    /// `provider` quoting the pinned PCRs; `vcek` the VCEK that signed the HCL report's SNP
    /// report (from Azure's IMDS, or the simulation root).
    pub fn new(provider: AzureVtpmProvider, vcek: Vec<u8>) -> Self {
        Self { provider, vcek }
    }
}

impl EvidenceProvider for AzureVtpmEvidence {
    fn platform(&self) -> Platform {
        Platform::Azure
    }

    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError> {
        let collected = self
            .provider
            .collect(report_data, &self.vcek)
            .map_err(|e| EvidenceError::Device {
                path: self.provider.tcti().to_owned(),
                reason: e.to_string(),
            })?;
        let document = coffer_vtpm::evidence::to_trustee_json_v2(&collected.into_evidence())
            .map_err(|e| EvidenceError::Protocol(e.to_string()))?;
        Ok(Evidence::AzureVtpm {
            document: document.into_bytes(),
        })
    }

    /// `HKDF-SHA256(vTPM-sealed secret, "coffer vtpm sealing key v1" ‖ context)`; see
    /// [`crate::seal`]. A PCR policy mismatch is [`EvidenceError::Refused`]; any other TPM
    /// failure is [`EvidenceError::Device`] naming the TCTI.
    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        crate::seal::sealing_key(self.provider.tcti(), context).map_err(|e| match e {
            SealError::PolicyMismatch { .. } => EvidenceError::Refused(e.to_string()),
            e => EvidenceError::Device {
                path: self.provider.tcti().to_owned(),
                reason: e.to_string(),
            },
        })
    }
}
