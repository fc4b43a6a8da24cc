//! The vectors of Go's `golang.org/x/mod/sumdb/note` tests (keys, signatures, malformed notes),
//! co-signing, and parsing arbitrary bytes without panicking.

use super::*;

const PETER_SEED: &str = "810a1402d5146c8d84f2443330f54080ebf98ee17d9c74f6252fc5d5c7283173";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn peter_signer() -> NoteSigner {
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(PETER_SEED, seed.as_mut()).unwrap();
    NoteSigner::ed25519_from_seed("PeterNeumann", seed).unwrap()
}

fn signer(name: &str, byte: u8) -> NoteSigner {
    NoteSigner::ed25519_from_seed(name, Zeroizing::new([byte; 32])).unwrap()
}

fn trusted(vkeys: &[&str]) -> TrustedKeys {
    TrustedKeys::new(vkeys.iter().map(|v| VerifierKey::parse(v).unwrap())).unwrap()
}

#[test]
fn signing_reproduces_the_go_note_vector() {
    let signer = peter_signer();
    assert_eq!(signer.verifier_key().to_string(), PETER_VKEY);
    assert_eq!(signer.key_id(), 0xc74f20a3);
    let mut note = Note::new(TEXT).unwrap();
    note.sign(&signer).unwrap();
    let want = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(String::from_utf8(note.to_bytes().unwrap()).unwrap(), want);
    // Signing again replaces the signature rather than adding a second line.
    note.sign(&signer).unwrap();
    assert_eq!(note.signatures().len(), 1);
}

#[test]
fn verifier_keys_parse_and_every_mangling_is_refused() {
    let key = VerifierKey::parse(PETER_VKEY).unwrap();
    assert_eq!(key.name(), "PeterNeumann");
    assert_eq!(key.key_id(), 0xc74f20a3);
    assert_eq!(key.to_string(), PETER_VKEY);
    assert_eq!(PETER_VKEY.parse::<VerifierKey>().unwrap(), key);

    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if (i, j) == (0, b.len()) {
                continue;
            }
            let s = String::from_utf8_lossy(&b[i..j]);
            assert!(VerifierKey::parse(&s).is_err(), "{s:?} parsed");
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] = m[i].wrapping_add(1);
        let s = String::from_utf8_lossy(&m);
        assert!(VerifierKey::parse(&s).is_err(), "{s:?} parsed");
    }
    // A key of the wrong length and a key of another type, each with its id adjusted.
    assert!(matches!(
        VerifierKey::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        ),
        Err(KeyError::MalformedVerifierKey { .. })
    ));
    assert_eq!(
        VerifierKey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .unwrap_err(),
        KeyError::UnsupportedAlgorithm {
            name: "PeterNeumann".into(),
            got: 0x65
        }
    );
    assert_eq!(
        VerifierKey::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .unwrap_err()
            .to_string(),
        "verifier key PeterNeumann: key id c74f20a4 does not match the key (its id is c74f20a3)"
    );
}

#[test]
fn opening_the_go_vectors_verifies_trusted_keys_and_keeps_others_apart() {
    let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let peter = VerifierKey::parse(PETER_VKEY).unwrap();
    let enoch = VerifierKey::parse(ENOCH_VKEY).unwrap();

    let n = open(msg.as_bytes(), &trusted(&[PETER_VKEY])).unwrap();
    assert_eq!(n.text(), TEXT);
    assert_eq!(n.verified_by(), std::slice::from_ref(&peter));
    assert_eq!(n.unverified().len(), 1);
    assert_eq!(n.unverified()[0].label(), "EnochRoot+af0cfe78");

    let n = open(
        msg.as_bytes(),
        &trusted(&[PETER_VKEY, ENOCH_VKEY, ENOCH_VKEY]),
    )
    .unwrap();
    assert_eq!(n.verified_by(), [peter.clone(), enoch.clone()]);
    assert!(n.unverified().is_empty());
    n.require(&[&peter, &enoch]).unwrap();

    assert_eq!(
        open(msg.as_bytes(), &TrustedKeys::default()).unwrap_err(),
        NoteError::NoTrustedSignature {
            signers: vec!["PeterNeumann+c74f20a3".into(), "EnochRoot+af0cfe78".into()]
        }
    );

    // Tampered signature by a trusted key: the whole note is refused.
    let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert_eq!(
        open(bad.as_bytes(), &trusted(&[PETER_VKEY])).unwrap_err(),
        NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        }
    );
    // Tampered text.
    let altered = msg.replacen("problem,", "problem;", 1);
    assert!(matches!(
        open(altered.as_bytes(), &trusted(&[PETER_VKEY])).unwrap_err(),
        NoteError::InvalidSignature { .. }
    ));

    // Repeated signatures are kept once; a tampered unknown one stays unverified.
    let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
    let dup = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
    let n = open(dup.as_bytes(), &trusted(&[PETER_VKEY])).unwrap();
    assert_eq!(n.verified_by(), [peter]);
    assert_eq!(n.unverified().len(), 2);

    let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
    assert_eq!(
        Note::parse(many.as_bytes()).unwrap_err(),
        NoteError::TooManySignatures { max: 100 }
    );
    assert!(Note::parse(format!("{TEXT}\n{}", PETER_SIG.repeat(100)).as_bytes()).is_ok());
}

#[test]
fn malformed_notes_are_refused_with_the_rule_they_break() {
    let sig_no_newline = &PETER_SIG[..PETER_SIG.len() - 1];
    let cases: Vec<(String, &str)> = vec![
        (TEXT.into(), "no blank line"),
        (format!("{TEXT}\n"), "has no signature"),
        (format!("{TEXT}\n{sig_no_newline}"), "does not end with a newline"),
        (format!("\x01{TEXT}\n{PETER_SIG}"), "control character 0x01 at offset 0"),
        (
            format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"),
            "signature line 1: expected '— <name> <base64 signature>' with one space",
        ),
        (format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"), "signature line 2"),
        (format!("{TEXT}\n- PeterNeumann AAAA\n"), "em dash"),
        (format!("{TEXT}\n\u{2014} PeterNeumann AAAAAA==\n"), "shorter than a key id"),
        (format!("{TEXT}\n\u{2014} PeterNeumann AAAAAB==\n"), "not canonical base64"),
        (format!("{TEXT}\n\u{2014} PeterNeumann\n"), "expected"),
        (format!("{TEXT}\n\u{2014} A+B AAAAAAA=\n"), "contains '+'"),
    ];
    for (msg, want) in cases {
        let err = Note::parse(msg.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(want), "{msg:?}: got {err:?}, want {want:?}");
    }
    let mut invalid_utf8 = format!("{TEXT}\n{PETER_SIG}").into_bytes();
    invalid_utf8.insert(0, 0xff);
    assert_eq!(
        Note::parse(&invalid_utf8).unwrap_err(),
        NoteError::Text(TextError::NotUtf8 { offset: 0 })
    );
    assert!(matches!(
        Note::parse(&vec![b'a'; MAX_NOTE_LEN + 1]).unwrap_err(),
        NoteError::TooLong { .. }
    ));
    assert_eq!(
        Note::new("abc").unwrap_err(),
        NoteError::Text(TextError::NoFinalNewline)
    );
    assert_eq!(
        Note::new("").unwrap_err(),
        NoteError::Text(TextError::Empty)
    );
    assert_eq!(
        Note::new(TEXT).unwrap().to_bytes().unwrap_err(),
        NoteError::NoSignatures
    );
}

#[test]
fn a_cosigned_note_carries_one_line_per_signer_and_verifies_with_all() {
    let log = signer("coffer.dep/audit", 1);
    let kms = signer("coffer.dep/audit/kms", 2);
    let mut by_log =
        Note::new("coffer.dep/audit\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n").unwrap();
    by_log.sign(&log).unwrap();
    let mut by_kms = Note::new(by_log.text()).unwrap();
    by_kms.sign(&kms).unwrap();
    by_log.merge(&by_kms).unwrap();
    by_log.merge(&by_kms).unwrap(); // idempotent
    assert_eq!(by_log.signatures().len(), 2);

    let bytes = by_log.to_bytes().unwrap();
    let keys = TrustedKeys::new([log.verifier_key(), kms.verifier_key()]).unwrap();
    let n = open(&bytes, &keys).unwrap();
    n.require(&[&log.verifier_key(), &kms.verifier_key()])
        .unwrap();

    // Only the log signed: requiring the KMS names it.
    let mut only_log = Note::new(by_log.text()).unwrap();
    only_log.sign(&log).unwrap();
    let n = open(&only_log.to_bytes().unwrap(), &keys).unwrap();
    let err = n
        .require(&[&log.verifier_key(), &kms.verifier_key()])
        .unwrap_err();
    assert_eq!(
        err,
        NoteError::MissingSignature {
            key: kms.verifier_key().label(),
            signed: vec![log.verifier_key().label()],
        }
    );

    let other = Note::new("another text\n").unwrap();
    assert_eq!(by_log.merge(&other).unwrap_err(), NoteError::TextMismatch);
}

#[test]
fn keys_with_bad_names_and_ambiguous_trust_sets_are_refused() {
    for name in ["", "a b", "a+b", "a\tb", "a\u{2003}b"] {
        assert!(matches!(
            NoteSigner::ed25519_from_seed(name, Zeroizing::new([1; 32])).unwrap_err(),
            KeyError::BadName { .. }
        ));
        assert!(VerifierKey::ed25519(name, [1; 32]).is_err());
    }
    let a = VerifierKey::ed25519("same", [1; 32]).unwrap();
    // Forge a key with the same name and id but another public key.
    let mut b = a.clone();
    b.public_key = [2; 32];
    assert_eq!(
        TrustedKeys::new([a.clone(), b]).unwrap_err(),
        KeyError::AmbiguousKey {
            name: "same".into(),
            key_id: a.key_id()
        }
    );
    assert_eq!(TrustedKeys::new([a.clone(), a]).unwrap().len(), 1);
}

#[test]
fn signer_debug_output_holds_no_key_material() {
    let s = peter_signer();
    let debug = format!("{s:?}");
    assert!(
        debug.contains("[redacted]") && debug.contains("c74f20a3"),
        "{debug}"
    );
    assert!(!debug.to_lowercase().contains(&PETER_SEED[..8]), "{debug}");
}

/// A small deterministic generator (xorshift64*), so the robustness test needs no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn parsers_take_arbitrary_bytes_without_panicking() {
    let valid = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}").into_bytes();
    let cp = b"coffer.dep/audit\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\next\n".to_vec();
    let keys = trusted(&[PETER_VKEY, ENOCH_VKEY]);
    let alphabet = b"\n\n\n \x00\x01+=/-AZaz09\xe2\x80\x94\xff";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in [&valid, &cp] {
        for cut in 0..=seed.len() {
            let _ = Note::parse(&seed[..cut]).map(|n| n.verify(&keys));
            let _ = crate::Checkpoint::parse(&seed[..cut]);
        }
        for _ in 0..3000 {
            let mut m = seed.to_vec();
            for _ in 0..(1 + rng.next() % 4) {
                let at = (rng.next() as usize) % (m.len() + 1);
                let byte = alphabet[(rng.next() as usize) % alphabet.len()];
                match rng.next() % 3 {
                    0 if at < m.len() => m[at] = byte,
                    1 if at < m.len() => {
                        m.remove(at);
                    }
                    _ => m.insert(at, byte),
                }
            }
            if let Ok(note) = Note::parse(&m) {
                let _ = note.verify(&keys);
                let _ = note.to_bytes();
            }
            let _ = crate::Checkpoint::parse(&m);
            let _ = VerifierKey::parse(&String::from_utf8_lossy(&m));
        }
    }
}
