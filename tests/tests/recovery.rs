//! `coffer recovery` as recovery officers drive it: `keygen` makes their identities, the KMS
//! splits its root key to them, each `reencrypt`s their share to a restoring KMS's session, and
//! the session takes the shares and restores the root key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use coffer_kms::keys::{Kek, OrgId, RootKey};
use coffer_kms::recovery::{split, RecoveryPolicy, RecoverySession};
use coffer_tests::{run, Outcome};

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn keygen(path: &Path) -> String {
    let outcome = run(&["recovery", "keygen", "--out", arg(path)]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    outcome.stdout.trim().to_owned()
}

fn reencrypt(share: &Path, identity: &Path, to: &str, out: &Path) -> Outcome {
    run(&[
        "recovery",
        "reencrypt",
        "--share",
        arg(share),
        "--identity",
        arg(identity),
        "--to",
        to,
        "--out",
        arg(out),
    ])
}

#[test]
fn officers_keygen_and_reencrypt_their_shares_to_a_restoring_session() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (1..=3)
        .map(|i| dir.path().join(format!("officer{i}.key")))
        .collect();
    let recipients: Vec<String> = keys.iter().map(|key| keygen(key)).collect();
    for (key, recipient) in keys.iter().zip(&recipients) {
        assert!(recipient.starts_with("age1"), "{recipient}");
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        let text = std::fs::read_to_string(key).unwrap();
        assert!(
            text.contains(&format!("# public key: {recipient}\n")),
            "{text}"
        );
        assert!(text.contains("\nAGE-SECRET-KEY-1"), "{text}");
    }
    // An identity is never overwritten.
    let outcome = run(&["recovery", "keygen", "--out", arg(&keys[0])]);
    assert_ne!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stderr.contains("it must not exist yet"),
        "{outcome:?}"
    );

    // The KMS splits its root key 2-of-3 to the officers.
    let root = RootKey::generate().unwrap();
    let wrapped = root
        .wrap_kek(&Kek::generate(OrgId::new("acme").unwrap(), 1).unwrap())
        .unwrap();
    let kit = split(
        &root,
        &RecoveryPolicy::new(2, &recipients).unwrap(),
        "dep-cli",
    )
    .unwrap();
    let mut session = RecoverySession::new(kit.info.clone()).unwrap();

    for index in [3u8, 1] {
        let share = dir.path().join(format!("share{index}.age"));
        std::fs::write(&share, &kit.share(index).unwrap().age).unwrap();
        let out = dir.path().join(format!("share{index}.to-session.age"));
        let identity = &keys[usize::from(index) - 1];
        let outcome = reencrypt(&share, identity, session.recipient(), &out);
        assert_eq!(outcome.code, 0, "{outcome:?}");
        assert!(
            outcome.stdout.starts_with(&format!(
                "share {index} of 3 (any 2 restore) of deployment dep-cli\n"
            )),
            "{outcome:?}"
        );
        assert!(
            outcome.stdout.contains(&hex::encode(kit.info.commitment)),
            "{outcome:?}"
        );
        assert_eq!(
            session.submit(&std::fs::read(&out).unwrap()).unwrap(),
            index
        );
    }
    session.complete().unwrap().unwrap_kek(&wrapped).unwrap();
}

#[test]
fn reencrypting_with_the_wrong_identity_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine.key");
    let theirs = dir.path().join("theirs.key");
    let recipients = vec![keygen(&mine), keygen(&theirs)];
    let root = RootKey::generate().unwrap();
    let kit = split(
        &root,
        &RecoveryPolicy::new(2, &recipients).unwrap(),
        "dep-cli",
    )
    .unwrap();
    let share = dir.path().join("share1.age");
    std::fs::write(&share, &kit.share(1).unwrap().age).unwrap();
    let session = RecoverySession::new(kit.info.clone()).unwrap();
    let out = dir.path().join("out.age");

    let outcome = reencrypt(&share, &theirs, session.recipient(), &out);
    assert_eq!(outcome.code, 2, "{outcome:?}");
    let errors: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| l.starts_with("coffer: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{outcome:?}");
    assert!(
        errors[0].contains("the share does not decrypt with this officer's identity"),
        "{outcome:?}"
    );
    assert!(!out.exists());

    let outcome = reencrypt(&share, &mine, "age1nope", &out);
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("the session recipient \"age1nope\" is not an age X25519 recipient"),
        "{outcome:?}"
    );
    // The identity never appears in what the CLI prints.
    let secret = std::fs::read_to_string(&mine).unwrap();
    let key_line = secret.lines().last().unwrap();
    assert!(!outcome.stderr.contains(key_line) && !outcome.stdout.contains(key_line));
}
