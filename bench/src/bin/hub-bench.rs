//! The control plane's audit log, in one run: append throughput through the hub's real write
//! path against the SHA-256 hashing ceiling of the same entries, and proof latency at one
//! million entries against recomputing from the leaves.
//!
//! - **append, hub**: `Writer::audit` on SQLite (WAL, `synchronous = FULL`: every commit is
//!   fsynced), batches of 1, 100 and 1000 entries per transaction; each entry is the JSON the
//!   hub stores, hashed as a leaf, inserted, and added to the in-memory tree after the commit.
//! - **append, ceiling**: the same entries through `leaf_hash` and `MemoryTree` only: what
//!   SHA-256 alone allows (every append hashes the leaf and the subtrees it completes).
//! - **proofs at 1 M**: the log is filled to 1,048,576 entries through the hub (batches of
//!   10,000), then inclusion and consistency proofs are generated from the hub's tree (what the
//!   API serves) and over HTTP (`GET /v1/audit/proof/...`, with a session), against
//!   recomputing the same proof's root from the 1 M leaf hashes (a log without stored
//!   subtrees) and against hashing only the proof's own nodes (the least a verifier hashes).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_bench::summarize;
use coffer_hub::audit::AuditRecord;
use coffer_hub::{Hub, HubConfig};
use coffer_tlog::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, node_hash, root_from_leaf_hashes, Hash,
    MemoryTree,
};
use serde_json::json;

const APPEND_ROUND: Duration = Duration::from_secs(2);
const BIG: u64 = 1 << 20;
const FILL_BATCH: usize = 10_000;
const PROOF_SAMPLES: usize = 200;

fn record(i: u64) -> AuditRecord {
    AuditRecord::ok("user:bench", "job.approve")
        .org("acme")
        .target(format!("job-{i:032x}"))
        .detail(json!({"approvals": [{"org": "acme", "role": "approver"}]}))
}

/// Appends through the hub in batches of `batch` for about [`APPEND_ROUND`]; entries/s.
async fn append_hub(hub: &Hub, batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < APPEND_ROUND {
        let mut w = hub.writer().await?;
        for _ in 0..batch {
            w.audit(record(n)).await?;
            n += 1;
        }
        w.commit().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The same entries through SHA-256 and the in-memory tree only; entries/s.
fn append_ceiling() -> f64 {
    let mut tree = MemoryTree::new();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < APPEND_ROUND {
        for _ in 0..1000 {
            // The entry as the hub writes it (serialisation included on both sides).
            let body =
                serde_json::to_vec(&json!({"v": 1, "idx": n, "at": 0, "actor": "user:bench",
                "action": "job.approve", "org": "acme", "target": format!("job-{n:032x}"),
                "outcome": "ok", "detail": {"approvals": [{"org": "acme", "role": "approver"}]}}))
                .unwrap_or_default();
            tree.append_leaf_hash(leaf_hash(&body));
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = HubConfig {
        database_url: format!("sqlite://{}", dir.path().join("hub.db").display()),
        state_dir: dir.path().join("state"),
        issuer: "https://hub.bench".into(),
        audit_origin: "coffer/bench/audit".into(),
        oidc: Vec::new(),
        kms: None,
    };
    let hub = Hub::open(config).await?;

    println!(
        "# hub-bench: the audit log (SQLite, fsync on every commit; {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| append | entries/s (hub) | entries/s (SHA-256 ceiling) | ratio hub/ceiling |");
    println!("|---|---|---|---|");
    for batch in [1usize, 100, 1000] {
        let hub_rate = append_hub(&hub, batch).await?;
        let ceiling = append_ceiling();
        println!(
            "| {batch} per commit | {hub_rate:.0} | {ceiling:.0} | {:.3} |",
            hub_rate / ceiling
        );
    }

    // Fill to 1 M entries through the hub.
    let fill_started = Instant::now();
    while hub.audit.size() < BIG {
        let mut w = hub.writer().await?;
        let n = (BIG - hub.audit.size()).min(FILL_BATCH as u64);
        for i in 0..n {
            w.audit(record(i)).await?;
        }
        w.commit().await?;
    }
    let fill = fill_started.elapsed();
    let size = hub.audit.size();
    println!();
    println!(
        "filled to {size} entries in {:.1} s ({:.0} entries/s in batches of {FILL_BATCH})",
        fill.as_secs_f64(),
        size as f64 / fill.as_secs_f64()
    );

    // The proofs, from the hub's tree, over HTTP, and by recomputation.
    let leaf_hashes: Vec<Hash> = {
        use sqlx::Row;
        sqlx::query("SELECT leaf_hash FROM audit_entries ORDER BY idx")
            .fetch_all(&hub.db)
            .await?
            .iter()
            .map(|r| {
                let h: String = r.try_get("leaf_hash")?;
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                Ok(out)
            })
            .collect::<Result<_, sqlx::Error>>()?
    };
    let api = serve(hub.clone()).await?;
    let http = reqwest::Client::new();
    let admin = coffer_hub::api::bootstrap_admin(&hub, "admin")
        .await?
        .context("admin")?;
    let session: serde_json::Value = http
        .post(format!("{api}/v1/auth/login"))
        .json(&json!({"username": "admin", "password": admin.as_str()}))
        .send()
        .await?
        .json()
        .await?;
    let token = session["token"].as_str().context("no session")?.to_owned();

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let (mut tree_t, mut http_t, mut path_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ctree_t, mut chttp_t) = (Vec::new(), Vec::new());
    for _ in 0..PROOF_SAMPLES {
        let index = next(size);
        let t = Instant::now();
        let proof = hub.audit.with_tree(|tree| {
            inclusion_proof(tree, index, size)
                .map_err(|e| coffer_hub::error::ApiError::internal("bench", e))
        })?;
        tree_t.push(t.elapsed());
        // The least a verifier hashes: one node per proof element.
        let t = Instant::now();
        let mut acc = leaf_hashes[index as usize];
        for sibling in &proof {
            acc = node_hash(&acc, sibling);
        }
        std::hint::black_box(acc);
        path_t.push(t.elapsed());
        let t = Instant::now();
        let answer = http
            .get(format!(
                "{api}/v1/audit/proof/inclusion?index={index}&size={size}"
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "inclusion proof: {}",
            answer.status()
        );
        answer.bytes().await?;
        http_t.push(t.elapsed());

        let old = 1 + next(size - 1);
        let t = Instant::now();
        hub.audit.with_tree(|tree| {
            consistency_proof(tree, old, size)
                .map_err(|e| coffer_hub::error::ApiError::internal("bench", e))
        })?;
        ctree_t.push(t.elapsed());
        let t = Instant::now();
        let answer = http
            .get(format!(
                "{api}/v1/audit/proof/consistency?from={old}&to={size}"
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "consistency proof: {}",
            answer.status()
        );
        answer.bytes().await?;
        chttp_t.push(t.elapsed());
    }
    // Recomputing from the leaves (a log that stores no subtrees): the root of 1 M leaves.
    let mut recompute_t = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(root_from_leaf_hashes(&leaf_hashes));
        recompute_t.push(t.elapsed());
    }
    let med = |v: &[Duration]| summarize(v).map(|s| s.median).unwrap_or_default();
    let (tree_m, http_m, path_m, recompute_m) =
        (med(&tree_t), med(&http_t), med(&path_t), med(&recompute_t));
    let (ctree_m, chttp_m) = (med(&ctree_t), med(&chttp_t));
    println!();
    println!("| proof at {size} entries (median of {PROOF_SAMPLES}) | latency | ratio to hashing the proof's nodes | ratio to recomputing from the leaves |");
    println!("|---|---|---|---|");
    let row = |what: &str, d: Duration| {
        println!(
            "| {what} | {} | {:.1} | {:.6} |",
            micros(d),
            d.as_secs_f64() / path_m.as_secs_f64().max(1e-9),
            d.as_secs_f64() / recompute_m.as_secs_f64()
        );
    };
    row("inclusion, hub tree", tree_m);
    row("inclusion, HTTP API", http_m);
    row("consistency, hub tree", ctree_m);
    row("consistency, HTTP API", chttp_m);
    println!(
        "| (baseline) hashing the proof's nodes | {} | 1.0 | |",
        micros(path_m)
    );
    println!(
        "| (baseline) recomputing the root from the leaves | {:.1} ms | | 1.0 |",
        recompute_m.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Serves the hub's API on a loopback port; its base URL.
async fn serve(hub: Arc<Hub>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(coffer_hub::api::serve(
        hub,
        listener,
        std::future::pending(),
    ));
    Ok(base)
}
