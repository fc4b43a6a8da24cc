//! k-of-n recovery of the root key as officers and a fresh KMS run it: split to officers, each
//! officer re-encrypts their share to the restoring session, the session restores the root key
//! from any k shares and refuses every share it must not take, saying why.
//!
//! The restored key is compared through what it does: a KEK wrapped under the original root key
//! unwraps under the restored one (AES-256-GCM: only the same key opens it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_kms::keys::{Kek, OrgId, RootKey, WrappedKek};
use coffer_kms::recovery::{
    new_officer_identity, parse_officer_identity, reencrypt_share, share_info, split,
    RecoveryError, RecoveryKit, RecoveryPolicy, RecoverySession,
};

const DEPLOYMENT: &str = "dep-a";

/// An officer: the identity from their identity file, and its recipient.
struct Officer {
    identity: age::x25519::Identity,
    recipient: String,
}

fn officers(n: usize) -> Vec<Officer> {
    (0..n)
        .map(|_| {
            let (text, recipient) = new_officer_identity();
            Officer {
                identity: parse_officer_identity(&text).unwrap(),
                recipient,
            }
        })
        .collect()
}

fn policy(k: u8, officers: &[Officer]) -> RecoveryPolicy {
    let recipients: Vec<String> = officers.iter().map(|o| o.recipient.clone()).collect();
    RecoveryPolicy::new(k, &recipients).unwrap()
}

/// A root key, a KEK wrapped under it, and its kit split k-of-n to `officers`.
fn setup(k: u8, officers: &[Officer], deployment: &str) -> (RootKey, WrappedKek, RecoveryKit) {
    let root = RootKey::generate().unwrap();
    let kek = Kek::generate(OrgId::new("acme").unwrap(), 1).unwrap();
    let wrapped = root.wrap_kek(&kek).unwrap();
    let kit = split(&root, &policy(k, officers), deployment).unwrap();
    (root, wrapped, kit)
}

/// Officer `index` (1-based) re-encrypts their share of `kit` to `session`.
fn reencrypted(
    kit: &RecoveryKit,
    officers: &[Officer],
    index: u8,
    session: &RecoverySession,
) -> Vec<u8> {
    let share = kit.share(index).unwrap();
    let officer = &officers[usize::from(index) - 1];
    reencrypt_share(share.age.as_bytes(), &officer.identity, session.recipient()).unwrap()
}

/// Every subset of 1..=n with exactly `size` members.
fn subsets(n: u8, size: usize) -> Vec<Vec<u8>> {
    (0u32..1 << n)
        .filter(|mask| mask.count_ones() as usize == size)
        .map(|mask| (1..=n).filter(|i| mask & (1 << (i - 1)) != 0).collect())
        .collect()
}

#[test]
fn every_three_of_a_three_of_five_split_restore_the_same_root_key() {
    let people = officers(5);
    let (_root, wrapped, kit) = setup(3, &people, DEPLOYMENT);
    let kit = RecoveryKit::from_json(&serde_json::to_vec_pretty(&kit).unwrap()).unwrap();
    let mut tried = 0;
    for size in 3..=5 {
        for subset in subsets(5, size) {
            let mut session = RecoverySession::new(kit.info.clone()).unwrap();
            for &index in &subset {
                let share = reencrypted(&kit, &people, index, &session);
                assert_eq!(session.submit(&share).unwrap(), index);
            }
            assert_eq!(session.status().received, subset);
            let restored = session.complete().unwrap();
            let kek = restored
                .unwrap_kek(&wrapped)
                .unwrap_or_else(|e| panic!("{subset:?}: {e}"));
            assert_eq!(kek.org().as_str(), "acme");
            tried += 1;
        }
    }
    assert_eq!(tried, 10 + 5 + 1);
}

#[test]
fn two_shares_of_a_three_of_five_split_are_refused() {
    let people = officers(5);
    let (_root, _wrapped, kit) = setup(3, &people, DEPLOYMENT);
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    for index in [2, 5] {
        session
            .submit(&reencrypted(&kit, &people, index, &session))
            .unwrap();
    }
    let err = session.complete().unwrap_err();
    assert_eq!(err, RecoveryError::NotEnoughShares { needed: 3, got: 2 });
    assert_eq!(
        err.to_string(),
        "restoring the root key needs 3 shares, got 2"
    );
}

#[test]
fn a_share_for_another_deployment_is_refused() {
    let people = officers(3);
    let (root, _wrapped, kit) = setup(2, &people, DEPLOYMENT);
    let other = split(&root, &policy(2, &people), "dep-b").unwrap();
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    let err = session
        .submit(&reencrypted(&other, &people, 1, &session))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the share's deployment id is dep-b, expected dep-a"
    );
    assert!(session.status().received.is_empty());
}

#[test]
fn a_duplicated_index_is_refused() {
    let people = officers(3);
    let (_root, wrapped, kit) = setup(2, &people, DEPLOYMENT);
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    let share = reencrypted(&kit, &people, 2, &session);
    session.submit(&share).unwrap();
    let err = session.submit(&share).unwrap_err();
    assert_eq!(
        err.to_string(),
        "share 2 was already submitted to this session"
    );
    // The same share re-encrypted afresh is still share 2.
    let again = reencrypted(&kit, &people, 2, &session);
    assert_eq!(
        session.submit(&again).unwrap_err(),
        RecoveryError::DuplicateIndex { index: 2 }
    );
    // The session is unharmed: one more share completes it.
    session
        .submit(&reencrypted(&kit, &people, 3, &session))
        .unwrap();
    session.complete().unwrap().unwrap_kek(&wrapped).unwrap();
}

#[test]
fn a_share_encrypted_to_the_wrong_recipient_is_refused() {
    let people = officers(3);
    let (_root, _wrapped, kit) = setup(2, &people, DEPLOYMENT);
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();

    // Submitted as the KMS made it (to the officer), not re-encrypted to the session.
    let err = session
        .submit(kit.share(1).unwrap().age.as_bytes())
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the share does not decrypt with this recovery session's identity: "),
        "{err}"
    );
    assert!(matches!(err, RecoveryError::Decrypt { .. }), "{err}");

    // Re-encrypted to another session.
    let other = RecoverySession::new(kit.info.clone()).unwrap();
    let err = session
        .submit(&reencrypted(&kit, &people, 1, &other))
        .unwrap_err();
    assert!(matches!(err, RecoveryError::Decrypt { .. }), "{err}");

    // An officer cannot open another officer's share.
    let err = reencrypt_share(
        kit.share(1).unwrap().age.as_bytes(),
        &people[1].identity,
        session.recipient(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the share does not decrypt with this officer's identity: "),
        "{err}"
    );

    // A session recipient that is not one.
    let err = reencrypt_share(
        kit.share(1).unwrap().age.as_bytes(),
        &people[0].identity,
        "age1nope",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the session recipient \"age1nope\" is not an age X25519 recipient"),
        "{err}"
    );
}

/// Flips one character of the armored body to another base64 character: still armor, but
/// other ciphertext.
fn flip_in_body(armored: &[u8], at: usize) -> Vec<u8> {
    let text = std::str::from_utf8(armored).unwrap();
    let body_start = text.find('\n').unwrap() + 1;
    let mut bytes = armored.to_vec();
    let mut i = body_start + at;
    while !bytes[i].is_ascii_alphanumeric() {
        i += 1;
    }
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    bytes
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let people = officers(3);
    let (_root, wrapped, kit) = setup(2, &people, DEPLOYMENT);
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    let share = reencrypted(&kit, &people, 1, &session);
    let body_len = share.len() - 80;
    for at in [0, 30, 100, body_len / 2, body_len - 40] {
        let err = session.submit(&flip_in_body(&share, at)).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Decrypt { .. }),
            "at {at}: {err}"
        );
        assert!(
            err.to_string()
                .contains("(encrypted to another recipient, or altered)"),
            "{err}"
        );
    }
    // Binary (unarmored) garbage and truncation are refused the same way.
    assert!(matches!(
        session.submit(b"not age"),
        Err(RecoveryError::Decrypt { .. })
    ));
    let err = session.submit(&share[..share.len() / 2]).unwrap_err();
    assert!(matches!(err, RecoveryError::Decrypt { .. }), "{err}");

    // The officer side refuses an altered share too.
    let altered = flip_in_body(kit.share(2).unwrap().age.as_bytes(), 100);
    let err = reencrypt_share(&altered, &people[1].identity, session.recipient()).unwrap_err();
    assert!(matches!(err, RecoveryError::Decrypt { .. }), "{err}");

    // Nothing was taken: the untouched shares still restore.
    session.submit(&share).unwrap();
    session
        .submit(&reencrypted(&kit, &people, 3, &session))
        .unwrap();
    session.complete().unwrap().unwrap_kek(&wrapped).unwrap();
}

#[test]
fn shares_of_two_splits_are_not_mixed() {
    let people = officers(3);
    let (root, _wrapped, first) = setup(2, &people, DEPLOYMENT);
    // The same root key split again: same commitment, other polynomials.
    let second = split(&root, &policy(2, &people), DEPLOYMENT).unwrap();
    assert_eq!(first.info.commitment, second.info.commitment);
    assert_ne!(first.info.split_id, second.info.split_id);
    let mut session = RecoverySession::new(first.info.clone()).unwrap();
    session
        .submit(&reencrypted(&first, &people, 1, &session))
        .unwrap();
    let err = session
        .submit(&reencrypted(&second, &people, 2, &session))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the share's split id is {}, expected {}",
            hex::encode(second.info.split_id),
            hex::encode(first.info.split_id)
        )
    );

    // Another root key's split: refused the same way, before its commitment is even looked at.
    let (_other_root, _, other) = setup(2, &people, DEPLOYMENT);
    let err = session
        .submit(&reencrypted(&other, &people, 2, &session))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::Mismatch {
                field: "split id",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_officer_sees_what_their_share_is_before_reencrypting_it() {
    let people = officers(4);
    let (_root, _wrapped, kit) = setup(3, &people, DEPLOYMENT);
    let share = kit.share(4).unwrap();
    let info = share_info(share.age.as_bytes(), &people[3].identity).unwrap();
    assert_eq!(
        (
            info.deployment_id.as_str(),
            info.index,
            info.threshold,
            info.shares
        ),
        (DEPLOYMENT, 4, 3, 4)
    );
    assert_eq!(info.officer, people[3].recipient);
    assert_eq!(
        (info.split_id, info.commitment),
        (kit.info.split_id, kit.info.commitment)
    );
}

#[test]
fn a_session_refuses_an_expectation_that_is_no_split() {
    let people = officers(2);
    let (_root, _wrapped, kit) = setup(2, &people, DEPLOYMENT);
    let mut info = kit.info.clone();
    info.threshold = 3;
    let err = RecoverySession::new(info).unwrap_err();
    assert_eq!(
        err.to_string(),
        "recovery threshold 3 is not within 1..=2 (the officers)"
    );
    let mut info = kit.info;
    info.deployment_id = "Not/An/Id".into();
    assert!(matches!(
        RecoverySession::new(info),
        Err(RecoveryError::DeploymentId { .. })
    ));
}
