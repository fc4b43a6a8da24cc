//! Replicas, upgrades and backups in process: a snapshot makes a second KMS (another image,
//! another sealing key) that unwraps what the first made; a backup opens only under the root key
//! it was sealed with; nothing is ever written over an existing state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_kms::recovery::{self, RecoveryPolicy, RecoverySession};
use coffer_kms::rollback::Unanchored;
use coffer_kms::store::SealingKey;
use coffer_kms::{Kms, OrgId, Snapshot};

fn anchor() -> Box<Unanchored> {
    Box::new(Unanchored::accepting_rollback())
}

#[test]
fn a_joined_kms_of_another_image_unwraps_what_the_first_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Kms::open(&dir.path().join("a.redb"), &common::platform(), anchor()).unwrap();
    let org = OrgId::new("acme").unwrap();
    first.create_org_key(&org).unwrap();
    let (key, wrapped) = first.generate_data_key(&org).unwrap();

    let snapshot =
        Snapshot::from_json(&first.export_snapshot().unwrap().to_json().unwrap()).unwrap();
    assert!(!format!("{snapshot:?}").contains(&hex::encode(key.expose_secret())));
    let next_image = common::platform_measuring([0x77; 48]);
    let path = dir.path().join("b.redb");
    let second = Kms::join(
        &path,
        SealingKey::from_platform(&next_image).unwrap(),
        anchor(),
        &snapshot,
    )
    .unwrap();
    assert_eq!(
        second.unwrap_data_key(&wrapped).unwrap().expose_secret(),
        key.expose_secret()
    );
    drop(second);
    // The joined state is sealed to the new image: the old image cannot open it.
    let err = Kms::open(&path, &common::platform(), anchor()).unwrap_err();
    assert!(
        err.to_string().contains("sealed by another KMS image"),
        "{err}"
    );
    // And a second join over it is refused: nothing stored is overwritten.
    let err = Kms::join(
        &path,
        SealingKey::from_platform(&next_image).unwrap(),
        anchor(),
        &snapshot,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("already holds a KMS state"),
        "{err}"
    );
}

#[test]
fn officers_and_a_backup_restore_a_lost_kms_and_a_foreign_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let officers: Vec<_> = (0..3).map(|_| recovery::new_officer_identity()).collect();
    let recipients: Vec<String> = officers.iter().map(|(_, r)| r.clone()).collect();
    let policy = coffer_types::RecoveryPolicy {
        threshold: 2,
        officers: recipients.clone(),
        restore: None,
    };
    let mut lost = Kms::open(&dir.path().join("lost.redb"), &common::platform(), anchor()).unwrap();
    let org = OrgId::new("acme").unwrap();
    lost.create_org_key(&org).unwrap();
    let (key, wrapped) = lost.generate_data_key(&org).unwrap();
    let kit = lost.recovery_kit(&policy, "dep").unwrap();
    // The kit is made once: asked again, the same split.
    assert_eq!(lost.recovery_kit(&policy, "dep").unwrap(), kit);
    let backup = lost.export_backup().unwrap();
    assert!(!backup
        .windows(32)
        .any(|w| w == key.expose_secret().as_slice()));
    drop(lost);

    let restore = |backup: &[u8], path: &str| {
        let mut session = RecoverySession::new(kit.info.clone()).unwrap();
        for i in [0usize, 2] {
            let identity = recovery::parse_officer_identity(&officers[i].0).unwrap();
            let share = kit.shares[i].age.as_bytes();
            let reencrypted =
                recovery::reencrypt_share(share, &identity, session.recipient()).unwrap();
            session.submit(&reencrypted).unwrap();
        }
        let root = session.complete().unwrap();
        Kms::restore(
            &dir.path().join(path),
            SealingKey::from_platform(&common::platform_measuring([0x55; 48])).unwrap(),
            anchor(),
            &root,
            Some(backup),
        )
    };
    let restored = restore(&backup, "restored.redb").unwrap();
    assert_eq!(
        restored.unwrap_data_key(&wrapped).unwrap().expose_secret(),
        key.expose_secret()
    );
    // A backup of another KMS (another root key) does not open under the restored root.
    let mut other = Kms::open(
        &dir.path().join("other.redb"),
        &common::platform(),
        anchor(),
    )
    .unwrap();
    let foreign = other.export_backup().unwrap();
    let err = restore(&foreign, "refused.redb").unwrap_err();
    assert!(
        err.to_string()
            .contains("does not open under the restored root key"),
        "{err}"
    );
    let _ = RecoveryPolicy::try_from(&policy).unwrap();
}
