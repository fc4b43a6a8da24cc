//! `coffer-vtpm-provider`: the attester side of Azure confidential-VM vTPM evidence, and an
//! swtpm made to look like an Azure vTPM so the same code runs in CI.
//!
//! **What it owns:**
//! - [`AzureVtpmProvider`] (guest side): for a verifier's 64-byte nonce, optionally writes the
//!   nonce to NV 0x01400002 (Azure's paravisor then refreshes its report), reads the HCL report
//!   from NV 0x01400001, quotes a caller-chosen sha256 PCR selection with the AK at persistent
//!   handle 0x81000003 (the nonce as qualifying data), reads those PCRs, and returns
//!   [`coffer_vtpm::evidence::AzureEvidence`]. It talks to the TPM through tss-esapi 7.7 and
//!   the system libtss2; the TCTI is configurable (`device:/dev/tpmrm0` by default,
//!   `swtpm:host=127.0.0.1,port=N` in tests).
//! - [`provision_swtpm`] (host side, feature `sim`, on by default): makes an swtpm an "Azure
//!   vTPM" whose HCL report carries a real-format SEV-SNP report signed by a
//!   [`coffer_sim::SimRoot`]: an RSA-2048 restricted signing AK persisted at 0x81000003, and a
//!   synthetic HCL report in NV 0x01400001 whose `report_data` binds runtime claims naming that
//!   AK.
//! - [`seal`] (guest side): the vTPM sealing key behind
//!   [`AzureVtpmEvidence`]'s `sealing_key`: a 32-byte secret sealed in the vTPM as a persistent
//!   data object at 0x8100C0FF, released only by a PolicyPCR session over sha256 PCRs 4, 9, 11
//!   with the values of the boot that created it; the key is HKDF-SHA256 of it and the caller's
//!   context.
//! - [`tpm`]: the handles involved and a listing of what is loaded in a TPM (to show nothing is
//!   left behind).
//!
//! **What it trusts:** nothing for the verifier's sake. It collects evidence; it does not judge
//! it. Whoever receives the evidence verifies it with `coffer-verify` (the SNP report) and
//! `coffer-vtpm` (binding, AK, quote, PCRs). The provider relies on the TPM only to answer
//! commands, and on the TCTI it was given to reach the right TPM.
//!
//! **What it checks** (to fail early, on the attester, with a named error rather than send
//! evidence that can never verify): the PCR selection (indices 0..24, not empty), that the HCL
//! report parses and its `HCLAkPub` is the key at 0x81000003, that the PCR values it read are
//! those the quote covers (re-read if a PCR moved in between), and that the quote fits
//! coffer-vtpm's container. For the sealing key: that the object at 0x8100C0FF is a
//! policy-only sealed data object and its policy is the PCR policy of this boot's values, and it
//! never creates a secret over an existing one (a mismatch fails closed). It flushes every
//! transient object and TPM session it creates and closes every ESYS handle it opens, on error
//! paths too.
//!
//! This crate links the system libtss2 (Debian: `libtss2-dev`, found with `pkg-config`), which is
//! shared-only on Debian, so it links glibc: it belongs in a glibc guest image or on the host,
//! never in the static musl appliance binaries (those verify, with pure-Rust `coffer-vtpm`).

#![forbid(unsafe_code)]

mod error;
mod evidence;
mod provider;
#[cfg(feature = "sim")]
mod provision;
pub mod seal;
#[cfg(feature = "sim")]
pub mod swtpm;
pub mod tpm;

#[cfg(feature = "sim")]
pub use error::ProvisionError;
pub use error::{ProviderError, SealError};
pub use evidence::AzureVtpmEvidence;
pub use provider::{
    AzureVtpmProvider, Collected, ReportRefresh, UserDataOutcome, NONCE_SIZE, PCR_ATTEMPTS,
};
#[cfg(feature = "sim")]
pub use provision::{provision_swtpm, Provisioned, SimPlatform, SWTPM_NV_INDEX_MAX};
pub use tpm::{
    LoadedHandles, AK_PERSISTENT_HANDLE, DEFAULT_TCTI, HCL_REPORT_NV_INDEX, USER_DATA_NV_INDEX,
};
