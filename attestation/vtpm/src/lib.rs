//! Azure confidential-VM vTPM evidence, and the PCR values a Coffer UKI boot should produce.
//!
//! On Azure SEV-SNP CVMs the guest cannot ask the AMD secure processor for a report: Microsoft's
//! paravisor (the HCL) does so at boot and stores it, with runtime claims carrying the vTPM
//! attestation key (AK), in vTPM NV index 0x01400001. The guest OS is then attested by a TPM2
//! quote from that AK. The SNP launch measurement covers Microsoft's paravisor and firmware, not
//! our image; our image is pinned through PCRs 4, 9 and 11.
//!
//! **What it owns:**
//! - [`hcl`]: parsing the HCL report; the raw SNP report for the SNP verifier; the
//!   `report_data` binding of the runtime claims; the AK JWK ([`ak`]).
//! - [`tpm`], [`quote`]: TPM2 structures parsed by hand (TPMS_ATTEST, TPML_PCR_SELECTION,
//!   TPMT_SIGNATURE) and quote verification: signature, nonce, PCR selection and digest.
//! - [`pins`], [`check`]: PCR pins, and results where every check runs and is reported by a
//!   stable name with expected and actual values.
//! - [`azure`]: the vTPM half of Azure evidence in one call.
//! - [`eventlog`]: the TCG2 crypto-agile event log and its replay.
//! - [`pe`], [`predict`]: Authenticode hashes, and offline prediction of PCRs 4, 9 and 11 for a
//!   UKI booted with systemd-stub 252.
//!
//! **What it trusts:** nothing it is given. The HCL report is trusted only once the SNP report
//! verifier has accepted its hardware report (a separate crate; see [`azure`] for how the two
//! combine); PCR values only once the quote's digest covers them; event logs never (they
//! explain and cross-check, the quote decides).
//!
//! **What it checks:** structure (every parser is bounds-checked, returns a typed error naming
//! the field, and never panics: tested with truncations and random mutations of real inputs),
//! then the checks listed in [`check::CheckId`].
//!
//! Pure Rust, no I/O, no clock: callers pass bytes. No tss-esapi (it needs the system libtss2):
//! the verifier must build anywhere.

#![forbid(unsafe_code)]
// No panics on any input: slices are taken with `get`, never by indexing.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod ak;
pub mod azure;
pub mod check;
pub mod eventlog;
pub mod evidence;
pub mod hcl;
pub mod pe;
pub mod pins;
pub mod predict;
pub mod quote;
mod reader;
pub mod tpm;

pub use ak::AkPublicKey;
pub use azure::{verify_azure_vtpm, verify_azure_vtpm_authenticity};
pub use check::{CheckId, CheckResult, Outcome, Verification};
pub use eventlog::EventLog;
pub use hcl::{HclReport, RuntimeClaims};
pub use pins::PcrPins;
pub use quote::{verify_quote, Quote};
pub use reader::Truncated;
