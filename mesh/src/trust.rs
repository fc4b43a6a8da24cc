//! What a node trusts: the deployment's roots and pins, and the verification of a peer's
//! evidence against them.
//!
//! One [`Trust`] per node, built from the deployment manifest. Pins can be revoked at run time
//! ([`Trust::revoke`]); sessions watch them and end when theirs goes ([`crate::Session`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_evidence::Evidence;
use coffer_types::{
    deployment_digest, Deployment, DeploymentTrustRoot, Platform, Role, DEPLOYMENT_PCR,
};
use coffer_verify::policy::{TcbFloor, TcbFloorsFile};
use coffer_verify::{
    AmdRoots, CheckId, Generation, Policy, SignatureCache, Timestamp, TrustRoot, Verdict,
};
use coffer_vtpm::{verify_azure_vtpm, CheckId as VtpmCheck, HclReport, PcrPins};
use tokio::sync::watch;

use crate::MeshError;

/// Pinned measurements per role, as currently in force.
pub type Pins = BTreeMap<Role, Vec<[u8; 48]>>;

/// Whether this verifier accepts a deployment whose root is the simulated secure processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulation {
    /// Refuse such deployments ([`MeshError::SimulationNotAllowed`]). The default everywhere.
    Refuse,
    /// Accept them: for the sim platform and CI only. Say so out loud where you choose it.
    DangerousAccept,
}

/// Who a peer proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role its measurement is pinned for.
    pub role: Role,
    /// Its launch measurement.
    pub measurement: [u8; 48],
    /// The deployment it belongs to.
    pub deployment_id: String,
    /// The root its evidence chains to.
    pub trust_root: TrustRoot,
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (measurement {}, deployment {}, root {})",
            self.role,
            hex::encode(self.measurement),
            self.deployment_id,
            self.trust_root
        )
    }
}

/// A node's trust: the deployment, its roots, and the pins in force.
pub struct Trust {
    deployment: Deployment,
    digest: [u8; 32],
    roots: AmdRoots,
    trust_root: TrustRoot,
    pins: watch::Sender<Arc<Pins>>,
    /// Certificate signatures already verified (the peers' chains repeat on every session).
    collateral: SignatureCache,
    /// How long a session may live: the deployment's bound, or shorter by this node's choice.
    max_session_age: std::time::Duration,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("deployment_id", &self.deployment.deployment_id)
            .field("digest", &hex::encode(self.digest))
            .field("trust_root", &self.trust_root)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Trust built from a manifest's exact bytes (whose SHA-256 peers must carry in
    /// HOST_DATA). A simulation deployment needs [`Simulation::DangerousAccept`].
    pub fn from_manifest(manifest: &[u8], simulation: Simulation) -> Result<Self, MeshError> {
        let deployment =
            Deployment::from_json(manifest).map_err(|e| MeshError::Manifest(e.to_string()))?;
        let digest = deployment_digest(manifest);
        let builtin = AmdRoots::builtin().map_err(|e| MeshError::Manifest(e.to_string()))?;
        let (roots, trust_root) = match (deployment.trust_root, simulation) {
            (DeploymentTrustRoot::Amd, _) => (builtin, TrustRoot::Amd),
            (DeploymentTrustRoot::Simulation, Simulation::Refuse) => {
                return Err(MeshError::SimulationNotAllowed)
            }
            (DeploymentTrustRoot::Simulation, Simulation::DangerousAccept) => {
                let sim = deployment.simulation_root.as_ref().ok_or_else(|| {
                    MeshError::Manifest("trust_root simulation without a simulation root".into())
                })?;
                let roots = builtin
                    .with_simulation_root(sim.ark_pem.as_bytes(), sim.ask_pem.as_bytes())
                    .map_err(|e| MeshError::Manifest(format!("simulation root: {e}")))?;
                (roots, TrustRoot::Simulation)
            }
        };
        let pins: Pins = Role::ALL
            .into_iter()
            .map(|role| (role, deployment.measurements(role)))
            .collect();
        Ok(Self {
            digest,
            roots,
            trust_root,
            pins: watch::Sender::new(Arc::new(pins)),
            collateral: SignatureCache::default(),
            max_session_age: std::time::Duration::from_secs(deployment.session_max_age_secs),
            deployment,
        })
    }

    /// Ends this node's sessions sooner than the deployment requires (never later).
    pub fn with_max_session_age(mut self, age: std::time::Duration) -> Self {
        self.max_session_age = self.max_session_age.min(age);
        self
    }

    /// How long this node's sessions may live.
    pub fn max_session_age(&self) -> std::time::Duration {
        self.max_session_age
    }

    /// The deployment.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The deployment's digest (what HOST_DATA must hold).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The pins in force.
    pub fn pins(&self) -> Arc<Pins> {
        self.pins.borrow().clone()
    }

    /// A receiver that sees every change of the pins.
    pub fn watch_pins(&self) -> watch::Receiver<Arc<Pins>> {
        self.pins.subscribe()
    }

    /// Removes a pin: new sessions with that measurement are refused, open ones end.
    pub fn revoke(&self, role: Role, measurement: &[u8; 48]) {
        self.pins.send_modify(|pins| {
            let mut next = (**pins).clone();
            if let Some(list) = next.get_mut(&role) {
                list.retain(|m| m != measurement);
            }
            *pins = Arc::new(next);
        });
    }

    /// Whether `measurement` is pinned for `role` right now.
    pub fn is_pinned(&self, role: Role, measurement: &[u8; 48]) -> bool {
        self.pins
            .borrow()
            .get(&role)
            .is_some_and(|list| list.contains(measurement))
    }

    /// The coffer-verify policy for a peer of `role` whose REPORT_DATA must be `report_data`.
    fn policy(&self, role: Role, report_data: [u8; 64]) -> Policy {
        let floors = self
            .deployment
            .roles
            .get(&role)
            .map(|pins| &pins.min_tcb)
            .cloned()
            .unwrap_or_default();
        let mut min_tcb = BTreeMap::new();
        for (name, floor) in floors {
            let Ok(generation) = serde_json::from_value::<Generation>(name.clone().into()) else {
                // An unknown generation name cannot match any evidence: leave it out.
                continue;
            };
            let convert = |c: coffer_types::TcbComponents| TcbFloor {
                fmc: c.fmc,
                bl: c.bl,
                tee: c.tee,
                snp: c.snp,
                ucode: c.ucode,
            };
            min_tcb.insert(
                generation,
                TcbFloorsFile {
                    reported: convert(floor.reported),
                    committed: convert(floor.committed),
                },
            );
        }
        Policy {
            min_report_version: 2,
            trust_root: self.trust_root,
            allowed_processors: min_tcb.keys().copied().collect(),
            allowed_measurements: self.pins.borrow().get(&role).cloned().unwrap_or_default(),
            any_measurement_with_pinned_id_key: false,
            allowed_vmpl: vec![0],
            allow_debug: false,
            allow_migration_agent: false,
            // SMT is allowed: refusing it is a per-deployment hardening choice we do not expose yet.
            allow_smt: true,
            min_tcb,
            allowed_cpuid: None,
            allowed_chip_ids: None,
            host_data: Some(self.digest),
            report_data: Some(report_data),
            allowed_id_key_digests: None,
            allowed_author_key_digests: None,
            min_guest_svn: None,
        }
    }

    /// Verifies a peer's evidence for `role`, whose REPORT_DATA must be `report_data`. Returns
    /// who the peer is, or the one reason that names the failure best (every check runs; the
    /// order of precedence is: root, authenticity, deployment, session binding, debug,
    /// measurement, other policy).
    pub fn verify(
        &self,
        role: Role,
        evidence: &Evidence,
        report_data: [u8; 64],
        now: Timestamp,
    ) -> Result<PeerIdentity, MeshError> {
        self.verify_bound(role, evidence, report_data, now, Binding::Deployment)
    }

    /// As [`Trust::verify`], with the deployment binding chosen: [`Binding::AnyManifest`] leaves
    /// HOST_DATA (on Azure, the deployment PCR) unchecked, for the one caller that needs only
    /// *genuine, pinned code* whatever manifest it runs under (the KMS's rollback witnesses, see
    /// `coffer_kms::rollback::quorum`).
    pub fn verify_bound(
        &self,
        role: Role,
        evidence: &Evidence,
        report_data: [u8; 64],
        now: Timestamp,
        binding: Binding,
    ) -> Result<PeerIdentity, MeshError> {
        let (report, vek, ask, ark) = match evidence {
            Evidence::Snp {
                report,
                vek,
                ask,
                ark,
            } => (report, vek, ask, ark),
            Evidence::AzureVtpm { document } => {
                return self.verify_azure(role, document, report_data, now, binding)
            }
        };
        if self.deployment.platform == Platform::Azure {
            return Err(MeshError::UnsupportedEvidence(
                "an azure deployment expects vTPM evidence, got a bare SNP report".into(),
            ));
        }
        let parsed = coffer_verify::Evidence::parse(report, vek, ask.as_deref(), ark.as_deref())
            .map_err(|e| MeshError::NotGenuine {
                check: "evidence.parse".into(),
                expected: "an SNP report and DER certificates".into(),
                got: e.to_string(),
            })?;
        let mut policy = self.policy(role, report_data);
        if binding == Binding::AnyManifest {
            policy.host_data = None;
        }
        let verdict = coffer_verify::verify_with_cache(
            &parsed,
            &self.roots,
            &policy,
            now,
            Some(&self.collateral),
        );
        if verdict.accepted() {
            let fields = parsed.report.fields();
            return Ok(PeerIdentity {
                role,
                measurement: fields.measurement,
                deployment_id: self.deployment.deployment_id.clone(),
                trust_root: self.trust_root,
            });
        }
        Err(name_failure(&verdict, role, &self.pins()))
    }
}

impl Trust {
    /// Azure vTPM evidence: the vTPM half (HCL binding, AK, quote with REPORT_DATA as its nonce,
    /// the role's PCR pins, and [`DEPLOYMENT_PCR`] extended once with this deployment's digest)
    /// with `coffer-vtpm`, and the SNP report inside the HCL report (chain, signature, the role's
    /// measurement pins, which on Azure name the paravisor's launch, TCB floors, no debug) with
    /// `coffer-verify`. Both must pass; the SNP half is named first.
    fn verify_azure(
        &self,
        role: Role,
        document: &[u8],
        report_data: [u8; 64],
        now: Timestamp,
        binding: Binding,
    ) -> Result<PeerIdentity, MeshError> {
        if self.deployment.platform != Platform::Azure {
            return Err(MeshError::UnsupportedEvidence(format!(
                "azure-vtpm evidence in a {} deployment",
                self.deployment.platform.as_str()
            )));
        }
        let not_genuine = |check: &str, expected: &str, got: String| MeshError::NotGenuine {
            check: check.into(),
            expected: expected.into(),
            got,
        };
        let evidence = coffer_vtpm::evidence::parse_trustee_json(document).map_err(|e| {
            not_genuine(
                "evidence.parse",
                "a Trustee az-snp-vtpm document",
                e.to_string(),
            )
        })?;
        let hcl = HclReport::parse(&evidence.hcl_report)
            .map_err(|e| not_genuine("hcl.parse", "an HCL report", e.to_string()))?;
        let snp_report = hcl.snp_report().ok_or_else(|| {
            MeshError::UnsupportedEvidence("the HCL report holds no SEV-SNP report".into())
        })?;
        let parsed = coffer_verify::Evidence::parse(snp_report, &evidence.vcek, None, None)
            .map_err(|e| {
                not_genuine(
                    "evidence.parse",
                    "an SNP report and its VCEK",
                    e.to_string(),
                )
            })?;
        let mut policy = self.policy(role, hcl.report_data());
        // The Azure host sets HOST_DATA; the deployment is bound by DEPLOYMENT_PCR instead.
        policy.host_data = None;
        let verdict = coffer_verify::verify_with_cache(
            &parsed,
            &self.roots,
            &policy,
            now,
            Some(&self.collateral),
        );
        if !verdict.accepted() {
            return Err(name_failure(&verdict, role, &self.pins()));
        }

        let pins = self.pcr_pins(role, binding)?;
        let vtpm = verify_azure_vtpm(&hcl, &evidence.quote, &report_data, &pins);
        if let Some(failure) = vtpm.failures().next() {
            let (expected, got) = match &failure.outcome {
                coffer_vtpm::check::Outcome::Failed { expected, got } => {
                    (expected.clone(), got.clone())
                }
                other => (String::new(), format!("{other:?}")),
            };
            return Err(match failure.id {
                VtpmCheck::QuoteNonce => MeshError::SessionBindingMismatch { expected, got },
                VtpmCheck::Pcr(DEPLOYMENT_PCR) => MeshError::WrongDeployment { expected, got },
                VtpmCheck::Pcr(index) => MeshError::PcrNotPinned {
                    role,
                    pcr: index,
                    expected,
                    got,
                },
                id => MeshError::NotGenuine {
                    check: id.to_string(),
                    expected,
                    got,
                },
            });
        }
        Ok(PeerIdentity {
            role,
            measurement: parsed.report.fields().measurement,
            deployment_id: self.deployment.deployment_id.clone(),
            trust_root: self.trust_root,
        })
    }

    /// The role's PCR pins plus, when bound to the deployment, the deployment PCR.
    fn pcr_pins(&self, role: Role, binding: Binding) -> Result<PcrPins, MeshError> {
        let manifest = |e: &dyn std::fmt::Display| MeshError::Manifest(e.to_string());
        let mut pins = PcrPins::new();
        if binding == Binding::Deployment {
            pins = pins
                .pin(
                    DEPLOYMENT_PCR,
                    [coffer_vtpm::predict::extended_from_reset(&self.digest)],
                )
                .map_err(|e| manifest(&e))?;
        }
        if let Some(role_pins) = self.deployment.roles.get(&role) {
            for (index, value) in &role_pins.pcrs {
                let index = u8::try_from(*index).map_err(|e| manifest(&e))?;
                let value: [u8; 32] = coffer_types::hex_bytes(value)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        MeshError::Manifest(format!("PCR {index} pin is not 32 bytes"))
                    })?;
                pins = pins.pin(index, [value]).map_err(|e| manifest(&e))?;
            }
        }
        Ok(pins)
    }
}

/// What a peer's evidence must be bound to besides its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// This deployment: HOST_DATA (on Azure, the deployment PCR) is this manifest's digest.
    /// Everything in the mesh.
    Deployment,
    /// Genuine code pinned for the role, under *any* manifest (HOST_DATA unchecked): the same
    /// image running under an older or newer manifest of the deployment. Only for exchanges
    /// whose safety rests on the peer's code alone, never to hand over a secret.
    AnyManifest,
}

/// The one error that names a rejected verdict best.
fn name_failure(verdict: &Verdict, role: Role, pins: &Pins) -> MeshError {
    let failed = |id: CheckId| verdict.check(id).filter(|c| !c.passed);
    if let Some(c) = failed(CheckId::ChainTrustRoot) {
        return MeshError::UntrustedRoot {
            expected: c.expected.clone(),
            got: c.got.clone(),
        };
    }
    let authenticity = verdict.failures().find(|c| {
        let name = c.id.name();
        name.starts_with("chain.") || name.starts_with("report.") || name.starts_with("vek.")
    });
    if let Some(c) = authenticity {
        return MeshError::NotGenuine {
            check: c.id.name(),
            expected: c.expected.clone(),
            got: c.got.clone(),
        };
    }
    if let Some(c) = failed(CheckId::PolicyHostData) {
        return MeshError::WrongDeployment {
            expected: c.expected.clone(),
            got: c.got.clone(),
        };
    }
    if let Some(c) = failed(CheckId::PolicyReportData) {
        return MeshError::SessionBindingMismatch {
            expected: c.expected.clone(),
            got: c.got.clone(),
        };
    }
    if let Some(c) = failed(CheckId::PolicyDebug) {
        return MeshError::DebugGuest(c.got.clone());
    }
    if let Some(mismatch) = verdict.measurement_mismatch() {
        return MeshError::MeasurementNotPinned {
            role,
            got: hex::encode(mismatch.got),
            pinned: pins
                .get(&role)
                .map(|l| l.iter().map(hex::encode).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        };
    }
    match verdict.failures().next() {
        Some(c) => MeshError::Policy {
            check: c.id.name(),
            expected: c.expected.clone(),
            got: c.got.clone(),
        },
        None => MeshError::Policy {
            check: "verdict".into(),
            expected: "at least one check".into(),
            got: "none ran".into(),
        },
    }
}
