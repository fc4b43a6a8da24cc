//! Rolling the store file back to an older copy, or deleting it, is refused when an anchor holds
//! the newest version: with the in-memory anchor (standing for the replica quorum) and with a
//! real TPM NV counter in an swtpm (feature `tpm`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use coffer_kms::rollback::{MemoryAnchor, Unanchored, VersionAnchor};
use coffer_kms::{Kms, KmsError, OrgId, StoreError};

/// Opens the store with `anchor()`, runs `writes` operations, closes it; returns the version.
fn write(path: &Path, anchor: Box<dyn VersionAnchor>, writes: usize) -> u64 {
    let mut kms = Kms::open(path, &common::platform(), anchor).unwrap();
    let acme = OrgId::new("acme").unwrap();
    if kms.org_key(&acme).is_none() {
        kms.create_org_key(&acme).unwrap();
    }
    for _ in 0..writes {
        kms.generate_data_key(&acme).unwrap();
    }
    kms.state_version()
}

/// The scenario of the issue: copy the store aside, write more, put the old copy back.
fn roll_back(anchor: impl Fn() -> Box<dyn VersionAnchor>) -> (u64, u64, KmsError) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let old = write(&path, anchor(), 3);
    std::fs::copy(&path, dir.path().join("aside.redb")).unwrap();
    let new = write(&path, anchor(), 2);
    assert!(new > old);
    std::fs::copy(dir.path().join("aside.redb"), &path).unwrap();
    let err = Kms::open(&path, &common::platform(), anchor()).unwrap_err();
    (old, new, err)
}

fn assert_rolled_back(old: u64, new: u64, err: &KmsError) {
    match err {
        KmsError::Store(StoreError::RolledBack { state, anchor, .. }) => {
            assert_eq!((*state, *anchor), (old, new));
        }
        other => panic!("expected a rollback refusal, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("rolled back: state version {old} < anchor {new}")),
        "{message}"
    );
}

#[test]
fn an_older_copy_of_the_store_is_refused_against_the_anchor() {
    let anchor = MemoryAnchor::new();
    let (old, new, err) = roll_back(|| Box::new(anchor.clone()));
    assert_rolled_back(old, new, &err);
}

#[test]
fn without_an_anchor_the_same_rollback_goes_unnoticed() {
    // What SEV-SNP and sim run until replicas arrive: this is the gap the docs name.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let old = write(&path, Box::new(Unanchored::accepting_rollback()), 3);
    std::fs::copy(&path, dir.path().join("aside.redb")).unwrap();
    write(&path, Box::new(Unanchored::accepting_rollback()), 2);
    std::fs::copy(dir.path().join("aside.redb"), &path).unwrap();
    let kms = Kms::open(
        &path,
        &common::platform(),
        Box::new(Unanchored::accepting_rollback()),
    )
    .unwrap();
    assert_eq!(kms.state_version(), old);
}

#[test]
fn a_deleted_store_is_refused_when_the_anchor_knows_one_existed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    let version = write(&path, Box::new(anchor.clone()), 1);
    std::fs::remove_file(&path).unwrap();
    let err = Kms::open(&path, &common::platform(), Box::new(anchor.clone())).unwrap_err();
    match &err {
        KmsError::Store(StoreError::StateMissing { anchor, .. }) => assert_eq!(*anchor, version),
        other => panic!("expected a missing-state refusal, got {other:?}"),
    }
    assert!(
        err.to_string().contains("refusing to start afresh"),
        "{err}"
    );
}

#[test]
fn the_latest_store_still_opens_after_a_refused_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let anchor = MemoryAnchor::new();
    write(&path, Box::new(anchor.clone()), 1);
    std::fs::copy(&path, dir.path().join("aside.redb")).unwrap();
    let new = write(&path, Box::new(anchor.clone()), 1);
    std::fs::copy(&path, dir.path().join("latest.redb")).unwrap();
    std::fs::copy(dir.path().join("aside.redb"), &path).unwrap();
    assert!(Kms::open(&path, &common::platform(), Box::new(anchor.clone())).is_err());
    std::fs::copy(dir.path().join("latest.redb"), &path).unwrap();
    let kms = Kms::open(&path, &common::platform(), Box::new(anchor.clone())).unwrap();
    assert_eq!(kms.state_version(), new);
}

#[cfg(feature = "tpm")]
mod tpm {
    use super::*;
    use coffer_kms::rollback::tpm::{TpmNvCounter, DEFAULT_NV_INDEX};
    use coffer_vtpm_provider::swtpm::Swtpm;

    #[test]
    fn an_older_copy_of_the_store_is_refused_against_a_tpm_nv_counter() {
        let swtpm = Swtpm::start().unwrap();
        let tcti = swtpm.tcti();
        // A fresh anchor object each time: the version lives in the TPM, not in the process.
        let anchor = || -> Box<dyn VersionAnchor> {
            Box::new(TpmNvCounter::new(tcti.clone(), DEFAULT_NV_INDEX))
        };
        assert_eq!(anchor().read().unwrap(), None);
        let (old, new, err) = roll_back(anchor);
        assert_rolled_back(old, new, &err);
        assert_eq!(anchor().read().unwrap(), Some(new));
        assert!(
            err.to_string().contains("TPM NV counter 0x0100c0ff"),
            "{err}"
        );
    }

    #[test]
    fn the_tpm_counter_only_moves_up_and_refuses_an_index_that_is_not_a_counter() {
        let swtpm = Swtpm::start().unwrap();
        let mut counter = TpmNvCounter::new(swtpm.tcti(), DEFAULT_NV_INDEX);
        let first = counter.advance_to(1).unwrap();
        assert!(first >= 1);
        assert_eq!(counter.advance_to(first + 3).unwrap(), first + 3);
        assert_eq!(counter.advance_to(2).unwrap(), first + 3, "never lowered");
        assert_eq!(counter.read().unwrap(), Some(first + 3));

        // An ordinary NV index at the anchor's handle (something that could be written
        // backwards) is refused rather than trusted.
        let ctx = &mut swtpm.context().unwrap();
        define_ordinary_index(ctx, DEFAULT_NV_INDEX + 1);
        let mut impostor = TpmNvCounter::new(swtpm.tcti(), DEFAULT_NV_INDEX + 1);
        let err = impostor.read().unwrap_err();
        assert!(err.to_string().contains("not an 8-byte counter"), "{err}");
    }

    fn define_ordinary_index(ctx: &mut tss_esapi::Context, index: u32) {
        use tss_esapi::attributes::NvIndexAttributesBuilder;
        use tss_esapi::handles::{NvIndexTpmHandle, ObjectHandle};
        use tss_esapi::interface_types::algorithm::HashingAlgorithm;
        use tss_esapi::interface_types::resource_handles::Provision;
        use tss_esapi::structures::NvPublicBuilder;
        let attributes = NvIndexAttributesBuilder::new()
            .with_owner_write(true)
            .with_owner_read(true)
            .build()
            .unwrap();
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(index).unwrap())
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .unwrap();
        let handle = ctx.nv_define_space(Provision::Owner, None, public).unwrap();
        ctx.tr_close(&mut ObjectHandle::from(handle)).unwrap();
    }
}
