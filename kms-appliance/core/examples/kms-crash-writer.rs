//! Test helper for `tests/crash.rs`: opens the KMS store at `STORE` sealed by the simulated
//! secure processor whose chain is in `SIM_DIR`, then creates keys forever, printing each one
//! only after the KMS call that made it returned (its commit is durable):
//!
//! ```text
//! KEY <wrapped data key as JSON> <SHA-256 of the key bytes, hex>
//! ROTATED <org> <version>
//! ```
//!
//! The test kills it with SIGKILL at random points and checks that everything printed survived.
//! Usage: `kms-crash-writer STORE SIM_DIR MEASUREMENT_HEX`; STORE is a file, or `disk:PATH` for
//! a data disk (a raw device or a fixed-size file, see `coffer_kms::store::disk`), or (feature
//! `postgres`) `postgres:LOCAL_FILE,URL` for a replica of a shared store.

#[path = "support/platform.rs"]
mod support;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use coffer_kms::rollback::Unanchored;
use coffer_kms::store::Location;
use coffer_kms::{Kms, OrgId};
use coffer_sim::SimService;
use sha2::{Digest, Sha256};

fn main() -> anyhow::Result<()> {
    let (store, platform) = support::from_args("kms-crash-writer")?;
    let store = store.as_str();
    // Crash safety, not rollback, is under test here: no anchor.
    let anchor = Box::new(Unanchored::accepting_rollback());
    let mut kms = if let Some(device) = store.strip_prefix("disk:") {
        Kms::open(Location::Disk(PathBuf::from(device)), &platform, anchor)
    } else if let Some(shared) = store.strip_prefix("postgres:") {
        open_shared(shared, &platform, anchor)?
    } else {
        Kms::open(Location::File(PathBuf::from(store)), &platform, anchor)
    }
    .context("opening the store")?;
    let orgs: Vec<OrgId> = ["org-a", "org-b", "org-c"]
        .into_iter()
        .map(OrgId::new)
        .collect::<Result<_, _>>()?;
    for org in &orgs {
        if kms.org_key(org).is_none() {
            kms.create_org_key(org)?;
        }
    }
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let org = &orgs[(i % 3) as usize];
        if i % 10 == 9 {
            let version = kms.rotate_org_key(org)?;
            writeln!(out, "ROTATED {org} {version}")?;
        } else {
            let (key, wrapped) = kms.generate_data_key(org)?;
            let digest = hex::encode(Sha256::digest(key.expose_secret()));
            drop(key);
            writeln!(out, "KEY {} {digest}", serde_json::to_string(&wrapped)?)?;
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(feature = "postgres")]
fn open_shared(
    shared: &str,
    platform: &SimService,
    anchor: Box<Unanchored>,
) -> anyhow::Result<Result<Kms, coffer_kms::KmsError>> {
    let (local, url) = shared.split_once(',').context("postgres:LOCAL_FILE,URL")?;
    let sealing = coffer_kms::store::SealingKey::from_platform(platform)?;
    Ok(Kms::open_shared(
        &PathBuf::from(local),
        sealing,
        Location::Postgres(url.to_owned()),
        anchor,
    ))
}

#[cfg(not(feature = "postgres"))]
fn open_shared(
    _: &str,
    _: &SimService,
    _: Box<Unanchored>,
) -> anyhow::Result<Result<Kms, coffer_kms::KmsError>> {
    bail!("a shared store needs the postgres feature")
}
