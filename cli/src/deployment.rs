//! `coffer deployment init`: writes a deployment manifest from the committed pins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use coffer_sim::SimRoot;
use coffer_types::{deployment_digest, Bootstrap, KmsSettings, PinFile, RecoveryPolicy, Role};

/// `coffer deployment init --out FILE [...]`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to write the manifest.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The deployment's id.
    #[arg(long, default_value = "dev")]
    pub id: String,
    /// Mesh endpoint of a role as seen from the VMs, ROLE=HOST:PORT (repeatable).
    #[arg(long = "endpoint", value_name = "ROLE=HOST:PORT", value_parser = parse_endpoint)]
    pub endpoints: Vec<(Role, String)>,
    /// Directory of the committed pins [default: measurements/pins in the checkout].
    #[arg(long, value_name = "DIR")]
    pub pins: Option<PathBuf>,
    /// Seconds a mesh session lives before it must re-attest.
    #[arg(long, default_value_t = 3600)]
    pub session_max_age: u64,
    /// The simulated secure processor's key directory [default: <state dir>/sim].
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
    /// The first organisation.
    #[arg(long, default_value = "acme")]
    pub org: String,
    /// Its first administrator.
    #[arg(long, default_value = "admin@acme.example")]
    pub admin: String,
    /// The KMS's authorisation settings: a JSON file with the issuers whose identity tokens
    /// and job grants it believes (`{"issuers": [{"issuer", "kind", "jwks"}], ...}`). Without
    /// it the KMS denies every request.
    #[arg(long, value_name = "FILE")]
    pub kms_authz: Option<PathBuf>,
    /// A recovery officer's age public key (age1..., repeatable): the KMS root key is split
    /// among them at initialisation.
    #[arg(
        long = "recovery-officer",
        value_name = "AGE_RECIPIENT",
        requires = "kms_authz"
    )]
    pub recovery_officers: Vec<String>,
    /// How many officers restore the root key [default: a majority].
    #[arg(long, requires = "recovery_officers")]
    pub recovery_threshold: Option<u8>,
    /// The KMS replicas keep their state in one PostgreSQL database (`coffer run --kms-store
    /// URL` names it to each) instead of each on its own data disk.
    #[arg(long, requires = "kms_authz")]
    pub kms_shared_store: bool,
}

fn parse_endpoint(text: &str) -> Result<(Role, String), String> {
    let (role, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ROLE=HOST:PORT"))?;
    Ok((role.parse().map_err(|e| format!("{e}"))?, addr.to_owned()))
}

/// Writes a sim-platform manifest: pins of every role from the committed pin files, TCB floors
/// at the simulated chip's TCB, the simulation root of this machine.
pub fn init(args: &InitArgs, state_dir: &Path) -> anyhow::Result<()> {
    let pins_dir = match &args.pins {
        Some(dir) => dir.clone(),
        None => crate::checkout()?.join("measurements/pins"),
    };
    let sim_dir = args
        .sim_dir
        .clone()
        .unwrap_or_else(|| crate::sim::default_sim_dir(state_dir));
    let root = SimRoot::load_or_generate(&sim_dir)
        .with_context(|| format!("simulated secure processor in {}", sim_dir.display()))?;
    let mut measurements = BTreeMap::new();
    for role in Role::ALL {
        let path = pins_dir.join(format!("{role}.json"));
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let pins: PinFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a pin file", path.display()))?;
        let mut digests: Vec<String> = pins
            .sets
            .iter()
            .flat_map(|set| set.snp.iter().map(|d| d.launch_digest.clone()))
            .collect();
        digests.sort();
        digests.dedup();
        measurements.insert(role, digests);
    }
    let mut deployment = coffer_sim::sim_deployment(&root, &args.id, measurements)?;
    deployment.endpoints = args.endpoints.iter().cloned().collect();
    deployment.session_max_age_secs = args.session_max_age;
    deployment.bootstrap = Bootstrap {
        org: args.org.clone(),
        admin: args.admin.clone(),
    };
    if let Some(path) = &args.kms_authz {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let authz: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        // Checked as the KMS will check it at start, so a bad file fails here, not in the VM.
        let config: coffer_kms::AuthzConfig = serde_json::from_value(authz.clone())
            .with_context(|| format!("{}: not KMS authorisation settings", path.display()))?;
        coffer_kms::Authorizer::new(config).with_context(|| format!("{}", path.display()))?;
        let recovery = (!args.recovery_officers.is_empty()).then(|| {
            let n = args.recovery_officers.len();
            RecoveryPolicy {
                threshold: args
                    .recovery_threshold
                    .unwrap_or_else(|| u8::try_from(n / 2 + 1).unwrap_or(u8::MAX)),
                officers: args.recovery_officers.clone(),
                restore: None,
            }
        });
        deployment.kms = Some(KmsSettings {
            authz,
            recovery,
            shared_store: args.kms_shared_store,
        });
    }
    deployment.validate()?;
    let mut bytes = serde_json::to_vec_pretty(&deployment)?;
    bytes.push(b'\n');
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "deployment {} (platform sim, NOT AMD hardware): {} (digest {})",
        args.id,
        args.out.display(),
        hex::encode(deployment_digest(&bytes))
    );
    Ok(())
}
