//! The one AEAD construction every layer of the KMS uses: AES-256-GCM with a fresh random
//! 96-bit nonce, laid out as `nonce (12) ‖ ciphertext ‖ tag (16)`, and the associated-data
//! encoding that binds a ciphertext to what it is.
//!
//! Random nonces are safe for up to 2^32 encryptions under one key (NIST SP 800-38D 8.3). The
//! busiest key here is the sealing key, which seals two records per committed write: billions of
//! writes before the bound matters. KEKs wrap one DEK per `generate_data_key` and are rotated.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Bytes of key every AES-256 key in the KMS has.
pub const KEY_LEN: usize = 32;
/// Bytes of nonce in front of every ciphertext.
pub const NONCE_LEN: usize = 12;
/// Bytes of GCM tag after every ciphertext.
pub const TAG_LEN: usize = 16;

/// Why a seal or open failed. Callers turn these into errors that name the thing involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AeadFailure {
    /// The OS RNG failed (no nonce or key can be drawn).
    Rng(String),
    /// Shorter than a nonce and a tag.
    TooShort(usize),
    /// The tag did not verify: wrong key, wrong associated data, or altered bytes.
    Auth,
}

/// Fills `out` from the OS CSPRNG (getrandom(2) on Linux; inside the VM it blocks until the
/// kernel CRNG is seeded, which the init waits for anyway).
pub(crate) fn random(out: &mut [u8]) -> Result<(), AeadFailure> {
    OsRng
        .try_fill_bytes(out)
        .map_err(|e| AeadFailure::Rng(e.to_string()))
}

/// A fresh random 32-byte key.
pub(crate) fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, AeadFailure> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    random(key.as_mut())?;
    Ok(key)
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    // `new` borrows the key as an array reference: no unzeroized copy of the key is made here.
    // The cipher's round keys and GHASH key are wiped on drop (aes-gcm feature `zeroize`).
    Aes256Gcm::new(key.into())
}

/// Encrypts `plaintext` under `key` with `aad`; returns `nonce ‖ ciphertext ‖ tag`. The buffer
/// that briefly holds the plaintext is the output buffer, so no plaintext copy is left behind.
pub(crate) fn seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce)?;
    let mut body: Zeroizing<Vec<u8>> =
        Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    body.extend_from_slice(plaintext);
    cipher(key)
        .encrypt_in_place(&Nonce::from(nonce), aad, &mut *body)
        // Only a plaintext longer than GCM's 64 GiB limit fails; records are tiny.
        .map_err(|_| AeadFailure::Auth)?;
    let mut out = Vec::with_capacity(NONCE_LEN + body.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens `nonce ‖ ciphertext ‖ tag` under `key` with `aad`. The plaintext is returned in a
/// buffer that is wiped on drop (some of what is opened is key material).
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadFailure> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(AeadFailure::TooShort(sealed.len()));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| AeadFailure::TooShort(sealed.len()))?;
    let mut buffer = Zeroizing::new(body.to_vec());
    cipher(key)
        .decrypt_in_place(&Nonce::from(nonce), aad, &mut *buffer)
        .map_err(|_| AeadFailure::Auth)?;
    Ok(buffer)
}

/// Associated data: a domain label, then each field as a 4-byte big-endian length and its
/// bytes. Length prefixes keep field boundaries unambiguous (org `a` + key `bc` never encodes
/// like org `ab` + key `c`); the label keeps the uses apart (a wrapped KEK is never a valid
/// wrapped DEK or sealed record).
pub(crate) fn aad(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    out.extend_from_slice(label.as_bytes());
    for field in fields {
        // Fields are names and ids far below 4 GiB; saturating keeps this total.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_the_same_key_and_aad() {
        let key = random_key().unwrap();
        let other = random_key().unwrap();
        let sealed = seal(&key, b"aad", b"secret").unwrap();
        assert_eq!(open(&key, b"aad", &sealed).unwrap().as_slice(), b"secret");
        assert_eq!(open(&key, b"aae", &sealed).unwrap_err(), AeadFailure::Auth);
        assert_eq!(
            open(&other, b"aad", &sealed).unwrap_err(),
            AeadFailure::Auth
        );
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(open(&key, b"aad", &flipped).unwrap_err(), AeadFailure::Auth);
        assert_eq!(
            open(&key, b"aad", &sealed[..27]).unwrap_err(),
            AeadFailure::TooShort(27)
        );
    }

    #[test]
    fn every_seal_draws_a_fresh_nonce() {
        let key = random_key().unwrap();
        let a = seal(&key, b"", b"same").unwrap();
        let b = seal(&key, b"", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn aad_fields_are_length_prefixed() {
        assert_ne!(aad("l", &[b"a", b"bc"]), aad("l", &[b"ab", b"c"]));
        assert_ne!(aad("l1", &[b"a"]), aad("l2", &[b"a"]));
    }
}
