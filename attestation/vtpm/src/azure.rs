//! The whole Azure vTPM path in one call: HCL report binding, the AK from the runtime claims,
//! and the quote against a nonce and PCR pins.
//!
//! Chain of trust, and which half this crate checks:
//!
//! 1. AMD's VCEK signs the SEV-SNP report. **Not here:** the SEV-SNP report verifier checks the
//!    signature, VCEK chain, TCB, policy and Microsoft's `id_key_digest` on
//!    [`HclReport::snp_report`], and must **not** compare REPORT_DATA with a nonce of its own:
//!    on Azure REPORT_DATA is the claims hash, checked here.
//! 2. REPORT_DATA binds the runtime claims ([`CheckId::HclClaimsHash`],
//!    [`CheckId::HclReportDataTail`]).
//! 3. The claims carry the AK ([`CheckId::HclAkPub`]).
//! 4. The AK signs the quote over the PCRs and the verifier's nonce (the quote checks).
//!
//! Evidence is accepted only if both this verification and the SNP report verification pass,
//! on the same HCL report.

use crate::check::{CheckId, CheckResult, Verification};
use crate::hcl::HclReport;
use crate::pins::PcrPins;
use crate::quote::{verify_quote_inner, Quote};

/// Verify the vTPM half of Azure CVM evidence: `hcl` (parsed from NV 0x01400001), `quote` by the
/// AK the claims carry, with the verifier's fresh `nonce`, against `pins`. Every check runs; the
/// SNP report inside `hcl` still has to be verified separately (module docs).
pub fn verify_azure_vtpm(
    hcl: &HclReport,
    quote: &Quote,
    nonce: &[u8],
    pins: &PcrPins,
) -> Verification {
    verify(hcl, quote, nonce, Some(pins))
}

/// [`verify_azure_vtpm`] without PCR pins: the evidence is genuine and fresh (binding, AK, quote
/// signature, nonce, PCR digest), but nothing is said about *what* booted. Never release a
/// secret on this alone.
pub fn verify_azure_vtpm_authenticity(
    hcl: &HclReport,
    quote: &Quote,
    nonce: &[u8],
) -> Verification {
    verify(hcl, quote, nonce, None)
}

fn verify(hcl: &HclReport, quote: &Quote, nonce: &[u8], pins: Option<&PcrPins>) -> Verification {
    let mut v = hcl.check_binding();
    let ak = hcl.ak_public_key();
    v.push(match &ak {
        Ok(_) => CheckResult::pass(CheckId::HclAkPub),
        Err(e) => CheckResult::fail(
            CheckId::HclAkPub,
            "one RSA JWK with kid HCLAkPub of at least 2048 bits",
            e.to_string(),
        ),
    });
    v.extend(verify_quote_inner(ak.as_ref().ok(), quote, nonce, pins));
    v
}
