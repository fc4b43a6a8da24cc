//! The entry points: evidence in, verdict out.
//!
//! No I/O: the caller reads the files, picks the roots and the clock. Evidence that cannot be
//! parsed is an [`EvidenceError`]; everything else is a [`Verdict`] listing every check.

use crate::cache::SignatureCache;
use crate::certs::Certificate;
use crate::chain::check_chain;
use crate::checks::authenticity::check_report;
use crate::checks::policy::check_policy;
use crate::checks::results::{Scope, Verdict};
use crate::error::EvidenceError;
use crate::policy::{Policy, TrustRoot};
use crate::report::Report;
use crate::roots::AmdRoots;
use crate::tcb::Generation;
use crate::time::Timestamp;

/// An attestation report with the certificates that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The attestation report.
    pub report: Report,
    /// The VCEK or VLEK that signed it.
    pub vek: Certificate,
    /// The ASK (for a VCEK) or ASVK (for a VLEK), if provided; otherwise the built-in one is used.
    pub ask: Option<Certificate>,
    /// The ARK, if provided; it must equal the built-in one.
    pub ark: Option<Certificate>,
}

impl Evidence {
    /// Parses a report and its certificates (each PEM or DER).
    pub fn parse(
        report: &[u8],
        vek: &[u8],
        ask: Option<&[u8]>,
        ark: Option<&[u8]>,
    ) -> Result<Self, EvidenceError> {
        Ok(Self {
            report: Report::parse(report)?,
            vek: Certificate::from_pem_or_der(vek).map_err(EvidenceError::Vek)?,
            ask: ask
                .map(Certificate::from_pem_or_der)
                .transpose()
                .map_err(EvidenceError::Ask)?,
            ark: ark
                .map(Certificate::from_pem_or_der)
                .transpose()
                .map_err(EvidenceError::Ark)?,
        })
    }
}

/// Verifies that the evidence is genuine **and** acceptable under `policy`, with certificate
/// dates checked at `at`. Every check runs; see [`Verdict::accepted`].
pub fn verify(evidence: &Evidence, roots: &AmdRoots, policy: &Policy, at: Timestamp) -> Verdict {
    verify_with_cache(evidence, roots, policy, at, None)
}

/// [`verify`], skipping certificate signature checks that already passed with this `cache`
/// (see [`SignatureCache`]: only the signatures of byte-identical certificate pairs are
/// remembered; every other check runs every time).
pub fn verify_with_cache(
    evidence: &Evidence,
    roots: &AmdRoots,
    policy: &Policy,
    at: Timestamp,
    cache: Option<&SignatureCache>,
) -> Verdict {
    let mut verdict = authenticity(evidence, roots, at, Some(policy.trust_root), cache);
    let (checks, mismatch) = check_policy(&evidence.report, policy, verdict.generation);
    verdict.checks.extend(checks);
    verdict.measurement_mismatch = mismatch;
    verdict.scope = Scope::Policy;
    verdict
}

/// Verifies only that the evidence is genuine AMD SEV-SNP evidence: chain to the built-in ARK
/// (or to the simulation ARK, only if `roots` came from [`AmdRoots::with_simulation_root`]),
/// certificate dates at `at`, report signature, chip ID and TCB against the VEK.
///
/// An accepted verdict from this function says nothing about *what* runs in the VM (no
/// measurement, debug, TCB floor or VMPL check): never use it to release a secret. Use
/// [`verify`] with a [`Policy`] for that.
pub fn verify_authenticity_only(evidence: &Evidence, roots: &AmdRoots, at: Timestamp) -> Verdict {
    authenticity(evidence, roots, at, None, None)
}

fn authenticity(
    evidence: &Evidence,
    roots: &AmdRoots,
    at: Timestamp,
    required: Option<TrustRoot>,
    cache: Option<&SignatureCache>,
) -> Verdict {
    let chain = check_chain(
        &evidence.vek,
        evidence.ask.as_ref(),
        evidence.ark.as_ref(),
        roots,
        at,
        required,
        cache,
    );
    // The generation comes from the AMD-signed VEK; a v3+ report's CPUID is the fallback when
    // the issuer is unknown (the chain has then failed, and so will the verdict).
    let generation = chain.generation.or_else(|| {
        evidence
            .report
            .fields()
            .cpuid
            .and_then(|c| Generation::from_cpuid(c.family, c.model))
    });
    let mut checks = chain.checks;
    checks.extend(check_report(
        &evidence.report,
        &evidence.vek,
        chain.kind,
        chain.generation,
    ));
    Verdict {
        scope: Scope::AuthenticityOnly,
        checks,
        generation,
        signer: chain.kind,
        measurement_mismatch: None,
    }
}
