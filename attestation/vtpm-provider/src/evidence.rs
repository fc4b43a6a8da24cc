//! The Azure vTPM as a `coffer_evidence::EvidenceProvider`: the third backend of the one trait
//! (beside SEV-SNP and sim, which live in `coffer-evidence` because they build static).

use coffer_evidence::{Evidence, EvidenceError, EvidenceProvider, Platform, REPORT_DATA_LEN};
use zeroize::Zeroizing;

use crate::AzureVtpmProvider;

/// Evidence from an Azure vTPM (or an swtpm provisioned as one): REPORT_DATA is the quote's
/// qualifying data; the evidence is the Trustee `az-snp-vtpm` v2 document.
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

    /// Not yet: vTPM sealing (a key sealed to PCR values) comes with the KMS's sealed state.
    fn sealing_key(&self, _context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        Err(EvidenceError::Refused(
            "vTPM sealing keys are not implemented yet (KMS issue)".into(),
        ))
    }
}
