//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys: parse, sign, co-sign,
//! verify against a set of trusted keys.
//!
//! ```text
//! <text: UTF-8 lines, each ending in a newline>
//! <blank line>
//! — <key name> <base64(key id (4 bytes, big-endian) ‖ signature)>
//! — <another key name> <...>
//! ```
//!
//! A key's id is the first four bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)` (0x01: the
//! Ed25519 signature type); its verifier key string is `name+<id as 8 hex digits>+base64(0x01 ‖
//! public key)`. The signature is Ed25519 over the text bytes (blank line and signature lines
//! excluded), so any number of keys can sign the same text: a co-signed note is the text with one
//! line per signer.
//!
//! **Checks, when parsing** ([`Note::parse`], for any bytes, without panicking): at most
//! [`MAX_NOTE_LEN`] bytes; UTF-8 with no control character but newline; a blank line before the
//! signature block, which ends in a newline; each signature line `— name base64` with a valid
//! name (not empty, no whitespace, no `+`) and canonical base64 of at least five bytes; at most
//! [`MAX_SIGNATURES`] lines. **When verifying** ([`Note::verify`]): a signature by a trusted key
//! (same name and id) must verify, or the whole note is refused (as Go's `note.Open` does); at
//! least one trusted key must have signed; signatures by unknown keys are kept apart, unverified.
//! The rules follow the reference implementation, `golang.org/x/mod/sumdb/note`, whose test
//! vectors the tests reproduce.
//!
//! **Secrets:** a [`NoteSigner`] holds its Ed25519 seed in a [`Zeroizing`] buffer and prints
//! nothing of it. ring builds the expanded signing key from the seed for each signature and does
//! not wipe that copy when it is dropped (ring has no zeroizing key type).

use std::collections::BTreeMap;
use std::fmt;

use base64ct::{Base64, Encoding as _};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The largest note [`Note::parse`] accepts, in bytes. A checkpoint with a hundred signatures is
/// about 12 KiB; notes are read from untrusted places (a control plane, a downloaded bundle).
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// The most signature lines a note may carry (the reference implementation's limit too).
pub const MAX_SIGNATURES: usize = 100;

/// The signature type byte of Ed25519 keys.
pub const ED25519_ALGORITHM: u8 = 0x01;

/// Bytes in an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// Bytes in an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// The em dash and space that open a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The longest excerpt of untrusted input an error message quotes.
const EXCERPT_LEN: usize = 48;

/// `s` shortened for an error message (quoted with `{:?}`, so escapes are visible).
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_LEN) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// Why bytes are not acceptable note text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Not UTF-8.
    #[error("is not UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// A control character other than newline.
    #[error("holds control character 0x{byte:02x} at offset {offset} (only newline is allowed)")]
    ControlCharacter {
        /// Its offset.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// Does not end with a newline.
    #[error("does not end with a newline")]
    NoFinalNewline,
    /// Empty.
    #[error("is empty")]
    Empty,
}

/// `bytes` as UTF-8 holding no control character but newline.
pub(crate) fn checked_text(bytes: &[u8]) -> Result<&str, TextError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TextError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if let Some((offset, &byte)) = bytes
        .iter()
        .enumerate()
        .find(|(_, &b)| b < 0x20 && b != b'\n')
    {
        return Err(TextError::ControlCharacter { offset, byte });
    }
    Ok(text)
}

/// Checks a note's text: not empty, UTF-8, no control character but newline, ends with newline.
fn check_note_text(text: &str) -> Result<(), TextError> {
    if text.is_empty() {
        return Err(TextError::Empty);
    }
    checked_text(text.as_bytes())?;
    if !text.ends_with('\n') {
        return Err(TextError::NoFinalNewline);
    }
    Ok(())
}

/// Why a key name or a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key name that is not allowed.
    #[error("key name {name:?}: {reason}")]
    BadName {
        /// The name (shortened).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A verifier key string that does not parse.
    #[error("verifier key {vkey:?}: {reason}")]
    MalformedVerifierKey {
        /// The key string (shortened).
        vkey: String,
        /// What is wrong.
        reason: String,
    },
    /// A key of a signature type other than Ed25519.
    #[error(
        "verifier key {name}: signature type 0x{got:02x} is not supported (expected 0x01, Ed25519)"
    )]
    UnsupportedAlgorithm {
        /// The key's name.
        name: String,
        /// Its type byte.
        got: u8,
    },
    /// A verifier key whose id is not the hash of its name and key.
    #[error(
        "verifier key {name}: key id {got:08x} does not match the key (its id is {expected:08x})"
    )]
    KeyIdMismatch {
        /// The key's name.
        name: String,
        /// The id computed from the name and key.
        expected: u32,
        /// The id the string gives.
        got: u32,
    },
    /// Two different trusted keys with the same name and id.
    #[error("two different trusted keys are named {name}+{key_id:08x}")]
    AmbiguousKey {
        /// The name.
        name: String,
        /// The id.
        key_id: u32,
    },
    /// ring refused an Ed25519 seed (only possible for a seed of the wrong length).
    #[error("Ed25519 key for {name}: {reason}")]
    Ed25519 {
        /// The key's name.
        name: String,
        /// ring's reason.
        reason: String,
    },
}

/// Why a note does not parse, cannot be made, or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Longer than [`MAX_NOTE_LEN`].
    #[error("note is {got} bytes, more than the {max} allowed")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// The bytes are not acceptable note text.
    #[error("note {0}")]
    Text(#[from] TextError),
    /// No blank line before the signatures.
    #[error("note has no blank line between its text and its signatures")]
    NoSignatureBlock,
    /// A note without any signature line.
    #[error("note has no signature")]
    NoSignatures,
    /// A signature line that does not parse.
    #[error("note signature line {line}: {reason}")]
    BadSignatureLine {
        /// 1-based, counted from the first signature line (0: a signature made in code).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signatures")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature by a trusted key that does not verify: the note was altered, or forged.
    #[error("the signature by trusted key {name}+{key_id:08x} does not verify over the note text")]
    InvalidSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// Signed by no trusted key.
    #[error("note is signed by no trusted key (signed by: {})", signers.join(", "))]
    NoTrustedSignature {
        /// `name+id` of every key that signed.
        signers: Vec<String>,
    },
    /// A key that had to sign did not.
    #[error("note is not signed by {key} (signed by trusted keys: {})", signed.join(", "))]
    MissingSignature {
        /// `name+id` of the key required.
        key: String,
        /// `name+id` of the trusted keys that did sign.
        signed: Vec<String>,
    },
    /// Notes with different texts cannot be merged.
    #[error("cannot merge the signatures of two different note texts")]
    TextMismatch,
    /// A key or key name was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Checks a key name: not empty, no Unicode whitespace, no `+`.
pub fn check_key_name(name: &str) -> Result<(), KeyError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else if name.contains('+') {
        Some("contains '+'")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KeyError::BadName {
            name: excerpt(name),
            reason,
        }),
        None => Ok(()),
    }
}

/// A key's id: the first four bytes, big-endian, of `SHA-256(name ‖ 0x0A ‖ algorithm ‖ key)`.
pub fn key_id(name: &str, algorithm: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([algorithm]);
    h.update(public_key);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A public Ed25519 note key with its name: what a verifier trusts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public_key: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

/// The verifier key string: `name+<id, 8 hex digits>+base64(0x01 ‖ public key)`.
impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = [0u8; 1 + ED25519_PUBLIC_KEY_LEN];
        key[0] = ED25519_ALGORITHM;
        key[1..].copy_from_slice(&self.public_key);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            Base64::encode_string(&key)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = KeyError;
    fn from_str(vkey: &str) -> Result<Self, KeyError> {
        Self::parse(vkey)
    }
}

impl VerifierKey {
    /// The verifier key of Ed25519 `public_key` under `name`.
    pub fn ed25519(name: &str, public_key: [u8; ED25519_PUBLIC_KEY_LEN]) -> Result<Self, KeyError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, ED25519_ALGORITHM, &public_key),
            public_key,
        })
    }

    /// Parses a verifier key string `name+<8 hex digits>+base64(0x01 ‖ 32-byte key)`, checking
    /// that the id is the hash of the name and key.
    pub fn parse(vkey: &str) -> Result<Self, KeyError> {
        let malformed = |reason: &str| KeyError::MalformedVerifierKey {
            vkey: excerpt(vkey),
            reason: reason.to_owned(),
        };
        // The name has no '+', the id is hex: the first two '+' split; base64 may hold more.
        let (name, rest) = vkey
            .split_once('+')
            .ok_or_else(|| malformed("expected name+id+key"))?;
        let (id, key) = rest
            .split_once('+')
            .ok_or_else(|| malformed("expected name+id+key"))?;
        check_key_name(name)?;
        let mut id_bytes = [0u8; 4];
        if id.len() != 8 || hex::decode_to_slice(id, &mut id_bytes).is_err() {
            return Err(malformed("the key id is not 8 hex digits"));
        }
        let got = u32::from_be_bytes(id_bytes);
        let key = Base64::decode_vec(key).map_err(|_| malformed("the key is not base64"))?;
        let (&algorithm, public_key) = key
            .split_first()
            .ok_or_else(|| malformed("the key is empty"))?;
        if algorithm != ED25519_ALGORITHM {
            return Err(KeyError::UnsupportedAlgorithm {
                name: name.to_owned(),
                got: algorithm,
            });
        }
        let public_key: [u8; ED25519_PUBLIC_KEY_LEN] = public_key.try_into().map_err(|_| {
            malformed(&format!(
                "an Ed25519 key is {ED25519_PUBLIC_KEY_LEN} bytes, got {}",
                public_key.len()
            ))
        })?;
        let expected = key_id(name, algorithm, &public_key);
        if got != expected {
            return Err(KeyError::KeyIdMismatch {
                name: name.to_owned(),
                expected,
                got,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: expected,
            public_key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; ED25519_PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// `name+id`, as errors and signature listings name a key.
    pub fn label(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// An Ed25519 note signing key with its name. The seed is wiped on drop and never printed.
pub struct NoteSigner {
    name: String,
    key_id: u32,
    seed: Zeroizing<[u8; 32]>,
    public_key: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .field("seed", &"[redacted]")
            .finish()
    }
}

impl NoteSigner {
    /// The signer whose Ed25519 private key is `seed` (RFC 8032's 32-byte secret key).
    pub fn ed25519_from_seed(name: &str, seed: Zeroizing<[u8; 32]>) -> Result<Self, KeyError> {
        check_key_name(name)?;
        let pair = Self::key_pair(name, &seed)?;
        let public_key: [u8; ED25519_PUBLIC_KEY_LEN] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Ed25519 {
                name: name.to_owned(),
                reason: "the public key is not 32 bytes".into(),
            })?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, ED25519_ALGORITHM, &public_key),
            seed,
            public_key,
        })
    }

    fn key_pair(name: &str, seed: &[u8; 32]) -> Result<Ed25519KeyPair, KeyError> {
        Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError::Ed25519 {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; ED25519_PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// The matching verifier key.
    pub fn verifier_key(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.public_key,
        }
    }

    /// This key's signature of `text` (the note text, without the blank line).
    pub fn sign(&self, text: &str) -> Result<Signature, KeyError> {
        let pair = Self::key_pair(&self.name, &self.seed)?;
        Ok(Signature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: pair.sign(text.as_bytes()).as_ref().to_vec(),
        })
    }
}

/// One signature line of a note: the key's name and id and the signature bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    name: String,
    key_id: u32,
    signature: Vec<u8>,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}+{:08x})", self.name, self.key_id)
    }
}

impl Signature {
    /// A signature line's content. The name must be a valid key name and `signature` not empty.
    pub fn new(name: &str, key_id: u32, signature: Vec<u8>) -> Result<Self, NoteError> {
        check_key_name(name)?;
        if signature.is_empty() {
            return Err(NoteError::BadSignatureLine {
                line: 0,
                reason: "the signature is empty".into(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            signature,
        })
    }

    /// The signing key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signing key's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signature bytes (after the key id).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// `name+id`.
    pub fn label(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }

    /// The line, with its newline: `— name base64(id ‖ signature)\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            Base64::encode_string(&raw)
        )
    }

    fn parse_line(line: &str, number: usize) -> Result<Self, NoteError> {
        let bad = |reason: String| NoteError::BadSignatureLine {
            line: number,
            reason,
        };
        let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(|| {
            bad(format!(
                "{:?} does not start with an em dash and a space",
                excerpt(line)
            ))
        })?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("expected '— <name> <base64 signature>'".into()))?;
        if b64.contains(' ') {
            return Err(bad(
                "expected '— <name> <base64 signature>' with one space (key names have none)"
                    .into(),
            ));
        }
        check_key_name(name).map_err(|e| bad(e.to_string()))?;
        let raw = Base64::decode_vec(b64)
            .map_err(|_| bad(format!("the signature of {name} is not canonical base64")))?;
        match raw.split_at_checked(4) {
            Some((id, signature)) if !signature.is_empty() => Ok(Self {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
                signature: signature.to_vec(),
            }),
            _ => Err(bad(format!(
                "the signature of {name} is {} bytes, shorter than a key id and a signature",
                raw.len()
            ))),
        }
    }
}

/// A note: its text and its signatures (verified or not: see [`Note::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<Signature>,
}

impl Note {
    /// An unsigned note with `text`: not empty, UTF-8, no control character but newline, ending
    /// with a newline.
    pub fn new(text: impl Into<String>) -> Result<Self, NoteError> {
        let text = text.into();
        if text.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLong {
                max: MAX_NOTE_LEN,
                got: text.len(),
            });
        }
        check_note_text(&text)?;
        Ok(Self {
            text,
            signatures: Vec::new(),
        })
    }

    /// Parses a signed note (see the module doc for the rules). Verifies nothing: call
    /// [`Note::verify`].
    pub fn parse(message: &[u8]) -> Result<Self, NoteError> {
        if message.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLong {
                max: MAX_NOTE_LEN,
                got: message.len(),
            });
        }
        let message = checked_text(message)?;
        let split = message.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let (text, block) = (&message[..=split], &message[split + 2..]);
        if block.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        if !block.ends_with('\n') {
            return Err(TextError::NoFinalNewline.into());
        }
        let mut signatures = Vec::new();
        for (i, line) in block.split_terminator('\n').enumerate() {
            if i >= MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            signatures.push(Signature::parse_line(line, i + 1)?);
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signatures, in order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Adds a signature line, replacing one by the same key (same name and id). Identical lines
    /// are kept once.
    pub fn add_signature(&mut self, signature: Signature) -> Result<(), NoteError> {
        self.signatures
            .retain(|s| (s.name.as_str(), s.key_id) != (signature.name.as_str(), signature.key_id));
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// Signs the text with `signer` (replacing an older signature by the same key).
    pub fn sign(&mut self, signer: &NoteSigner) -> Result<(), NoteError> {
        let signature = signer.sign(&self.text)?;
        self.add_signature(signature)
    }

    /// Adds `other`'s signatures (co-signatures of the same text) to this note's.
    pub fn merge(&mut self, other: &Note) -> Result<(), NoteError> {
        if self.text != other.text {
            return Err(NoteError::TextMismatch);
        }
        for signature in &other.signatures {
            if !self.signatures.contains(signature) {
                self.add_signature(signature.clone())?;
            }
        }
        Ok(())
    }

    /// The encoded note: text, blank line, one line per signature. Needs a signature.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NoteError> {
        if self.signatures.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let mut out = String::with_capacity(self.text.len() + 1 + 100 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            out.push_str(&signature.to_line());
        }
        Ok(out.into_bytes())
    }

    /// Verifies the signatures by `trusted` keys: each must verify (else the note is refused:
    /// [`NoteError::InvalidSignature`]), and at least one must be there
    /// ([`NoteError::NoTrustedSignature`]). Signatures by other keys are returned unverified.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<VerifiedNote, NoteError> {
        let mut verified: Vec<VerifierKey> = Vec::new();
        let mut unverified: Vec<Signature> = Vec::new();
        for signature in &self.signatures {
            match trusted.get(&signature.name, signature.key_id) {
                Some(key) => {
                    if verified.contains(key) {
                        continue;
                    }
                    if !key.verifies(self.text.as_bytes(), &signature.signature) {
                        return Err(NoteError::InvalidSignature {
                            name: signature.name.clone(),
                            key_id: signature.key_id,
                        });
                    }
                    verified.push(key.clone());
                }
                None => {
                    if !unverified.contains(signature) {
                        unverified.push(signature.clone());
                    }
                }
            }
        }
        if verified.is_empty() {
            return Err(NoteError::NoTrustedSignature {
                signers: self.signatures.iter().map(Signature::label).collect(),
            });
        }
        Ok(VerifiedNote {
            text: self.text.clone(),
            verified,
            unverified,
        })
    }
}

/// Parses `message` as a signed note and verifies it against `trusted`.
pub fn open(message: &[u8], trusted: &TrustedKeys) -> Result<VerifiedNote, NoteError> {
    Note::parse(message)?.verify(trusted)
}

/// The keys a verifier trusts, looked up by name and id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<(String, u32), VerifierKey>,
}

impl TrustedKeys {
    /// The set of `keys`. The same key twice is kept once; two different keys with the same
    /// name and id are refused ([`KeyError::AmbiguousKey`]).
    pub fn new<I: IntoIterator<Item = VerifierKey>>(keys: I) -> Result<Self, KeyError> {
        let mut set = Self::default();
        for key in keys {
            set.insert(key)?;
        }
        Ok(set)
    }

    /// Adds a key (see [`TrustedKeys::new`]).
    pub fn insert(&mut self, key: VerifierKey) -> Result<(), KeyError> {
        let slot = (key.name.clone(), key.key_id);
        match self.keys.get(&slot) {
            Some(existing) if *existing != key => Err(KeyError::AmbiguousKey {
                name: key.name,
                key_id: key.key_id,
            }),
            Some(_) => Ok(()),
            None => {
                self.keys.insert(slot, key);
                Ok(())
            }
        }
    }

    /// The key with this name and id.
    pub fn get(&self, name: &str, key_id: u32) -> Option<&VerifierKey> {
        self.keys.get(&(name.to_owned(), key_id))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A note whose signatures by trusted keys all verified, at least one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    text: String,
    verified: Vec<VerifierKey>,
    unverified: Vec<Signature>,
}

impl VerifiedNote {
    /// The text the signatures cover.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The trusted keys whose signatures verified, in note order.
    pub fn verified_by(&self) -> &[VerifierKey] {
        &self.verified
    }

    /// Signatures by keys not trusted (not checked).
    pub fn unverified(&self) -> &[Signature] {
        &self.unverified
    }

    /// Whether `key` signed (and its signature verified).
    pub fn is_signed_by(&self, key: &VerifierKey) -> bool {
        self.verified.contains(key)
    }

    /// Requires a verified signature by every key in `keys` (a log key and its co-signers).
    pub fn require(&self, keys: &[&VerifierKey]) -> Result<(), NoteError> {
        match keys.iter().find(|k| !self.is_signed_by(k)) {
            Some(missing) => Err(NoteError::MissingSignature {
                key: missing.label(),
                signed: self.verified.iter().map(VerifierKey::label).collect(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
