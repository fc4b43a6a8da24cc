//! The certificate chain: ARK → ASK → VCEK, or ARK → ASVK → VLEK.
//!
//! The VEK's issuer name selects the generation and the kind of key (`SEV-Milan` signs Milan
//! VCEKs, `SEV-VLEK-Milan` Milan VLEKs, ...). That name is not trusted for itself: it only picks
//! which built-in ARK the chain must end at, and the signatures then have to verify. Every link
//! is checked for its signature (AMD's RSASSA-PSS profile, issuer name equal to the issuer's
//! subject) and every certificate for its dates against the caller's clock.

use std::fmt;

use serde::Serialize;

use crate::cache::SignatureCache;
use crate::certs::Certificate;
use crate::checks::results::{CertRole, CheckId, CheckResult};
use crate::policy::TrustRoot;
use crate::roots::{AmdRoots, RootSet, SIMULATION_ASK_CN, SIMULATION_GENERATION};
use crate::tcb::Generation;
use crate::time::Timestamp;

/// Which kind of versioned endorsement key signed the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum VekKind {
    /// Versioned Chip Endorsement Key: unique to the chip and its TCB; carries the chip ID.
    Vcek,
    /// Versioned Loaded Endorsement Key: provisioned by a cloud provider, no chip ID.
    Vlek,
}

impl VekKind {
    /// The role of this key in a chain.
    pub fn role(self) -> CertRole {
        match self {
            VekKind::Vcek => CertRole::Vcek,
            VekKind::Vlek => CertRole::Vlek,
        }
    }

    /// The role of the intermediate that signs this kind of key (ASK or ASVK).
    pub fn intermediate_role(self) -> CertRole {
        match self {
            VekKind::Vcek => CertRole::Ask,
            VekKind::Vlek => CertRole::Asvk,
        }
    }
}

impl fmt::Display for VekKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VekKind::Vcek => "VCEK",
            VekKind::Vlek => "VLEK",
        })
    }
}

/// The generation and kind of key an AMD issuer common name stands for.
pub fn classify_issuer(issuer_cn: &str) -> Option<(Generation, VekKind)> {
    Generation::ALL.into_iter().find_map(|g| {
        if issuer_cn == format!("SEV-{}", g.name()) {
            Some((g, VekKind::Vcek))
        } else if issuer_cn == format!("SEV-VLEK-{}", g.name()) {
            Some((g, VekKind::Vlek))
        } else {
            None
        }
    })
}

/// The chain checks and what they established.
#[derive(Debug, Clone)]
pub(crate) struct ChainOutcome {
    pub generation: Option<Generation>,
    pub kind: Option<VekKind>,
    pub checks: Vec<CheckResult>,
}

/// Checks the chain from `vek` up to the built-in ARK of its generation. `ask` (ASK or ASVK) and
/// `ark` are the certificates that came with the evidence, if any; without them the built-in
/// ones are used.
///
/// `required` is the policy's `trust_root`; `None` (authenticity only) accepts whichever root
/// `roots` trusts. A VEK issued by `SEV-Sim` is taken to the simulation root, and only if
/// `roots` holds one (`AmdRoots::with_simulation_root`).
pub(crate) fn check_chain(
    vek: &Certificate,
    ask: Option<&Certificate>,
    ark: Option<&Certificate>,
    roots: &AmdRoots,
    at: Timestamp,
    required: Option<TrustRoot>,
    cache: Option<&SignatureCache>,
) -> ChainOutcome {
    let mut checks = Vec::new();
    let issuer_cn = vek.issuer_cn().unwrap_or_default();
    let simulated = issuer_cn == SIMULATION_ASK_CN;
    let classified = if simulated {
        roots
            .simulation()
            .map(|_| (SIMULATION_GENERATION, VekKind::Vcek))
    } else {
        classify_issuer(&issuer_cn)
    };
    let set: Option<&RootSet> = if simulated {
        roots.simulation()
    } else {
        classified.and_then(|(g, _)| roots.get(g))
    };
    checks.push(CheckResult::new(
        CheckId::ChainVekIssuer,
        set.is_some(),
        "issued by SEV-<Milan|Genoa|Turin> (VCEK) or SEV-VLEK-<Milan|Genoa|Turin> (VLEK)",
        match classified {
            Some((g, kind)) => format!("issuer CN={issuer_cn}: {g} {kind}"),
            None => format!("issuer CN={issuer_cn:?}: no AMD chain for it, nothing to verify"),
        },
    ));
    checks.push(trust_root_check(simulated, roots, required));
    let (Some((generation, kind)), Some(set)) = (classified, set) else {
        return ChainOutcome {
            generation: None,
            kind: None,
            checks,
        };
    };

    // The ARK: always the built-in one (or the caller's simulation ARK); one given with the
    // evidence must be identical.
    let builtin_ark = &set.ark;
    let fingerprint = |c: &Certificate| hex::encode(c.sha256());
    let ark_label = if simulated {
        "caller-supplied simulation ARK-Sim".to_owned()
    } else {
        format!("built-in ARK-{generation}")
    };
    checks.push(match ark {
        None => CheckResult::new(
            CheckId::ChainArkPinned,
            true,
            format!("{ark_label} sha256 {}", fingerprint(builtin_ark)),
            "none given: the built-in ARK is used",
        ),
        Some(given) => CheckResult::new(
            CheckId::ChainArkPinned,
            given == builtin_ark,
            format!("{ark_label} sha256 {}", fingerprint(builtin_ark)),
            format!(
                "given {} sha256 {}",
                given.subject_cn().unwrap_or_default(),
                fingerprint(given)
            ),
        ),
    });
    checks.push(signature_check(
        CertRole::Ark,
        builtin_ark,
        builtin_ark,
        cache,
    ));

    let builtin_intermediate = match kind {
        VekKind::Vcek => &set.ask,
        VekKind::Vlek => &set.asvk,
    };
    let intermediate = ask.unwrap_or(builtin_intermediate);
    let intermediate_role = kind.intermediate_role();
    checks.push(signature_check(
        intermediate_role,
        intermediate,
        builtin_ark,
        cache,
    ));
    checks.push(signature_check(kind.role(), vek, intermediate, cache));

    for (role, cert) in [
        (CertRole::Ark, builtin_ark),
        (intermediate_role, intermediate),
        (kind.role(), vek),
    ] {
        checks.push(validity_check(role, cert, at));
    }
    ChainOutcome {
        generation: Some(generation),
        kind: Some(kind),
        checks,
    }
}

/// `chain.trust_root`: the kind of root the VEK's issuer leads to, against what is trusted.
fn trust_root_check(simulated: bool, roots: &AmdRoots, required: Option<TrustRoot>) -> CheckResult {
    let have_sim = roots.simulation().is_some();
    let got = if simulated {
        TrustRoot::Simulation
    } else {
        TrustRoot::Amd
    };
    let expected = match required {
        Some(TrustRoot::Amd) => "AMD root (policy trust_root = \"amd\")".to_owned(),
        Some(TrustRoot::Simulation) => {
            "the Coffer simulation root (policy trust_root = \"simulation\", roots from AmdRoots::with_simulation_root)".to_owned()
        }
        None if have_sim => "AMD root or the caller-supplied Coffer simulation root".to_owned(),
        None => "AMD root".to_owned(),
    };
    let mut got_text = match got {
        TrustRoot::Amd => "an AMD root (VEK not issued by SEV-Sim)".to_owned(),
        TrustRoot::Simulation => format!(
            "the Coffer simulation root (ARK-Sim; VEK issued by {SIMULATION_ASK_CN}): evidence from a simulated secure processor, NOT AMD hardware"
        ),
    };
    let root_trusted = got == TrustRoot::Amd || have_sim;
    if !root_trusted {
        got_text.push_str("; these roots do not trust it (no AmdRoots::with_simulation_root)");
    }
    let passed = root_trusted && required.is_none_or(|r| r == got);
    CheckResult::new(CheckId::ChainTrustRoot, passed, expected, got_text)
}

fn signature_check(
    role: CertRole,
    cert: &Certificate,
    issuer: &Certificate,
    cache: Option<&SignatureCache>,
) -> CheckResult {
    let subject = cert.subject_cn().unwrap_or_default();
    let issuer_cn = issuer.subject_cn().unwrap_or_default();
    let expected = format!("{subject} signed by {issuer_cn} (RSASSA-PSS SHA-384)");
    let names_chain = cert.issued_by_name(issuer);
    if names_chain && cache.is_some_and(|c| c.contains(cert, issuer)) {
        return CheckResult::new(
            CheckId::ChainSignature(role),
            true,
            expected,
            "verified (this pair verified before: cached)",
        );
    }
    let outcome = if !names_chain {
        Err(format!(
            "{subject}'s issuer is CN={}, but the certificate above it is CN={issuer_cn}",
            cert.issuer_cn().unwrap_or_default()
        ))
    } else {
        cert.verify_signed_by(issuer)
    };
    match outcome {
        Ok(()) => {
            if let Some(cache) = cache {
                cache.insert(cert, issuer);
            }
            CheckResult::new(CheckId::ChainSignature(role), true, expected, "verified")
        }
        Err(why) => CheckResult::new(CheckId::ChainSignature(role), false, expected, why),
    }
}

fn validity_check(role: CertRole, cert: &Certificate, at: Timestamp) -> CheckResult {
    let (from, to) = (cert.not_before(), cert.not_after());
    let state = if at < from {
        "not yet valid"
    } else if at > to {
        "expired"
    } else {
        "valid"
    };
    CheckResult::new(
        CheckId::ChainValidity(role),
        cert.valid_at(at),
        format!("{} valid at {at}", cert.subject_cn().unwrap_or_default()),
        format!("notBefore {from}, notAfter {to}: {state}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_names_map_to_generation_and_kind() {
        assert_eq!(
            classify_issuer("SEV-Milan"),
            Some((Generation::Milan, VekKind::Vcek))
        );
        assert_eq!(
            classify_issuer("SEV-VLEK-Turin"),
            Some((Generation::Turin, VekKind::Vlek))
        );
        assert_eq!(classify_issuer("ARK-Milan"), None);
        assert_eq!(classify_issuer("SEV-milan"), None);
        assert_eq!(classify_issuer(""), None);
    }
}
