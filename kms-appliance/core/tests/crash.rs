//! Crash safety: a process creating keys in a loop is killed with SIGKILL at random points,
//! several times; after each kill, every key it acknowledged unwraps to the same bytes, every
//! rotation it acknowledged is there, and the whole store verifies.
//!
//! SIGKILL loses nothing the kernel already has, so this shows the commit protocol (no torn or
//! half-applied state, nothing acknowledged before commit); power loss in a VM (the page cache
//! lost too) is the QEMU-tier test of the next step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_kms::rollback::Unanchored;
use coffer_kms::store::Location;
use coffer_kms::{Kms, OrgId, WrappedDataKey};
use rand_core::RngCore;
use sha2::{Digest, Sha256};

#[test]
fn every_acknowledged_key_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("kms.redb");
    kill_loop(Target::Single(Location::File(store)));
}

/// The same on a data disk (a fixed-size file standing in for the raw device).
#[test]
fn every_acknowledged_key_survives_sigkill_on_a_data_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    kill_loop(Target::Single(Location::Disk(disk)));
}

/// The same on a replica of a shared store in PostgreSQL (its own store a file beside).
#[cfg(feature = "postgres")]
#[test]
fn every_acknowledged_key_survives_sigkill_on_a_shared_store() {
    let pg = postgres::Postgres::start();
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database("kms"));
    let dir = tempfile::tempdir().unwrap();
    kill_loop(Target::Shared {
        local: dir.path().join("own.redb"),
        url,
    });
}

#[cfg(feature = "postgres")]
#[path = "../../../services/hub/tests/common/postgres.rs"]
mod postgres;

/// Where the writer keeps its state.
enum Target {
    /// A single KMS's store.
    Single(Location),
    /// A replica of a shared store: its own store, and the database URL.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Shared { local: PathBuf, url: String },
}

impl Target {
    fn arg(&self) -> String {
        match self {
            Target::Single(Location::File(path)) => path.display().to_string(),
            Target::Single(Location::Disk(path)) => format!("disk:{}", path.display()),
            Target::Shared { local, url } => format!("postgres:{},{url}", local.display()),
            #[allow(unreachable_patterns)]
            _ => unreachable!("the writer takes files, disks and shared stores"),
        }
    }

    fn open(&self) -> Result<Kms, coffer_kms::KmsError> {
        let anchor = Box::new(Unanchored::accepting_rollback());
        match self {
            Target::Single(location) => Kms::open(location.clone(), &common::platform(), anchor),
            #[cfg(feature = "postgres")]
            Target::Shared { local, url } => Kms::open_shared(
                local,
                coffer_kms::store::SealingKey::from_platform(&common::platform()).unwrap(),
                Location::Postgres(url.clone()),
                anchor,
            ),
            #[cfg(not(feature = "postgres"))]
            Target::Shared { .. } => unreachable!("built without the postgres feature"),
        }
    }
}

fn kill_loop(store: Target) {
    common::sim_root(); // make sure the chain the writer loads exists
    let writer = common::example("kms-crash-writer");
    let store_arg = store.arg();
    let measurement = hex::encode(common::KMS_MEASUREMENT);

    let mut keys: Vec<(WrappedDataKey, String)> = Vec::new();
    let mut rotations: Vec<(OrgId, u32)> = Vec::new();
    // Different base delays, each with random jitter: some kills land while the writer opens and
    // verifies the store, most in the middle of the write loop.
    for (round, base_ms) in [5u64, 60, 120, 200, 300, 450, 650].into_iter().enumerate() {
        let delay = Duration::from_millis(base_ms + rand_core::OsRng.next_u64() % 80);
        let lines = common::run_until_killed(
            &writer,
            &[
                store_arg.as_ref(),
                common::sim_root_dir().as_os_str(),
                measurement.as_ref(),
            ],
            delay,
            round,
        );
        for line in &lines {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("KEY"), Some(json), Some(digest)) => {
                    keys.push((serde_json::from_str(json).unwrap(), digest.to_owned()));
                }
                (Some("ROTATED"), Some(org), Some(version)) => {
                    rotations.push((OrgId::new(org).unwrap(), version.parse().unwrap()));
                }
                _ => panic!("round {round}: unexpected line {line:?}"),
            }
        }

        let started = Instant::now();
        let kms = store
            .open()
            .unwrap_or_else(|e| panic!("round {round} (killed after {delay:?}): {e}"));
        let verified = kms.verify().unwrap();
        for (wrapped, digest) in &keys {
            let key = kms
                .unwrap_data_key(wrapped)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged key lost: {e}"));
            assert_eq!(&hex::encode(Sha256::digest(key.expose_secret())), digest);
        }
        for (org, version) in &rotations {
            let info = kms.org_key(org).unwrap();
            assert!(
                info.versions.iter().any(|v| v.version == *version),
                "{org} v{version}"
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} lines this round, {} keys and {} rotations acknowledged so far, state version {}, {} records verified in {:?}",
            lines.len(),
            keys.len(),
            rotations.len(),
            verified.version,
            verified.records,
            started.elapsed()
        );
    }
    // The test means something only if the writer got far enough to be interrupted mid-loop.
    assert!(keys.len() >= 20, "only {} keys acknowledged", keys.len());
    assert!(!rotations.is_empty());
}
