//! Errors, one enum per job: collecting evidence in the guest, the vTPM sealing secret,
//! provisioning an swtpm on the host. Every variant names what failed; TPM failures carry the
//! command and the TSS response code.

use coffer_vtpm::hcl::HclError;
use coffer_vtpm::quote::QuoteError;

/// Why evidence could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The TCTI string is not a TCTI name and configuration tss-esapi understands.
    #[error("TCTI {tcti:?} is not valid: {source}")]
    Tcti {
        /// The TCTI string given.
        tcti: String,
        /// tss-esapi's error.
        source: tss_esapi::Error,
    },
    /// The TPM could not be opened through the TCTI.
    #[error("cannot open the TPM through TCTI {tcti:?}: {source}")]
    Connect {
        /// The TCTI string given.
        tcti: String,
        /// tss-esapi's error.
        source: tss_esapi::Error,
    },
    /// The PCR selection is empty or names a PCR outside 0..24.
    #[error("PCR selection: {reason}")]
    PcrSelection {
        /// What is wrong with it.
        reason: String,
    },
    /// NV index 0x01400001 is not defined: not an Azure CVM vTPM, or an swtpm not provisioned.
    #[error("NV index 0x01400001 (the HCL report) is not defined in this TPM")]
    NoHclReport,
    /// The contents of NV index 0x01400001 are not an HCL report.
    #[error("NV index 0x01400001 does not hold a usable HCL report: {0}")]
    HclReport(#[source] HclError),
    /// Nothing at persistent handle 0x81000003.
    #[error("no attestation key at persistent handle 0x81000003")]
    NoAk,
    /// The object at 0x81000003 is not an RSA key.
    #[error("the object at persistent handle 0x81000003 is not an RSA key: {found}")]
    AkNotRsa {
        /// What it is instead.
        found: String,
    },
    /// The AK in the TPM is not the `HCLAkPub` of the HCL report: the quote could never verify.
    #[error(
        "the AK at 0x81000003 (modulus SHA-256 {tpm}) is not the HCL report's HCLAkPub \
         (modulus SHA-256 {hcl})"
    )]
    AkMismatch {
        /// SHA-256 of the TPM AK's modulus, hex.
        tpm: String,
        /// SHA-256 of the HCLAkPub modulus, hex.
        hcl: String,
    },
    /// A PCR changed between TPM2_Quote and TPM2_PCR_Read on every attempt.
    #[error(
        "PCR values moved between TPM2_Quote and TPM2_PCR_Read on {attempts} attempts in a row"
    )]
    PcrsUnstable {
        /// Attempts made.
        attempts: u32,
    },
    /// The TPM returned fewer PCR values than selected, or not sha256 ones.
    #[error("TPM2_PCR_Read returned no sha256 value for PCR {index}")]
    PcrMissing {
        /// The PCR index.
        index: u8,
    },
    /// The TPM's quote does not fit coffer-vtpm's quote container.
    #[error("the TPM's quote does not fit coffer-vtpm's container: {0}")]
    QuoteContainer(#[source] QuoteError),
    /// A TPM command (or tss-esapi conversion) failed.
    #[error("{op}: {source}")]
    Tpm {
        /// The command and its object, e.g. `TPM2_Quote with the AK at 0x81000003`.
        op: &'static str,
        /// tss-esapi's error (with the TPM response code).
        source: tss_esapi::Error,
    },
}

/// Why the vTPM sealing secret could not be unsealed (or, on first use, created).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Opening the TPM failed (same cases as for the provider).
    #[error(transparent)]
    Open(ProviderError),
    /// The sealed secret's PCR policy does not match this boot's PCR values: another image or
    /// boot chain. Nothing was created or replaced.
    #[error(
        "the vTPM refused to unseal the sealing secret at persistent handle {handle:#010x}: its \
         PCR policy (sha256 PCRs {pcrs}) does not match this boot's PCR values (another image \
         or boot chain); no new secret was created"
    )]
    PolicyMismatch {
        /// The persistent handle of the sealed secret.
        handle: u32,
        /// The policy's PCRs, e.g. `4, 9, 11`.
        pcrs: String,
    },
    /// Something other than a policy-sealed data object is at the handle; it is left alone.
    #[error(
        "the object at persistent handle {handle:#010x} is not a Coffer sealed secret: {found}"
    )]
    NotASealedSecret {
        /// The persistent handle.
        handle: u32,
        /// What it is instead.
        found: String,
    },
    /// The TPM returned a secret of another size.
    #[error("{op} returned {got} bytes, expected {expected}")]
    SecretSize {
        /// The command.
        op: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes returned.
        got: usize,
    },
    /// A TPM command (or tss-esapi conversion) failed.
    #[error("{op}: {source}")]
    Tpm {
        /// The command and its object.
        op: &'static str,
        /// tss-esapi's error (with the TPM response code).
        source: tss_esapi::Error,
    },
}

/// Why an swtpm could not be provisioned as a simulated Azure vTPM.
#[cfg(feature = "sim")]
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Opening the TPM failed (same cases as for the provider).
    #[error(transparent)]
    Open(ProviderError),
    /// The HCL report would not fit the TPM's largest NV index.
    #[error(
        "the HCL report is {needed} bytes but this TPM's NV indices hold at most {max} \
         (runtime claims are {claims} bytes)"
    )]
    TooLarge {
        /// Bytes needed: header, SNP report, IGVM request data and claims.
        needed: usize,
        /// TPM2_PT_NV_INDEX_MAX.
        max: usize,
        /// Size of the runtime claims JSON.
        claims: usize,
    },
    /// The AK the TPM created is not the RSA key asked for.
    #[error("the created AK is not RSA-2048: {found}")]
    AkShape {
        /// What was created.
        found: String,
    },
    /// A TPM command (or tss-esapi conversion) failed.
    #[error("{op}: {source}")]
    Tpm {
        /// The command and its object.
        op: &'static str,
        /// tss-esapi's error (with the TPM response code).
        source: tss_esapi::Error,
    },
}
