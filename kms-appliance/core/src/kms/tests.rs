//! The hierarchy's operations against a real store sealed by a simulated secure processor.

use std::sync::{Arc, OnceLock};

use coffer_sim::{SimGuest, SimRoot, SimService};

use super::*;
use crate::rollback::MemoryAnchor;

/// The simulated secure processor's chain, generated once per machine (RSA-4096 generation takes
/// about 20 s unoptimised) into a staging directory and renamed into place, so concurrent test
/// binaries never see a half-written one. Simulation keys are not secrets.
pub(crate) fn shared_sim_root() -> SimRoot {
    let dir = std::env::temp_dir().join("coffer-kms-test-sim-root-v1");
    if let Ok(root) = SimRoot::load(&dir) {
        return root;
    }
    let staging = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let root = SimRoot::generate(&mut rand_core::OsRng).unwrap();
    root.save(&staging.path().join("root")).unwrap();
    // Another binary may have won the race: then its root is the one kept, and this one is
    // equally valid for this process.
    let _ = std::fs::rename(staging.path().join("root"), &dir);
    root
}

/// One simulated secure processor for this test binary.
pub(crate) fn platform() -> SimService {
    static ROOT: OnceLock<Arc<SimRoot>> = OnceLock::new();
    let root = ROOT.get_or_init(|| Arc::new(shared_sim_root()));
    SimService::new(
        root.clone(),
        SimGuest {
            measurement: [0x4b; 48],
            host_data: [0; 32],
            policy: 0x30000,
        },
    )
}

fn org(id: &str) -> OrgId {
    OrgId::new(id).unwrap()
}

fn open(dir: &tempfile::TempDir, anchor: &MemoryAnchor) -> Kms {
    Kms::open(
        &dir.path().join("kms.redb"),
        &platform(),
        Box::new(anchor.clone()),
    )
    .unwrap()
}

#[test]
fn keys_made_before_a_rotation_still_unwrap_until_their_version_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = MemoryAnchor::new();
    let mut kms = open(&dir, &anchor);
    let acme = org("acme");
    assert_eq!(kms.create_org_key(&acme).unwrap(), 1);
    let (dek1, wrapped1) = kms.generate_data_key(&acme).unwrap();
    assert_eq!(wrapped1.kek_version, 1);
    assert_eq!(kms.rotate_org_key(&acme).unwrap(), 2);
    let (dek2, wrapped2) = kms.generate_data_key(&acme).unwrap();
    assert_eq!(wrapped2.kek_version, 2);

    assert_eq!(
        kms.unwrap_data_key(&wrapped1).unwrap().expose_secret(),
        dek1.expose_secret()
    );
    let states: Vec<_> = kms
        .org_key(&acme)
        .unwrap()
        .versions
        .iter()
        .map(|v| v.state)
        .collect();
    assert_eq!(states, [KekState::Previous, KekState::Current]);

    assert!(matches!(
        kms.retire_org_key_version(&acme, 2),
        Err(KmsError::RetireCurrent { version: 2, .. })
    ));
    kms.retire_org_key_version(&acme, 1).unwrap();
    let err = kms.unwrap_data_key(&wrapped1).unwrap_err();
    assert!(
        matches!(err, KmsError::KekVersionRetired { version: 1, .. }),
        "{err}"
    );
    assert_eq!(
        kms.unwrap_data_key(&wrapped2).unwrap().expose_secret(),
        dek2.expose_secret()
    );

    // The same after a restart: retirement was durable and the wrapped KEK is gone from disk.
    drop(kms);
    let mut kms = open(&dir, &anchor);
    assert!(matches!(
        kms.unwrap_data_key(&wrapped1),
        Err(KmsError::KekVersionRetired { .. })
    ));
    assert!(kms
        .store
        .get(Table::Keks, &kek_record_key(&acme, 1))
        .unwrap()
        .is_none());
    assert_eq!(
        kms.unwrap_data_key(&wrapped2).unwrap().expose_secret(),
        dek2.expose_secret()
    );
    assert_eq!(kms.data_keys(&acme).unwrap().len(), 2);
    kms.verify().unwrap();
}

#[test]
fn destroying_an_org_key_shreds_every_version_and_nothing_of_the_org_unwraps_again() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = MemoryAnchor::new();
    let mut kms = open(&dir, &anchor);
    let (acme, globex) = (org("acme"), org("globex"));
    kms.create_org_key(&acme).unwrap();
    kms.create_org_key(&globex).unwrap();
    let mut acme_keys = vec![kms.generate_data_key(&acme).unwrap()];
    kms.rotate_org_key(&acme).unwrap();
    acme_keys.push(kms.generate_data_key(&acme).unwrap());
    kms.rotate_org_key(&acme).unwrap();
    acme_keys.push(kms.generate_data_key(&acme).unwrap());
    let (globex_dek, globex_wrapped) = kms.generate_data_key(&globex).unwrap();
    for (dek, wrapped) in &acme_keys {
        assert_eq!(
            kms.unwrap_data_key(wrapped).unwrap().expose_secret(),
            dek.expose_secret()
        );
    }

    kms.destroy_org_key(&acme).unwrap();
    for (_, wrapped) in &acme_keys {
        let err = kms.unwrap_data_key(wrapped).unwrap_err();
        assert!(matches!(err, KmsError::OrgDestroyed { .. }), "{err}");
    }
    assert!(matches!(
        kms.create_org_key(&acme),
        Err(KmsError::OrgDestroyed { .. })
    ));
    assert!(matches!(
        kms.rotate_org_key(&acme),
        Err(KmsError::OrgDestroyed { .. })
    ));
    drop(kms);

    // After a restart, from the disk alone: no wrapped KEK and no data-key record of acme
    // remains, and no KEK that remains (whatever its org) opens any of acme's wrapped keys,
    // even when presented without the org check.
    let mut kms = open(&dir, &anchor);
    assert!(kms.store.scan(Table::Keks, "acme/").unwrap().is_empty());
    assert!(kms.store.scan(Table::Deks, "acme/").unwrap().is_empty());
    assert!(kms.data_keys(&acme).unwrap().is_empty());
    let remaining = kms.store.scan(Table::Keks, "").unwrap();
    assert!(!remaining.is_empty());
    for (key, bytes) in remaining {
        let wrapped: WrappedKek = serde_json::from_slice(&bytes).unwrap();
        assert_ne!(wrapped.org, acme, "{key}");
        let kek = kms.root.unwrap_kek(&wrapped).unwrap();
        for (_, acme_wrapped) in &acme_keys {
            let forged = kek.relabelled(acme.clone(), acme_wrapped.kek_version);
            assert!(forged.unwrap_data_key(acme_wrapped).is_err());
        }
    }
    for (_, wrapped) in &acme_keys {
        assert!(matches!(
            kms.unwrap_data_key(wrapped),
            Err(KmsError::OrgDestroyed { .. })
        ));
    }
    let info = kms.org_key(&acme).unwrap();
    assert!(info.destroyed_at.is_some() && info.current.is_none());
    assert!(info.versions.iter().all(|v| v.state == KekState::Retired));
    // The other org is untouched.
    assert_eq!(
        kms.unwrap_data_key(&globex_wrapped)
            .unwrap()
            .expose_secret(),
        globex_dek.expose_secret()
    );
    kms.verify().unwrap();
}

#[test]
fn a_wrapped_key_relabelled_to_another_org_or_version_is_refused_by_the_kms() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = open(&dir, &MemoryAnchor::new());
    let (acme, globex) = (org("acme"), org("globex"));
    kms.create_org_key(&acme).unwrap();
    kms.create_org_key(&globex).unwrap();
    kms.rotate_org_key(&acme).unwrap();
    let (_, wrapped) = kms.generate_data_key(&acme).unwrap();

    let mut other_org = wrapped.clone();
    other_org.org = globex.clone();
    other_org.kek_version = 1;
    let err = kms.unwrap_data_key(&other_org).unwrap_err();
    assert!(
        matches!(err, KmsError::Key(KeyError::Unwrap { .. })),
        "{err}"
    );

    let mut old_version = wrapped.clone();
    old_version.kek_version = 1;
    assert!(matches!(
        kms.unwrap_data_key(&old_version),
        Err(KmsError::Key(KeyError::Unwrap { .. }))
    ));

    let mut other_id = wrapped.clone();
    other_id.key_id = KeyId::generate().unwrap();
    assert!(matches!(
        kms.unwrap_data_key(&other_id),
        Err(KmsError::Key(KeyError::Unwrap { .. }))
    ));

    let mut unknown = wrapped;
    unknown.kek_version = 9;
    assert!(matches!(
        kms.unwrap_data_key(&unknown),
        Err(KmsError::UnknownKekVersion { version: 9, .. })
    ));
    unknown.org = org("initech");
    assert!(matches!(
        kms.unwrap_data_key(&unknown),
        Err(KmsError::UnknownOrg { .. })
    ));
}

#[test]
fn every_write_raises_the_state_version_and_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut anchor = MemoryAnchor::new();
    let mut kms = open(&dir, &anchor);
    // Creation (1) then the root key (2).
    assert_eq!(kms.state_version(), 2);
    let acme = org("acme");
    kms.create_org_key(&acme).unwrap();
    kms.generate_data_key(&acme).unwrap();
    assert_eq!(kms.state_version(), 4);
    assert_eq!(
        crate::rollback::VersionAnchor::read(&mut anchor).unwrap(),
        Some(4)
    );
    assert!(kms.create_org_key(&acme).is_err());
    assert_eq!(
        kms.state_version(),
        4,
        "a refused operation commits nothing"
    );
    let verified = kms.verify().unwrap();
    assert_eq!(verified.version, 4);
    // root, acme, acme's KEK v1, one data key.
    assert_eq!(verified.records, 4);
}

#[test]
fn debug_of_the_kms_and_its_sealing_key_prints_no_key_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kms = open(&dir, &MemoryAnchor::new());
    let sealing = platform()
        .sealing_key(crate::store::SEALING_CONTEXT)
        .unwrap();
    let debug = format!(
        "{kms:?} {:?}",
        SealingKey::from_platform(&platform()).unwrap()
    );
    for secret in [kms.root.bytes().as_slice(), sealing.as_slice()] {
        assert!(!debug.contains(&hex::encode(secret)), "{debug}");
        assert!(!debug.contains(&format!("{secret:?}")), "{debug}");
    }
    assert!(debug.contains("redacted"), "{debug}");
}

#[test]
fn after_a_rotation_keys_move_to_the_current_version_lazily_on_unwrap_and_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = MemoryAnchor::new();
    let mut kms = open(&dir, &anchor);
    let acme = org("acme");
    kms.create_org_key(&acme).unwrap();
    let old: Vec<_> = (0..5)
        .map(|_| kms.generate_data_key(&acme).unwrap())
        .collect();
    // Under the current version there is nothing to re-wrap.
    let (_, none) = kms.unwrap_and_rewrap(&old[0].1).unwrap();
    assert_eq!(none, None);
    assert_eq!(kms.rewrap_data_keys(&acme, 100).unwrap().rewrapped, 0);

    assert_eq!(kms.rotate_org_key(&acme).unwrap(), 2);
    // Lazily: the unwrap of an old wrapping also answers the key under version 2, which
    // unwraps to the same bytes (and writes nothing).
    let before = kms.state_version();
    let (key, rewrapped) = kms.unwrap_and_rewrap(&old[0].1).unwrap();
    let rewrapped = rewrapped.expect("a key under version 1 comes back under version 2");
    assert_eq!(rewrapped.kek_version, 2);
    assert_eq!(rewrapped.key_id, old[0].1.key_id);
    assert_eq!(
        kms.unwrap_data_key(&rewrapped).unwrap().expose_secret(),
        key.expose_secret()
    );
    assert_eq!(kms.state_version(), before);

    // In bulk, bounded per call: the KMS's own records move, three then two.
    let first = kms.rewrap_data_keys(&acme, 3).unwrap();
    assert_eq!(
        (
            first.current_version,
            first.rewrapped,
            first.remaining,
            first.unrecoverable
        ),
        (2, 3, 2, 0)
    );
    let second = kms.rewrap_data_keys(&acme, 3).unwrap();
    assert_eq!((second.rewrapped, second.remaining), (2, 0));
    let records = kms.data_keys(&acme).unwrap();
    assert_eq!(records.len(), 5);
    for (key, wrapped) in &old {
        let record = records
            .iter()
            .find(|r| r.wrapped.key_id == wrapped.key_id)
            .unwrap();
        assert_eq!(record.wrapped.kek_version, 2);
        assert_eq!(
            kms.unwrap_data_key(&record.wrapped)
                .unwrap()
                .expose_secret(),
            key.expose_secret()
        );
    }
    // Then version 1 can be retired: the re-wrapped records still unwrap, the old wrappings
    // do not, and the moves survived a restart.
    kms.retire_org_key_version(&acme, 1).unwrap();
    drop(kms);
    let mut kms = open(&dir, &anchor);
    for (key, wrapped) in &old {
        assert!(matches!(
            kms.unwrap_data_key(wrapped),
            Err(KmsError::KekVersionRetired { version: 1, .. })
        ));
        let record = kms
            .data_keys(&acme)
            .unwrap()
            .into_iter()
            .find(|r| r.wrapped.key_id == wrapped.key_id)
            .unwrap();
        assert_eq!(
            kms.unwrap_data_key(&record.wrapped)
                .unwrap()
                .expose_secret(),
            key.expose_secret()
        );
    }
}

#[test]
fn records_under_a_version_retired_before_they_moved_are_counted_unrecoverable() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = MemoryAnchor::new();
    let mut kms = open(&dir, &anchor);
    let acme = org("acme");
    kms.create_org_key(&acme).unwrap();
    kms.generate_data_key(&acme).unwrap();
    kms.rotate_org_key(&acme).unwrap();
    kms.generate_data_key(&acme).unwrap();
    kms.retire_org_key_version(&acme, 1).unwrap();
    let outcome = kms.rewrap_data_keys(&acme, 10).unwrap();
    assert_eq!(
        (outcome.rewrapped, outcome.remaining, outcome.unrecoverable),
        (0, 0, 1)
    );
}
