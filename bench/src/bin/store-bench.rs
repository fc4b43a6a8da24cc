//! What the replicas' shared store costs a KMS, in one run: `Kms::generate_data_key` (one
//! durable commit) on the embedded store (a redb file, the single KMS's default) against the
//! same call on a shared store in PostgreSQL (a private server with `fsync` on, over loopback),
//! with one replica, and with two replicas writing in turn (each write then takes in the other's
//! first: [`Kms::sync`]). No anchor on any side: the witnesses' cost is `witness-bench`'s.
//! Rounds alternate between the sides so machine drift hits all of them.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_kms::rollback::Unanchored;
use coffer_kms::store::{Location, SealingKey};
use coffer_kms::{Kms, OrgId};
use coffer_sim::{ReportFields, SimGuest, SimRoot, SimService};

#[path = "../../../services/hub/tests/common/postgres.rs"]
#[allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod postgres;

const ROUNDS: usize = 5;
const WRITES_PER_ROUND: usize = 50;

fn unanchored() -> Box<Unanchored> {
    Box::new(Unanchored::accepting_rollback())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Runs `WRITES_PER_ROUND` writes, alternating over `replicas`; the time per write.
fn round(replicas: &mut [&mut Kms], org: &OrgId) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for i in 0..WRITES_PER_ROUND {
        let kms = &mut replicas[i % replicas.len()];
        kms.generate_data_key(org)?;
    }
    Ok(started.elapsed() / WRITES_PER_ROUND as u32)
}

fn main() -> anyhow::Result<()> {
    let root = std::sync::Arc::new(SimRoot::generate(&mut rand_core::OsRng)?);
    let platform = SimService::new(
        root,
        SimGuest {
            measurement: [0x4b; 48],
            host_data: [0; 32],
            policy: ReportFields::DEFAULT_POLICY,
        },
    );
    let sealing = || SealingKey::from_platform(&platform);
    let dir = tempfile::tempdir()?;
    let pg = postgres::Postgres::start_durable();
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(pg.create_database("kms"));
    let org = OrgId::new("acme")?;

    let mut single = Kms::open(
        dir.path().join("single.redb").as_path(),
        &platform,
        unanchored(),
    )
    .context("the embedded store")?;
    let shared = || Location::Postgres(url.clone());
    let mut a = Kms::open_shared(
        dir.path().join("a.redb").as_path(),
        sealing()?,
        shared(),
        unanchored(),
    )
    .context("the shared store")?;
    let mut b = Kms::join_shared(
        dir.path().join("b.redb").as_path(),
        sealing()?,
        shared(),
        unanchored(),
        &a.export_snapshot()?,
    )?;
    single.create_org_key(&org)?;
    a.create_org_key(&org)?;
    // Warm-up: file growth, connections, the database's caches.
    round(&mut [&mut single], &org)?;
    round(&mut [&mut a, &mut b], &org)?;

    let (mut embedded, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        embedded.push(round(&mut [&mut single], &org)?);
        one.push(round(&mut [&mut a], &org)?);
        two.push(round(&mut [&mut a, &mut b], &org)?);
    }
    let base = median(embedded.clone());
    println!(
        "store-bench: generate_data_key (one durable commit), median of {ROUNDS} rounds of {WRITES_PER_ROUND} writes"
    );
    println!("{:<58} {:>10} {:>8}", "store", "per write", "ratio");
    for (name, times) in [
        ("embedded redb file (baseline)", embedded),
        ("shared PostgreSQL, one replica", one),
        ("shared PostgreSQL, two replicas writing in turn", two),
    ] {
        let m = median(times);
        println!(
            "{name:<58} {:>8.2}ms {:>7.2}x",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!(
        "({} data keys in the shared store; server: PostgreSQL with fsync on, loopback)",
        a.data_keys(&org)?.len()
    );
    Ok(())
}
