//! The shared store of a replicated deployment on a real PostgreSQL server: replicas see each
//! other's keys, concurrent writers never lose a write, and a database the operator tampered
//! with or rolled back is refused by name. Needs Debian's `postgresql` (scripts/install-deps.sh)
//! and the `postgres` feature (`make test` runs this file with it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../../services/hub/tests/common/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};

use coffer_kms::rollback::MemoryAnchor;
use coffer_kms::store::{Location, SealingKey};
use coffer_kms::{Kms, KmsError, OrgId, StoreError};
use sqlx::Connection;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A PostgreSQL server with one database for the store, and a directory for the replicas' own
/// stores.
struct Deployment {
    _pg: postgres::Postgres,
    url: String,
    dir: tempfile::TempDir,
    anchor: MemoryAnchor,
}

impl Deployment {
    fn new() -> Self {
        let pg = postgres::Postgres::start();
        let url = runtime().block_on(pg.create_database("kms"));
        Self {
            _pg: pg,
            url,
            dir: tempfile::tempdir().unwrap(),
            anchor: MemoryAnchor::new(),
        }
    }

    fn own(&self, replica: &str) -> PathBuf {
        self.dir.path().join(format!("{replica}.redb"))
    }

    fn shared(&self) -> Location {
        Location::Postgres(self.url.clone())
    }

    fn sealing() -> SealingKey {
        SealingKey::from_platform(&common::platform()).unwrap()
    }

    /// Opens replica `name` (the first one starts the deployment).
    fn open(&self, name: &str) -> Result<Kms, KmsError> {
        Kms::open_shared(
            &self.own(name),
            Self::sealing(),
            self.shared(),
            Box::new(self.anchor.clone()),
        )
    }

    /// A new replica joining `from`.
    fn join(&self, name: &str, from: &mut Kms) -> Kms {
        let snapshot = from.export_snapshot().unwrap();
        Kms::join_shared(
            &self.own(name),
            Self::sealing(),
            self.shared(),
            Box::new(self.anchor.clone()),
            &snapshot,
        )
        .unwrap()
    }

    /// Runs `sql` on the store's database, as the operator could.
    fn sql(&self, sql: &str) {
        runtime().block_on(async {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        });
    }

    fn sealed(&self, tbl: &str, key: &str) -> Vec<u8> {
        runtime().block_on(async {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar("SELECT sealed FROM coffer_kms_records WHERE tbl = $1 AND key = $2")
                .bind(tbl)
                .bind(key)
                .fetch_one(&mut c)
                .await
                .unwrap()
        })
    }

    fn set_sealed(&self, tbl: &str, key: &str, sealed: &[u8]) {
        runtime().block_on(async {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query("UPDATE coffer_kms_records SET sealed = $3 WHERE tbl = $1 AND key = $2")
                .bind(tbl)
                .bind(key)
                .bind(sealed)
                .execute(&mut c)
                .await
                .unwrap();
        });
    }
}

fn acme() -> OrgId {
    OrgId::new("acme").unwrap()
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap()
}

#[test]
fn replicas_see_each_others_keys_and_a_destroy_reaches_all_of_them() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    assert!(a.is_shared());
    a.create_org_key(&acme()).unwrap();
    let (key, wrapped) = a.generate_data_key(&acme()).unwrap();

    let mut b = d.join("b", &mut a);
    // A key A made unwraps at B.
    let unwrapped = b.unwrap_data_key(&wrapped).unwrap();
    assert_eq!(unwrapped.expose_secret(), key.expose_secret());

    // B rotates; A, still on version 1, takes it in before writing, and writes under version 2.
    assert_eq!(b.rotate_org_key(&acme()).unwrap(), 2);
    let (_, wrapped2) = a.generate_data_key(&acme()).unwrap();
    assert_eq!(wrapped2.kek_version, 2);
    assert_eq!(b.data_keys(&acme()).unwrap().len(), 2);

    // B destroys the org; A refuses from its next sync on.
    b.destroy_org_key(&acme()).unwrap();
    assert!(a.unwrap_data_key(&wrapped).is_ok(), "A has not synced yet");
    assert!(a.sync().unwrap(), "the store moved");
    let err = a.unwrap_data_key(&wrapped).unwrap_err();
    assert!(matches!(err, KmsError::OrgDestroyed { .. }), "{err}");
    assert_eq!(a.state_version(), b.state_version());
    a.verify().unwrap();

    // A replica restarted opens the shared state with its own root key.
    drop(a);
    let a = d.open("a").unwrap();
    assert!(matches!(
        a.unwrap_data_key(&wrapped2),
        Err(KmsError::OrgDestroyed { .. })
    ));
}

#[test]
fn concurrent_writers_lose_nothing() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    let b = d.join("b", &mut a);
    let start = a.state_version();
    const EACH: usize = 15;
    let writers: Vec<_> = [a, b]
        .into_iter()
        .map(|mut kms| {
            std::thread::spawn(move || {
                let mut made = Vec::new();
                for i in 0..EACH {
                    if i == EACH / 2 {
                        // Each rotation checks the current version under the writers' lock.
                        kms.rotate_org_key(&acme()).unwrap();
                    }
                    made.push(kms.generate_data_key(&acme()).unwrap().1);
                }
                (kms, made)
            })
        })
        .collect();
    let mut replicas = Vec::new();
    let mut made = Vec::new();
    for writer in writers {
        let (kms, keys) = writer.join().unwrap();
        replicas.push(kms);
        made.extend(keys);
    }
    let mut a = replicas.remove(0);
    a.sync().unwrap();
    // Every write is one version: nothing was lost or merged.
    assert_eq!(a.state_version(), start + 2 * (EACH as u64 + 1));
    let listed = a.data_keys(&acme()).unwrap();
    assert_eq!(listed.len(), 2 * EACH);
    for wrapped in &made {
        a.unwrap_data_key(wrapped).unwrap();
    }
    assert_eq!(a.org_key(&acme()).unwrap().current, Some(3));
    a.verify().unwrap();
}

#[test]
fn a_tampered_replaced_or_deleted_record_is_refused_by_name() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    let (_, first) = a.generate_data_key(&acme()).unwrap();
    let dek = format!("acme/{}", first.key_id);
    let old_org = d.sealed("orgs", "acme");
    a.rotate_org_key(&acme()).unwrap();
    drop(a);

    // One flipped byte: the record does not open, and its name is given.
    let good = d.sealed("deks", &dek);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    d.set_sealed("deks", &dek, &bad);
    match d.open("a") {
        Err(KmsError::Store(StoreError::Tampered { record, .. })) => {
            assert_eq!(record, format!("deks/{dek}"))
        }
        other => panic!("expected Tampered, got {other:?}"),
    }
    d.set_sealed("deks", &dek, &good);

    // An older sealed copy of the org record (before the rotation) opens, but the set of
    // records is not the one committed.
    let current_org = d.sealed("orgs", "acme");
    d.set_sealed("orgs", "acme", &old_org);
    let err = d.open("a").unwrap_err();
    assert!(
        matches!(err, KmsError::Store(StoreError::DigestMismatch { .. })),
        "{err}"
    );
    d.set_sealed("orgs", "acme", &current_org);

    // A deleted record.
    d.sql(&format!(
        "DELETE FROM coffer_kms_records WHERE tbl = 'deks' AND key = '{dek}'"
    ));
    let err = d.open("a").unwrap_err();
    assert!(
        matches!(err, KmsError::Store(StoreError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("postgres://coffer@127.0.0.1"),
        "{err}"
    );
}

#[test]
fn a_database_put_back_to_an_older_copy_is_refused_by_the_anchor_and_by_a_running_replica() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    let mut b = d.join("b", &mut a);
    d.sql("CREATE TABLE saved AS SELECT * FROM coffer_kms_records");
    let saved_version = a.state_version();
    a.destroy_org_key(&acme()).unwrap();
    b.sync().unwrap();

    // The operator restores the copy from before the destruction.
    d.sql(
        "BEGIN; DELETE FROM coffer_kms_records; \
         INSERT INTO coffer_kms_records SELECT * FROM saved; COMMIT;",
    );
    // A running replica never goes back.
    match b.sync() {
        Err(KmsError::Store(StoreError::RolledBack { state, anchor, .. })) => {
            assert_eq!((state, anchor), (saved_version, saved_version + 1));
        }
        other => panic!("expected RolledBack, got {other:?}"),
    }
    // And a restarted one is stopped by the anchor.
    drop(a);
    match d.open("a") {
        Err(KmsError::Store(StoreError::RolledBack { state, anchor, .. })) => {
            assert_eq!((state, anchor), (saved_version, saved_version + 1));
        }
        other => panic!("expected RolledBack, got {other:?}"),
    }
}

#[test]
fn a_replica_with_a_root_key_of_its_own_is_told_to_join_and_keeps_nothing() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    // A second replica started afresh instead of joining.
    let err = d.open("b").unwrap_err().to_string();
    assert!(err.contains("must join"), "{err}");
    // Its own store holds no root key, so it can still join.
    assert!(exists(&d.own("b")));
    let b = d.join("b", &mut a);
    assert!(b.org_key(&acme()).is_some());
}

#[test]
fn a_replica_cannot_be_switched_between_its_own_disk_and_the_shared_store() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    drop(a);
    // Its own store holds the root key only: opened as a single KMS, it refuses.
    let err = Kms::open(&d.own("a"), &common::platform(), Box::new(d.anchor.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shared store"), "{err}");
    // A single KMS's store is not made a replica's.
    let single = d.dir.path().join("single.redb");
    let mut kms = Kms::open(&single, &common::platform(), Box::new(MemoryAnchor::new())).unwrap();
    kms.create_org_key(&acme()).unwrap();
    drop(kms);
    let err = Kms::open_shared(
        &single,
        Deployment::sealing(),
        d.shared(),
        Box::new(MemoryAnchor::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("own data disk"), "{err}");
}

#[test]
fn a_shared_store_that_disappeared_is_not_started_afresh() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    drop(a);
    d.sql("DROP TABLE coffer_kms_records");
    match Kms::open_shared(
        &d.own("a"),
        Deployment::sealing(),
        d.shared(),
        Box::new(MemoryAnchor::new()),
    ) {
        Err(KmsError::Store(StoreError::Missing { store })) => {
            assert!(store.starts_with("postgres://coffer@"), "{store}")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
}

mod witnessed {
    //! The shared store with the witness quorum as its anchor (in-process witnesses).

    use std::sync::Arc;

    use coffer_kms::rollback::quorum::{QuorumAnchor, QuorumHandle, Survey};
    use coffer_kms::{Kms, KmsError, StoreError};

    use super::common::witnesses::Net;
    use super::{acme, Deployment};

    const A: &str = "https://10.0.2.2:9101";
    const B: &str = "https://10.0.2.2:9102";
    const C: &str = "https://10.0.2.2:9103";

    fn anchor(net: &Net, me: &str) -> (Box<QuorumAnchor>, QuorumHandle) {
        let peers = [A, B, C]
            .into_iter()
            .filter(|p| *p != me)
            .map(str::to_owned);
        let (anchor, handle) =
            QuorumAnchor::new(Arc::new(net.clone()), peers, Some(me.to_owned())).unwrap();
        (Box::new(anchor.shared()), handle)
    }

    /// What the appliance does every two seconds.
    fn survey(kms: &mut Kms, handle: &QuorumHandle) -> Result<(), String> {
        match handle.survey(&[])? {
            Survey::Unchanged => {}
            Survey::NewSet => {
                kms.advance_state().map_err(|e| e.to_string())?;
            }
            Survey::Behind { version, witness } => {
                kms.sync().map_err(|e| e.to_string())?;
                handle.synced(version, &witness)?;
            }
        }
        Ok(())
    }

    #[test]
    fn replicas_witness_each_other_and_a_database_put_back_is_refused_by_a_witness() {
        let d = Deployment::new();
        let net = Net::default();
        net.start(A);
        net.start(B);
        let (anchor_a, handle_a) = anchor(&net, A);
        let mut a =
            Kms::open_shared(&d.own("a"), Deployment::sealing(), d.shared(), anchor_a).unwrap();
        // A lists the replicas that answer, itself included.
        survey(&mut a, &handle_a).unwrap();
        assert_eq!(handle_a.witnesses().last().unwrap().len(), 2);
        a.create_org_key(&acme()).unwrap();

        let (anchor_b, handle_b) = anchor(&net, B);
        let snapshot = a.export_snapshot().unwrap();
        let mut b = Kms::join_shared(
            &d.own("b"),
            Deployment::sealing(),
            d.shared(),
            anchor_b,
            &snapshot,
        )
        .unwrap();
        // Both list the same set: no change to make.
        survey(&mut b, &handle_b).unwrap();
        assert_eq!(handle_b.witnesses(), handle_a.witnesses());
        // B writes; A's survey finds a witness ahead, takes the write in, and goes on.
        b.generate_data_key(&acme()).unwrap();
        let before = a.state_version();
        survey(&mut a, &handle_a).unwrap();
        assert!(a.state_version() > before);
        assert!(handle_a.halted().is_none());

        // The operator keeps a copy of the database; B destroys the org, witnessed by both.
        d.sql("CREATE TABLE saved AS SELECT * FROM coffer_kms_records");
        b.destroy_org_key(&acme()).unwrap();
        let destroyed = b.state_version();
        d.sql(
            "BEGIN; DELETE FROM coffer_kms_records; \
             INSERT INTO coffer_kms_records SELECT * FROM saved; COMMIT;",
        );
        // A replica that opens the copy is refused by the witnesses that saw the destruction.
        net.start(C);
        let (anchor_c, _) = anchor(&net, C);
        match Kms::join_shared(
            &d.own("c"),
            Deployment::sealing(),
            d.shared(),
            anchor_c,
            &snapshot,
        ) {
            Err(KmsError::Store(StoreError::RolledBack { anchor, .. })) => {
                assert_eq!(anchor, destroyed)
            }
            other => panic!("expected RolledBack, got {other:?}"),
        }
        // And A, behind the witnesses, finds no newer state in the database: it stops.
        let halt = survey(&mut a, &handle_a).unwrap_err();
        assert!(
            halt.contains("rolled back") || halt.contains("behind"),
            "{halt}"
        );
    }
}

#[test]
fn a_record_swapped_under_running_replicas_is_caught_at_their_next_read() {
    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    let mut b = d.join("b", &mut a);
    let old_org = d.sealed("orgs", "acme");
    a.rotate_org_key(&acme()).unwrap();
    b.sync().unwrap();
    // The operator puts back the org record from before the rotation, leaving its version
    // column alone, so the swap is not among the changes a replica is told about.
    d.set_sealed("orgs", "acme", &old_org);
    a.generate_data_key(&acme()).unwrap();
    match b.sync() {
        Err(KmsError::Store(StoreError::Tampered { record, reason })) => {
            assert_eq!(record, "orgs/acme", "{reason}");
        }
        other => panic!("expected Tampered, got {other:?}"),
    }
}

#[test]
fn each_replica_keeps_its_audit_journal_in_its_own_store_not_the_shared_one() {
    use coffer_kms::api::AuditJournal;
    use coffer_kms::AuditSink;

    let d = Deployment::new();
    let mut a = d.open("a").unwrap();
    a.create_org_key(&acme()).unwrap();
    let mut b = d.join("b", &mut a);
    let event = common::decision("");
    let version = a.state_version();
    let (ja, _) = AuditJournal::durable(a.journal_store().unwrap(), 10).unwrap();
    let (jb, _) = AuditJournal::durable(b.journal_store().unwrap(), 10).unwrap();
    ja.record(&event).unwrap();
    ja.flush().unwrap();
    // Nothing reached the shared state (no version, no record for the digest).
    assert_eq!(a.state_version(), version);
    b.sync().unwrap();
    b.verify().unwrap();
    drop((ja, jb, a, b));

    // Restarted, each replica finds only its own journal's entries.
    let mut a = d.open("a").unwrap();
    let mut b = d.open("b").unwrap();
    let (_, replay) = AuditJournal::durable(a.journal_store().unwrap(), 10).unwrap();
    assert_eq!(replay.replayed, 1);
    let (_, replay) = AuditJournal::durable(b.journal_store().unwrap(), 10).unwrap();
    assert_eq!(replay.replayed, 0);
}
