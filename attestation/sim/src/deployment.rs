//! Deployment manifests for the simulated platform.

use std::collections::BTreeMap;

use coffer_types::{
    Bootstrap, Deployment, DeploymentTrustRoot, Platform, Role, RolePins, SimulationRoot,
    TcbComponents, TcbFloors, DEPLOYMENT_VERSION,
};
use x509_cert::der::pem::LineEnding;

use crate::{SimError, SimRoot};

impl SimRoot {
    /// The root's ARK and ASK as a manifest's [`SimulationRoot`] (PEM).
    pub fn simulation_root(&self) -> Result<SimulationRoot, SimError> {
        let pem = |der: &[u8]| {
            x509_cert::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der).map_err(|e| {
                SimError::Encoding {
                    what: "PEM",
                    reason: e.to_string(),
                }
            })
        };
        Ok(SimulationRoot {
            ark_pem: pem(self.ark_der())?,
            ask_pem: pem(self.ask_der())?,
        })
    }
}

/// A sim-platform deployment `id` trusting `root`, with `measurements` pinned per role (hex) and
/// the simulated chip's own TCB as every role's Genoa floor. No endpoints; sessions live an
/// hour; bootstrap org `acme`, admin `admin@acme.example`. Callers adjust the fields they need.
pub fn sim_deployment(
    root: &SimRoot,
    id: &str,
    measurements: BTreeMap<Role, Vec<String>>,
) -> Result<Deployment, SimError> {
    let tcb = root.tcb();
    let floor = TcbComponents {
        fmc: None,
        bl: tcb.bl,
        tee: tcb.tee,
        snp: tcb.snp,
        ucode: tcb.ucode,
    };
    let roles = measurements
        .into_iter()
        .map(|(role, measurements)| {
            let pins = RolePins {
                measurements,
                min_tcb: BTreeMap::from([(
                    "genoa".to_owned(),
                    TcbFloors {
                        reported: floor,
                        committed: floor,
                    },
                )]),
                pcrs: BTreeMap::new(),
            };
            (role, pins)
        })
        .collect();
    Ok(Deployment {
        format_version: DEPLOYMENT_VERSION,
        deployment_id: id.to_owned(),
        platform: Platform::Sim,
        trust_root: DeploymentTrustRoot::Simulation,
        simulation_root: Some(root.simulation_root()?),
        roles,
        endpoints: BTreeMap::new(),
        session_max_age_secs: 3600,
        bootstrap: Bootstrap {
            org: "acme".into(),
            admin: "admin@acme.example".into(),
        },
        kms: None,
    })
}
