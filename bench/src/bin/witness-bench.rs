//! What the rollback witnesses cost a KMS write, in one run: `Kms::generate_data_key` (a durable
//! redb commit) with no witness, one and two witnesses, each an in-process KMS witness served on
//! its attestation endpoint over loopback TLS (`EndpointTransport`: one keep-alive TLS connection
//! per witness, to the key its evidence bound; the evidence is checked once). Rounds alternate
//! between the three so machine drift hits all of them. Reads (unwraps) never ask a witness and
//! are measured by `kms-bench`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_kms::rollback::quorum::transport::EndpointTransport;
use coffer_kms::rollback::quorum::{QuorumAnchor, Survey, WitnessTable};
use coffer_kms::rollback::Unanchored;
use coffer_kms::{Kms, OrgId};
use coffer_mesh::endpoint::serve_endpoint_with;
use coffer_mesh::{MeshNode, Simulation, Trust};
use coffer_sim::{sim_deployment, ReportFields, SimGuest, SimRoot, SimService};
use coffer_types::{deployment_digest, Role};

const KMS: [u8; 48] = [0x4b; 48];
const ROUNDS: usize = 5;
const WRITES_PER_ROUND: usize = 40;

fn platform(root: &Arc<SimRoot>, manifest: &[u8]) -> Arc<SimService> {
    Arc::new(SimService::new(
        root.clone(),
        SimGuest {
            measurement: KMS,
            host_data: deployment_digest(manifest),
            policy: ReportFields::DEFAULT_POLICY,
        },
    ))
}

fn node(root: &Arc<SimRoot>, manifest: &[u8]) -> anyhow::Result<Arc<MeshNode>> {
    // Simulated evidence: this benchmark runs without SEV-SNP hardware.
    let trust = Trust::from_manifest(manifest, Simulation::DangerousAccept)?;
    Ok(Arc::new(MeshNode::new(
        Role::Kms,
        platform(root, manifest),
        Arc::new(trust),
    )?))
}

/// Serves a witness on loopback; returns its URL.
fn witness(
    rt: &tokio::runtime::Runtime,
    root: &Arc<SimRoot>,
    manifest: &[u8],
) -> anyhow::Result<String> {
    let extension = Arc::new(WitnessTable::new()).extension();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("https://{}", listener.local_addr()?);
    rt.spawn(serve_endpoint_with(
        node(root, manifest)?,
        listener,
        Some(extension),
    ));
    Ok(url)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let keys = tempfile::tempdir()?;
    let root = Arc::new(SimRoot::load_or_generate(keys.path()).context("simulation root")?);
    let pins = BTreeMap::from([(Role::Kms, vec![hex::encode(KMS)])]);
    let manifest = serde_json::to_vec(&sim_deployment(&root, "witness-bench", pins)?)?;
    let urls = [
        witness(&rt, &root, &manifest)?,
        witness(&rt, &root, &manifest)?,
    ];
    let trust = node(&root, &manifest)?.trust().clone();
    let transport = Arc::new(EndpointTransport::new(trust)?);
    let acme = OrgId::new("acme")?;
    // On disk, not tmpfs: every write is fsynced, as on the data disk.
    let dirs = tempfile::tempdir_in("/var/tmp").context("a store directory in /var/tmp")?;

    // Three KMSs, each on its own store: no witness, one, two.
    let mut kmss = Vec::new();
    for witnesses in 0..=2usize {
        let path = dirs.path().join(format!("kms-{witnesses}.redb"));
        let sealed = platform(&root, &manifest);
        let mut kms = if witnesses == 0 {
            Kms::open(
                &path,
                sealed.as_ref(),
                Box::new(Unanchored::accepting_rollback()),
            )?
        } else {
            let (anchor, handle) =
                QuorumAnchor::new(transport.clone(), urls[..witnesses].to_vec(), None)?;
            let mut kms = Kms::open(&path, sealed.as_ref(), Box::new(anchor))?;
            if handle.survey(&[]).map_err(anyhow::Error::msg)? == Survey::NewSet {
                kms.advance_state()?;
            }
            anyhow::ensure!(
                handle.witnesses().first().map(Vec::len) == Some(witnesses),
                "expected {witnesses} witness(es) listed, got {:?}",
                handle.witnesses()
            );
            kms
        };
        kms.create_org_key(&acme)?;
        kms.generate_data_key(&acme)?; // warm-up: each witness's evidence checked once
        kmss.push(kms);
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    for _ in 0..ROUNDS {
        for (i, kms) in kmss.iter_mut().enumerate() {
            for _ in 0..WRITES_PER_ROUND {
                let started = Instant::now();
                kms.generate_data_key(&acme)?;
                samples[i].push(started.elapsed());
            }
        }
    }
    let medians: Vec<Duration> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "## KMS writes with rollback witnesses ({} writes each, {ROUNDS} alternating rounds; stores in {}; witnesses in-process on loopback TLS)",
        ROUNDS * WRITES_PER_ROUND,
        dirs.path().display()
    );
    println!();
    println!("| witnesses | median per write (generate_data_key, durable) | ratio to no witness |");
    println!("|---|---|---|");
    for (i, m) in medians.iter().enumerate() {
        println!(
            "| {i} | {:.2} ms | {:.2} |",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
    Ok(())
}
