//! The decision: one named result per check, and the verdict made of them.
//!
//! Check names are stable (scripts and dashboards match on them); [`CheckId::name`] is the single
//! place they are spelled. A verdict accepts only if it holds at least one check and every check
//! passed: nothing is accepted by omission. Human-readable text is made elsewhere
//! ([`crate::explain`]); this module holds data only.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::chain::VekKind;
use crate::tcb::{Generation, TcbComponent};

/// Which certificate of the chain a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs).
    Ask,
    /// AMD SEV VLEK Key (signs VLEKs).
    Asvk,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl CertRole {
    /// Lower-case name used in check names (`ark`, `ask`, `asvk`, `vcek`, `vlek`).
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Ark => "ark",
            CertRole::Ask => "ask",
            CertRole::Asvk => "asvk",
            CertRole::Vcek => "vcek",
            CertRole::Vlek => "vlek",
        }
    }
}

/// Which TCB of the report a policy floor applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcbKind {
    /// REPORTED_TCB (what the VCEK was derived for; what the host chose to report).
    Reported,
    /// COMMITTED_TCB (the platform cannot roll back below it).
    Committed,
}

/// A check, by what it looks at. [`CheckId::name`] gives its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckId {
    /// `chain.vek_issuer`: the VEK was issued by a known AMD CA, which fixes the generation and
    /// whether it is a VCEK or a VLEK.
    ChainVekIssuer,
    /// `chain.ark.pinned`: the ARK is the built-in one (a given ARK must be byte-identical).
    ChainArkPinned,
    /// `chain.trust_root`: the chain ends at the kind of root the caller trusts: AMD's built-in
    /// roots (the default), or the Coffer simulation root only when the policy says
    /// `trust_root = "simulation"` and the caller supplied it.
    ChainTrustRoot,
    /// `chain.<role>.signature`: the certificate is signed by the one above it (the ARK by
    /// itself), names chained, AMD's RSASSA-PSS profile.
    ChainSignature(CertRole),
    /// `chain.<role>.validity`: the clock is within the certificate's validity period.
    ChainValidity(CertRole),
    /// `report.signature_algo`: SIGNATURE_ALGO is 1 (ECDSA P-384 with SHA-384).
    ReportSignatureAlgo,
    /// `report.mask_chip_key`: MASK_CHIP_KEY is 0 (the report is signed at all).
    ReportMaskChipKey,
    /// `report.signing_key`: KEY_INFO.SIGNING_KEY names the kind of key given (VCEK or VLEK).
    ReportSigningKey,
    /// `report.reserved`: reserved fields and bits hold what the ABI requires.
    ReportReserved,
    /// `report.signature`: the ECDSA P-384 signature over bytes 0x000..0x2A0 verifies with the
    /// VEK's key.
    ReportSignature,
    /// `report.processor`: the CPUID family/model of a v3+ report belongs to the VEK's generation.
    ReportProcessor,
    /// `vek.chip_id`: the VCEK's hwID equals the report's CHIP_ID.
    VekChipId,
    /// `vek.reported_tcb`: the VEK's SPL extensions equal the report's REPORTED_TCB.
    VekReportedTcb,
    /// `policy.report_version`: VERSION is at least the policy's minimum.
    PolicyReportVersion,
    /// `policy.processor`: the generation is one the policy allows.
    PolicyProcessor,
    /// `policy.cpuid`: the CPUID family/model is one the policy allows.
    PolicyCpuid,
    /// `policy.measurement`: MEASUREMENT is one the policy allows.
    PolicyMeasurement,
    /// `policy.<reported|committed>_tcb[.<component>]`: a TCB component is at least the floor
    /// (without a component: no floor could be applied at all).
    PolicyTcb(TcbKind, Option<TcbComponent>),
    /// `policy.debug`: POLICY.DEBUG is clear, unless the policy allows debugging.
    PolicyDebug,
    /// `policy.migration_agent`: POLICY.MIGRATE_MA is clear, unless the policy allows it.
    PolicyMigrationAgent,
    /// `policy.smt`: SMT is off on the platform, unless the policy allows it.
    PolicySmt,
    /// `policy.vmpl`: VMPL is one the policy allows.
    PolicyVmpl,
    /// `policy.chip_id`: CHIP_ID is on the policy's allow-list.
    PolicyChipId,
    /// `policy.host_data`: HOST_DATA equals the expected value.
    PolicyHostData,
    /// `policy.report_data`: REPORT_DATA equals the expected value.
    PolicyReportData,
    /// `policy.id_key_digest`: ID_KEY_DIGEST is on the allow-list.
    PolicyIdKeyDigest,
    /// `policy.author_key_digest`: an author key is present and its digest is on the allow-list.
    PolicyAuthorKeyDigest,
    /// `policy.guest_svn`: GUEST_SVN is at least the minimum.
    PolicyGuestSvn,
}

impl CheckId {
    /// The stable name, e.g. `report.signature` or `policy.reported_tcb.snp`.
    pub fn name(&self) -> String {
        match self {
            CheckId::ChainVekIssuer => "chain.vek_issuer".into(),
            CheckId::ChainArkPinned => "chain.ark.pinned".into(),
            CheckId::ChainTrustRoot => "chain.trust_root".into(),
            CheckId::ChainSignature(role) => format!("chain.{}.signature", role.name()),
            CheckId::ChainValidity(role) => format!("chain.{}.validity", role.name()),
            CheckId::ReportSignatureAlgo => "report.signature_algo".into(),
            CheckId::ReportMaskChipKey => "report.mask_chip_key".into(),
            CheckId::ReportSigningKey => "report.signing_key".into(),
            CheckId::ReportReserved => "report.reserved".into(),
            CheckId::ReportSignature => "report.signature".into(),
            CheckId::ReportProcessor => "report.processor".into(),
            CheckId::VekChipId => "vek.chip_id".into(),
            CheckId::VekReportedTcb => "vek.reported_tcb".into(),
            CheckId::PolicyReportVersion => "policy.report_version".into(),
            CheckId::PolicyProcessor => "policy.processor".into(),
            CheckId::PolicyCpuid => "policy.cpuid".into(),
            CheckId::PolicyMeasurement => "policy.measurement".into(),
            CheckId::PolicyTcb(kind, component) => {
                let kind = match kind {
                    TcbKind::Reported => "reported",
                    TcbKind::Committed => "committed",
                };
                match component {
                    Some(c) => format!("policy.{kind}_tcb.{}", c.name()),
                    None => format!("policy.{kind}_tcb"),
                }
            }
            CheckId::PolicyDebug => "policy.debug".into(),
            CheckId::PolicyMigrationAgent => "policy.migration_agent".into(),
            CheckId::PolicySmt => "policy.smt".into(),
            CheckId::PolicyVmpl => "policy.vmpl".into(),
            CheckId::PolicyChipId => "policy.chip_id".into(),
            CheckId::PolicyHostData => "policy.host_data".into(),
            CheckId::PolicyReportData => "policy.report_data".into(),
            CheckId::PolicyIdKeyDigest => "policy.id_key_digest".into(),
            CheckId::PolicyAuthorKeyDigest => "policy.author_key_digest".into(),
            CheckId::PolicyGuestSvn => "policy.guest_svn".into(),
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The outcome of one check, with what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Which check.
    pub id: CheckId,
    /// Whether it passed.
    pub passed: bool,
    /// What the check requires.
    pub expected: String,
    /// What the evidence holds (or why it could not be checked).
    pub got: String,
}

impl CheckResult {
    /// A result from a condition.
    pub fn new(
        id: CheckId,
        passed: bool,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Self {
            id,
            passed,
            expected: expected.into(),
            got: got.into(),
        }
    }
}

impl Serialize for CheckResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("CheckResult", 4)?;
        s.serialize_field("name", &self.id.name())?;
        s.serialize_field("passed", &self.passed)?;
        s.serialize_field("expected", &self.expected)?;
        s.serialize_field("got", &self.got)?;
        s.end()
    }
}

/// What a verdict covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Only that the report is genuine AMD evidence (chain, dates, signature, chip ID, TCB
    /// against the certificate). Says nothing about what runs in the VM.
    AuthenticityOnly,
    /// Authenticity and a policy.
    Policy,
}

/// Detail kept when the measurement is not allowed, for a later "likely cause" explanation
/// (see [`crate::explain::MeasurementAdvisor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementMismatch {
    /// The report's MEASUREMENT.
    pub got: [u8; 48],
    /// The measurements the policy allows.
    pub allowed: Vec<[u8; 48]>,
}

/// The verdict on a piece of evidence: every check that ran, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub(crate) scope: Scope,
    pub(crate) checks: Vec<CheckResult>,
    pub(crate) generation: Option<Generation>,
    pub(crate) signer: Option<VekKind>,
    pub(crate) measurement_mismatch: Option<MeasurementMismatch>,
}

impl Verdict {
    /// True only if there is at least one check and every check passed.
    pub fn accepted(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// What the verdict covers.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Every check, in the order it ran.
    pub fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// The result of one check, if it ran.
    pub fn check(&self, id: CheckId) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The processor generation, from the VEK's issuer (or, failing that, the report's CPUID).
    pub fn generation(&self) -> Option<Generation> {
        self.generation
    }

    /// The kind of key that the certificate given is (from its issuer), if known.
    pub fn signer(&self) -> Option<VekKind> {
        self.signer
    }

    /// Set when `policy.measurement` failed.
    pub fn measurement_mismatch(&self) -> Option<&MeasurementMismatch> {
        self.measurement_mismatch.as_ref()
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Verdict", 5)?;
        s.serialize_field("accepted", &self.accepted())?;
        s.serialize_field("scope", &self.scope)?;
        s.serialize_field("generation", &self.generation)?;
        s.serialize_field("signer", &self.signer)?;
        s.serialize_field("checks", &self.checks)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_verdict_is_not_accepted() {
        let verdict = Verdict {
            scope: Scope::Policy,
            checks: vec![],
            generation: None,
            signer: None,
            measurement_mismatch: None,
        };
        assert!(!verdict.accepted());
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(
            CheckId::ChainSignature(CertRole::Asvk).name(),
            "chain.asvk.signature"
        );
        assert_eq!(
            CheckId::PolicyTcb(TcbKind::Committed, Some(TcbComponent::Ucode)).name(),
            "policy.committed_tcb.ucode"
        );
        assert_eq!(
            CheckId::PolicyTcb(TcbKind::Reported, None).name(),
            "policy.reported_tcb"
        );
    }
}
