//! The built-in AMD roots: one ARK, ASK and ASVK per generation.
//!
//! These certificates are the verifier's only trust anchors. They are compiled in from
//! `roots/<generation>/{ark,ask,asvk}.pem`; `roots/PROVENANCE.md` says where they come from and
//! records each DER's SHA-256, which a test below pins. An ASK or ARK that arrives with the
//! evidence is never trusted for itself: a given ARK must equal the built-in one, a given ASK or
//! ASVK must be signed by it.

use crate::certs::Certificate;
use crate::error::CertError;
use crate::tcb::Generation;

/// One generation's AMD certificate authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSet {
    /// The generation.
    pub generation: Generation,
    /// AMD Root Key, self-signed (`ARK-<Generation>`).
    pub ark: Certificate,
    /// AMD SEV Key, signs VCEKs (`SEV-<Generation>`).
    pub ask: Certificate,
    /// AMD SEV VLEK Key, signs VLEKs (`SEV-VLEK-<Generation>`).
    pub asvk: Certificate,
}

/// The AMD roots the verifier trusts, one [`RootSet`] per generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdRoots {
    sets: Vec<RootSet>,
    /// The Coffer simulation root, only when the caller opted in with
    /// [`AmdRoots::with_simulation_root`].
    simulation: Option<RootSet>,
}

/// Common name of the simulated ARK (`coffer-sim`).
pub const SIMULATION_ARK_CN: &str = "ARK-Sim";
/// Common name of the simulated ASK, the issuer of simulated VCEKs (`coffer-sim`).
pub const SIMULATION_ASK_CN: &str = "SEV-Sim";
/// The generation a simulated secure processor reports as (its CPUID and TCB layout).
pub const SIMULATION_GENERATION: Generation = Generation::Genoa;

/// (generation, ark, ask, asvk) PEM text compiled into the crate.
const BUILTIN: [(Generation, &str, &str, &str); 3] = [
    (
        Generation::Milan,
        include_str!("../roots/milan/ark.pem"),
        include_str!("../roots/milan/ask.pem"),
        include_str!("../roots/milan/asvk.pem"),
    ),
    (
        Generation::Genoa,
        include_str!("../roots/genoa/ark.pem"),
        include_str!("../roots/genoa/ask.pem"),
        include_str!("../roots/genoa/asvk.pem"),
    ),
    (
        Generation::Turin,
        include_str!("../roots/turin/ark.pem"),
        include_str!("../roots/turin/ask.pem"),
        include_str!("../roots/turin/asvk.pem"),
    ),
];

impl AmdRoots {
    /// The AMD roots compiled into this crate (Milan, Genoa, Turin).
    ///
    /// Only fails if the embedded data were corrupt, which a test rules out.
    pub fn builtin() -> Result<Self, CertError> {
        let sets = BUILTIN
            .iter()
            .map(|&(generation, ark, ask, asvk)| {
                Ok(RootSet {
                    generation,
                    ark: Certificate::from_pem(ark.as_bytes())?,
                    ask: Certificate::from_pem(ask.as_bytes())?,
                    asvk: Certificate::from_pem(asvk.as_bytes())?,
                })
            })
            .collect::<Result<_, CertError>>()?;
        Ok(Self {
            sets,
            simulation: None,
        })
    }

    /// **Trusts evidence from a simulated secure processor** (`coffer-sim`) in addition to AMD's
    /// roots: `ark_der`/`ask_der` are the simulation root's `ARK-Sim` and `SEV-Sim`
    /// certificates. Such evidence proves nothing about hardware; use this only in tests and CI.
    ///
    /// It is still not enough on its own: [`verify`](crate::verify) accepts simulated evidence
    /// only under a policy with `trust_root = "simulation"` (check `chain.trust_root`), and
    /// rejects AMD evidence under such a policy. [`verify_authenticity_only`](crate::verify_authenticity_only),
    /// which has no policy, accepts simulated evidence with these roots.
    ///
    /// Refused: certificates not named `ARK-Sim`/`SEV-Sim`, an ASK not signed by the ARK, an ARK
    /// not self-signed, or any AMD built-in certificate.
    pub fn with_simulation_root(
        mut self,
        ark_der: &[u8],
        ask_der: &[u8],
    ) -> Result<Self, CertError> {
        let ark = Certificate::from_pem_or_der(ark_der)?;
        let ask = Certificate::from_pem_or_der(ask_der)?;
        fn bad<T>(why: String) -> Result<T, CertError> {
            Err(CertError::NotSimulationRoot(why))
        }
        if ark.subject_cn().as_deref() != Some(SIMULATION_ARK_CN) {
            return bad(format!(
                "ARK subject CN is {:?}, expected {SIMULATION_ARK_CN}",
                ark.subject_cn()
            ));
        }
        if ask.subject_cn().as_deref() != Some(SIMULATION_ASK_CN) {
            return bad(format!(
                "ASK subject CN is {:?}, expected {SIMULATION_ASK_CN}",
                ask.subject_cn()
            ));
        }
        if self.sets.iter().any(|s| {
            [&s.ark, &s.ask, &s.asvk].contains(&&ark) || [&s.ark, &s.ask, &s.asvk].contains(&&ask)
        }) {
            return bad("an AMD root certificate was given as the simulation root".into());
        }
        ark.verify_signed_by(&ark)
            .or_else(|e| bad(format!("ARK is not self-signed: {e}")))?;
        if !ask.issued_by_name(&ark) {
            return bad("ASK is not issued by the ARK's name".into());
        }
        ask.verify_signed_by(&ark)
            .or_else(|e| bad(format!("ASK is not signed by the ARK: {e}")))?;
        self.simulation = Some(RootSet {
            generation: SIMULATION_GENERATION,
            ark,
            // The simulator has no VLEK authority; the ASK stands in so the set is complete, and
            // simulated VEKs are always classified as VCEKs.
            asvk: ask.clone(),
            ask,
        });
        Ok(self)
    }

    /// The simulation root, if the caller opted in with [`AmdRoots::with_simulation_root`].
    pub fn simulation(&self) -> Option<&RootSet> {
        self.simulation.as_ref()
    }

    /// The roots of one generation.
    pub fn get(&self, generation: Generation) -> Option<&RootSet> {
        self.sets.iter().find(|s| s.generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprints recorded in roots/PROVENANCE.md.
    const FINGERPRINTS: [(Generation, &str, &str, &str); 3] = [
        (
            Generation::Milan,
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
            "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
        ),
        (
            Generation::Genoa,
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
            "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
        ),
        (
            Generation::Turin,
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
            "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
            "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
        ),
    ];

    #[test]
    fn roots_match_their_recorded_fingerprints() {
        let roots = AmdRoots::builtin().unwrap();
        let provenance = include_str!("../roots/PROVENANCE.md");
        for (generation, ark, ask, asvk) in FINGERPRINTS {
            let set = roots.get(generation).unwrap();
            for (cert, want) in [(&set.ark, ark), (&set.ask, ask), (&set.asvk, asvk)] {
                assert_eq!(hex::encode(cert.sha256()), want, "{generation} {cert:?}");
                assert!(provenance.contains(want), "{want} is not in PROVENANCE.md");
            }
        }
    }

    #[test]
    fn roots_are_named_and_chained_as_amd_does() {
        let roots = AmdRoots::builtin().unwrap();
        for generation in Generation::ALL {
            let set = roots.get(generation).unwrap();
            let g = generation.name();
            assert_eq!(set.ark.subject_cn(), Some(format!("ARK-{g}")));
            assert_eq!(set.ask.subject_cn(), Some(format!("SEV-{g}")));
            assert_eq!(set.asvk.subject_cn(), Some(format!("SEV-VLEK-{g}")));
            set.ark.verify_signed_by(&set.ark).unwrap();
            set.ask.verify_signed_by(&set.ark).unwrap();
            set.asvk.verify_signed_by(&set.ark).unwrap();
            assert!(set.ask.issued_by_name(&set.ark));
        }
    }
}
