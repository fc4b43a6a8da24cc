//! Structured, explainable verification results.
//!
//! A verification never stops at the first failure: every check runs and is reported under a
//! stable name (the [`CheckId`]'s `Display`, e.g. `quote.nonce`, `pcr.11`) with what was expected
//! and what was found. Callers decide on [`Verification::passed`]; logs and people read
//! [`Verification::failures`]. Parse errors of the evidence itself (a report too short to hold a
//! header, say) are not checks: they are returned as typed errors before any check runs.

use std::fmt;

/// The stable name of one check. `Display` gives the name used in logs and reports; it never
/// changes meaning once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckId {
    /// `hcl.report_data.claims_sha256`: the hardware report's `report_data[0..32]` equals
    /// SHA-256 of the runtime-claims JSON, byte for byte as stored in the HCL report.
    HclClaimsHash,
    /// `hcl.report_data.tail_zero`: `report_data[32..64]` is zero.
    HclReportDataTail,
    /// `hcl.claims.ak_pub`: the runtime claims parse and hold exactly one usable RSA JWK with
    /// `kid` `HCLAkPub` (the vTPM attestation key).
    HclAkPub,
    /// `quote.signature`: the quote's signature over the raw TPMS_ATTEST bytes verifies with the
    /// AK (RSASSA-PKCS1-v1_5, SHA-256).
    QuoteSignature,
    /// `quote.attest.parse`: the signed bytes are a well-formed TPMS_ATTEST holding a
    /// TPMS_QUOTE_INFO.
    QuoteAttestParse,
    /// `quote.attest.magic`: TPMS_ATTEST.magic is TPM_GENERATED_VALUE (0xff544347), so the TPM
    /// produced the structure (a restricted key signs nothing else).
    QuoteMagic,
    /// `quote.attest.type`: TPMS_ATTEST.type is TPM_ST_ATTEST_QUOTE (0x8018).
    QuoteType,
    /// `quote.nonce`: TPMS_ATTEST.extraData equals the verifier's nonce (freshness).
    QuoteNonce,
    /// `quote.pcr_selection`: the quote selects only sha256-bank PCRs, and exactly as many PCR
    /// values were supplied as it selects.
    QuotePcrSelection,
    /// `quote.pcr_digest`: SHA-256 over the supplied PCR values, in selection order, equals
    /// TPMS_QUOTE_INFO.pcrDigest. Until this passes the supplied PCR values are unauthenticated.
    QuotePcrDigest,
    /// `pcr.pins_present`: the policy pins at least one PCR (a quote checked against no pins
    /// says nothing about the guest OS).
    PcrPinsPresent,
    /// `pcr.<n>`: PCR `n` (sha256 bank) is quoted and holds one of its pinned values.
    Pcr(u8),
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HclClaimsHash => f.write_str("hcl.report_data.claims_sha256"),
            Self::HclReportDataTail => f.write_str("hcl.report_data.tail_zero"),
            Self::HclAkPub => f.write_str("hcl.claims.ak_pub"),
            Self::QuoteSignature => f.write_str("quote.signature"),
            Self::QuoteAttestParse => f.write_str("quote.attest.parse"),
            Self::QuoteMagic => f.write_str("quote.attest.magic"),
            Self::QuoteType => f.write_str("quote.attest.type"),
            Self::QuoteNonce => f.write_str("quote.nonce"),
            Self::QuotePcrSelection => f.write_str("quote.pcr_selection"),
            Self::QuotePcrDigest => f.write_str("quote.pcr_digest"),
            Self::PcrPinsPresent => f.write_str("pcr.pins_present"),
            Self::Pcr(index) => write!(f, "pcr.{index}"),
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check held.
    Passed,
    /// The check failed; both sides are human-readable (digests in lowercase hex).
    Failed {
        /// What the policy or the protocol required.
        expected: String,
        /// What the evidence holds (or why it could not be evaluated).
        got: String,
    },
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Which check.
    pub id: CheckId,
    /// What it found.
    pub outcome: Outcome,
}

impl CheckResult {
    pub(crate) fn pass(id: CheckId) -> Self {
        Self {
            id,
            outcome: Outcome::Passed,
        }
    }

    pub(crate) fn fail(id: CheckId, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Self {
            id,
            outcome: Outcome::Failed {
                expected: expected.into(),
                got: got.into(),
            },
        }
    }

    /// Passed if `ok`, else failed with the given sides (computed only on failure).
    pub(crate) fn check(id: CheckId, ok: bool, sides: impl FnOnce() -> (String, String)) -> Self {
        if ok {
            Self::pass(id)
        } else {
            let (expected, got) = sides();
            Self::fail(id, expected, got)
        }
    }

    /// True if the check held.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Passed => write!(f, "{}: passed", self.id),
            Outcome::Failed { expected, got } => {
                write!(f, "{}: FAILED (expected {expected}, got {got})", self.id)
            }
        }
    }
}

/// Every check of one verification, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    checks: Vec<CheckResult>,
}

impl Verification {
    pub(crate) fn push(&mut self, result: CheckResult) {
        self.checks.push(result);
    }

    pub(crate) fn extend(&mut self, other: Verification) {
        self.checks.extend(other.checks);
    }

    /// True only if at least one check ran and every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(CheckResult::passed)
    }

    /// All checks, in the order they ran.
    pub fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed())
    }

    /// The result of one check, if it ran.
    pub fn get(&self, id: CheckId) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The ids of the failed checks (handy in tests and logs).
    pub fn failed_ids(&self) -> Vec<CheckId> {
        self.failures().map(|c| c.id).collect()
    }
}

/// Machine-readable form: `{"name", "passed", "expected", "got"}` per check.
impl serde::Serialize for CheckResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("CheckResult", 4)?;
        out.serialize_field("name", &self.id.to_string())?;
        out.serialize_field("passed", &self.passed())?;
        let (expected, got) = match &self.outcome {
            Outcome::Passed => (None, None),
            Outcome::Failed { expected, got } => (Some(expected), Some(got)),
        };
        out.serialize_field("expected", &expected)?;
        out.serialize_field("got", &got)?;
        out.end()
    }
}

/// Machine-readable form: the list of checks in the order they ran.
impl serde::Serialize for Verification {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.checks.serialize(serializer)
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        assert_eq!(CheckId::Pcr(11).to_string(), "pcr.11");
        assert_eq!(CheckId::QuoteNonce.to_string(), "quote.nonce");
        assert_eq!(
            CheckId::HclClaimsHash.to_string(),
            "hcl.report_data.claims_sha256"
        );
    }

    #[test]
    fn an_empty_verification_does_not_pass() {
        assert!(!Verification::default().passed());
        let mut v = Verification::default();
        v.push(CheckResult::pass(CheckId::QuoteNonce));
        assert!(v.passed());
        v.push(CheckResult::fail(CheckId::Pcr(4), "a", "b"));
        assert!(!v.passed());
        assert_eq!(v.failed_ids(), vec![CheckId::Pcr(4)]);
        assert_eq!(
            v.get(CheckId::Pcr(4)).unwrap().to_string(),
            "pcr.4: FAILED (expected a, got b)"
        );
    }
}
