//! Unit tests of [`crate::recovery`]: policy rules, leaks, envelopes forged inside the
//! session's trust boundary, threshold 1, identity files. Restores across officers are in
//! `tests/recovery.rs`.

use std::str::FromStr;

use age::x25519::{Identity, Recipient};
use sha2::{Digest, Sha256, Sha512};

use super::envelope::{decrypt_with, encrypt_to, open_envelope, seal_envelope};
use super::*;
use crate::crypto::KEY_LEN;

/// `n` officers: their identities and recipients.
fn officers(n: usize) -> Vec<(Identity, String)> {
    (0..n)
        .map(|_| {
            let (text, recipient) = new_officer_identity();
            (parse_officer_identity(&text).unwrap(), recipient)
        })
        .collect()
}

fn policy(k: u8, officers: &[(Identity, String)]) -> RecoveryPolicy {
    let recipients: Vec<String> = officers.iter().map(|(_, r)| r.clone()).collect();
    RecoveryPolicy::new(k, &recipients).unwrap()
}

/// Every rendering of `secret` a leak would likely use.
fn renderings(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        format!("{secret:?}").into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_policy_rules_name_what_is_wrong() {
    let people = officers(3);
    let recipients: Vec<String> = people.iter().map(|(_, r)| r.clone()).collect();
    let err = RecoveryPolicy::new(1, &[]).unwrap_err();
    assert_eq!(err, RecoveryError::OfficerCount { officers: 0 });
    let many = vec![recipients[0].clone(); MAX_OFFICERS + 1];
    let err = RecoveryPolicy::new(2, &many).unwrap_err();
    assert_eq!(
        err.to_string(),
        "recovery policy names 17 officers: give 1 to 16"
    );
    for k in [0, 4] {
        let err = RecoveryPolicy::new(k, &recipients).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("recovery threshold {k} is not within 1..=3 (the officers)")
        );
    }
    let mut bad = recipients.clone();
    bad[1] = "age1notakey".into();
    let err = RecoveryPolicy::new(2, &bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("recovery officer 2 \"age1notakey\" is not an age X25519 recipient"),
        "{err}"
    );
    let mut twice = recipients.clone();
    twice[2] = recipients[0].to_uppercase();
    let err = RecoveryPolicy::new(2, &twice).unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::DuplicateOfficer {
                first: 1,
                second: 3,
                ..
            }
        ),
        "{err}"
    );

    // Threshold 1 (any one officer restores alone) is allowed, as the manifest allows it.
    assert_eq!(RecoveryPolicy::new(1, &recipients).unwrap().threshold(), 1);
    let from_manifest = coffer_types::RecoveryPolicy {
        threshold: 2,
        officers: recipients.clone(),
        restore: None,
    };
    let policy = RecoveryPolicy::try_from(&from_manifest).unwrap();
    assert_eq!(policy.officers().collect::<Vec<_>>(), recipients);
}

#[test]
fn a_bad_deployment_id_is_refused() {
    let people = officers(2);
    let root = RootKey::generate().unwrap();
    for bad in ["", "UPPER", "a/b", &"x".repeat(64)] {
        let err = split(&root, &policy(2, &people), bad).unwrap_err();
        assert_eq!(
            err,
            RecoveryError::DeploymentId {
                got: bad.to_owned()
            }
        );
    }
}

/// Decrypts every share of `kit` with its officer's identity: the share bytes a leak check
/// must look for.
fn share_bytes(kit: &RecoveryKit, people: &[(Identity, String)]) -> Vec<Vec<u8>> {
    kit.shares
        .iter()
        .zip(people)
        .map(|(share, (identity, _))| {
            let plain = decrypt_with(identity, share.age.as_bytes(), "test").unwrap();
            open_envelope(&plain).unwrap().1.to_vec()
        })
        .collect()
}

#[test]
fn the_kit_and_the_session_hold_no_key_or_share_bytes() {
    let people = officers(5);
    let root = RootKey::generate().unwrap();
    let kit = split(&root, &policy(3, &people), "dep-test").unwrap();
    let shares = share_bytes(&kit, &people);
    assert_eq!(shares.len(), 5);

    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    for ((share, (identity, _)), _) in kit.shares.iter().zip(&people).zip(0..3) {
        let again = reencrypt_share(share.age.as_bytes(), identity, session.recipient()).unwrap();
        session.submit(&again).unwrap();
    }
    let public = [
        serde_json::to_vec(&kit).unwrap(),
        serde_json::to_vec_pretty(&kit).unwrap(),
        serde_json::to_vec(&session.status()).unwrap(),
        format!("{session:?}").into_bytes(),
        format!("{session:#?}").into_bytes(),
        format!("{kit:?}").into_bytes(),
    ];
    for secret in std::iter::once(root.bytes().to_vec()).chain(shares) {
        for needle in renderings(&secret) {
            for bytes in &public {
                assert!(!contains(bytes, &needle), "a secret leaked");
            }
        }
    }
    // The checker finds what it looks for.
    let leaky = format!("the root key is {}", hex::encode(root.bytes()));
    assert!(contains(leaky.as_bytes(), &renderings(root.bytes())[1]));

    let restored = session.complete().unwrap();
    assert_eq!(restored.bytes(), root.bytes());
}

#[test]
fn threshold_one_restores_from_any_single_share() {
    let people = officers(3);
    let root = RootKey::generate().unwrap();
    let kit = split(&root, &policy(1, &people), "dep-test").unwrap();
    for (share, (identity, _)) in kit.shares.iter().zip(&people) {
        let mut session = RecoverySession::new(kit.info.clone()).unwrap();
        let again = reencrypt_share(share.age.as_bytes(), identity, session.recipient()).unwrap();
        session.submit(&again).unwrap();
        assert_eq!(session.complete().unwrap().bytes(), root.bytes());
    }
}

/// Encrypts an envelope made by hand to `recipient`, as a forger could.
fn forged(info: &RecoveryInfo, index: u8, officer: &str, y: &[u8], recipient: &str) -> Vec<u8> {
    let envelope = seal_envelope(info, index, officer, y).unwrap();
    let to = Recipient::from_str(recipient).unwrap();
    encrypt_to(&to, &envelope).unwrap().into_bytes()
}

#[test]
fn a_corrupted_share_in_a_valid_envelope_fails_the_commitment() {
    let people = officers(3);
    let root = RootKey::generate().unwrap();
    let kit = split(&root, &policy(2, &people), "dep-test").unwrap();
    let shares = share_bytes(&kit, &people);
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    let mut y = shares[0].clone();
    y[7] ^= 0x01;
    let recipient = session.recipient().to_owned();
    session
        .submit(&forged(&kit.info, 1, &people[0].1, &y, &recipient))
        .unwrap();
    session
        .submit(&forged(&kit.info, 2, &people[1].1, &shares[1], &recipient))
        .unwrap();
    let err = session.complete().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the 2 shares (indices 1, 2) combine to a key whose commitment is not the expected {}: a share is corrupted or altered",
            hex::encode(kit.info.commitment)
        )
    );
}

#[test]
fn envelope_fields_are_checked_and_errors_do_not_quote_the_share() {
    let people = officers(3);
    let root = RootKey::generate().unwrap();
    let kit = split(&root, &policy(2, &people), "dep-test").unwrap();
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();
    let recipient = session.recipient().to_owned();
    let y = [0x11u8; KEY_LEN];

    // Index outside 1..=n, and an index given to another officer.
    let err = session
        .submit(&forged(&kit.info, 4, &people[0].1, &y, &recipient))
        .unwrap_err();
    assert_eq!(
        err,
        RecoveryError::IndexOutOfRange {
            index: 4,
            shares: 3
        }
    );
    let err = session
        .submit(&forged(&kit.info, 2, &people[0].1, &y, &recipient))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the share's officer is {}, expected {}",
            people[0].1, people[1].1
        )
    );

    // Another threshold or commitment than the split's.
    let mut other = kit.info.clone();
    other.threshold = 3;
    let err = session
        .submit(&forged(&other, 1, &people[0].1, &y, &recipient))
        .unwrap_err();
    assert_eq!(err.to_string(), "the share's threshold is 3, expected 2");
    let mut other = kit.info.clone();
    other.commitment[0] ^= 1;
    let err = session
        .submit(&forged(&other, 1, &people[0].1, &y, &recipient))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::Mismatch {
                field: "root key commitment",
                ..
            }
        ),
        "{err}"
    );

    // Not hex: refused without quoting it; unknown fields and other formats refused.
    let to = Recipient::from_str(&recipient).unwrap();
    let text = String::from_utf8(
        seal_envelope(&kit.info, 1, &people[0].1, &y)
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let secret_ish = "zz11223344";
    let bad_hex = text.replace(&hex::encode(y)[..10], secret_ish);
    let err = session
        .submit(encrypt_to(&to, bad_hex.as_bytes()).unwrap().as_bytes())
        .unwrap_err();
    assert_eq!(err.to_string(), "the decrypted share is not a valid recovery share envelope: the share is not 64 hex digits");
    assert!(!err.to_string().contains("zz"));
    let extra = text.replacen('{', "{\"extra\":1,", 1);
    let err = session
        .submit(encrypt_to(&to, extra.as_bytes()).unwrap().as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    let v2 = text.replace(SHARE_FORMAT, "coffer-kms recovery share v2");
    let err = session
        .submit(encrypt_to(&to, v2.as_bytes()).unwrap().as_bytes())
        .unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::Mismatch {
                field: "format",
                ..
            }
        ),
        "{err}"
    );

    // Oversized input is refused before any decryption.
    let err = session
        .submit(&vec![b'a'; MAX_ENCRYPTED_SHARE + 1])
        .unwrap_err();
    assert!(matches!(err, RecoveryError::TooLarge { .. }), "{err}");
    assert!(session.status().received.is_empty());
}

#[test]
fn report_data_binds_the_nonce_and_the_recipient() {
    let (_, a) = new_officer_identity();
    let (_, b) = new_officer_identity();
    let base = recovery_report_data(b"nonce", &a);
    assert_eq!(base, recovery_report_data(b"nonce", &a));
    assert_ne!(base, recovery_report_data(b"nonce2", &a));
    assert_ne!(base, recovery_report_data(b"nonce", &b));
    let mut h = Sha512::new();
    h.update(REPORT_DATA_LABEL);
    h.update(Sha256::digest(b"nonce"));
    h.update(Sha256::digest(a.as_bytes()));
    assert_eq!(base, <[u8; 64]>::from(h.finalize()));
}

#[test]
fn an_officer_identity_file_round_trips_and_bad_ones_are_refused_unquoted() {
    let (text, recipient) = new_officer_identity();
    assert!(text.contains(&format!("# public key: {recipient}\n")));
    let identity = parse_officer_identity(&text).unwrap();
    assert_eq!(identity.to_public().to_string(), recipient);
    let (other, _) = new_officer_identity();
    let two = format!("{}{}", *text, *other);
    assert!(matches!(
        parse_officer_identity(&two),
        Err(RecoveryError::Identity { .. })
    ));
    assert!(matches!(
        parse_officer_identity("# nothing\n"),
        Err(RecoveryError::Identity { .. })
    ));
    let key_line = text.lines().last().unwrap();
    let broken = key_line.replace('Q', "P").replace('A', "Q");
    let err = parse_officer_identity(&broken).err().unwrap();
    assert!(!err.to_string().contains(&broken[16..]), "{err}");
}

#[test]
fn a_kit_is_checked_when_parsed() {
    let people = officers(3);
    let root = RootKey::generate().unwrap();
    let kit = split(&root, &policy(2, &people), "dep-test").unwrap();
    let json = serde_json::to_vec(&kit).unwrap();
    assert_eq!(RecoveryKit::from_json(&json).unwrap(), kit);
    assert_eq!(kit.share(2).unwrap().officer, people[1].1);
    assert!(kit.share(4).is_none());

    let mut swapped = kit.clone();
    swapped.shares.swap(0, 1);
    let err = RecoveryKit::from_json(&serde_json::to_vec(&swapped).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("share at position 1 is index 2"),
        "{err}"
    );
    let mut other = kit.clone();
    other.format = "v0".into();
    let err = RecoveryKit::from_json(&serde_json::to_vec(&other).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected \"coffer-kms recovery kit v1\""),
        "{err}"
    );
    let mut short = kit;
    short.shares.pop();
    let err = RecoveryKit::from_json(&serde_json::to_vec(&short).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "recovery kit: 2 shares for 3 officers");
}
