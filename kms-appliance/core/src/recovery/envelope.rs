//! The share envelope (JSON, the plaintext of every encrypted share) and the age encryption
//! around it. Plaintext is only ever in [`Zeroizing`] buffers sized up front, so no copy is left
//! behind in a reallocated one; the share bytes are borrowed from those buffers as hex.

use std::io::{Read, Write};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::x25519::{Identity, Recipient};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    mismatch, RecoveryError, RecoveryInfo, ShareInfo, MAX_ENCRYPTED_SHARE, MAX_OFFICERS,
    SHARE_FORMAT,
};
use crate::crypto::KEY_LEN;

/// The largest envelope accepted, decrypted.
const MAX_ENVELOPE: usize = 4096;

/// The envelope as serialised; `share` borrows from a zeroizing buffer in both directions.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    format: &'a str,
    deployment_id: String,
    #[serde(with = "hex")]
    split_id: [u8; 16],
    index: u8,
    threshold: u8,
    shares: u8,
    officer: String,
    #[serde(with = "hex")]
    commitment: [u8; 32],
    share: &'a str,
}

pub(super) fn seal_envelope(
    info: &RecoveryInfo,
    index: u8,
    officer: &str,
    y: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RecoveryError> {
    let mut hex_share = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let envelope_error = |reason: String| RecoveryError::Envelope { reason };
    hex::encode_to_slice(y, hex_share.as_mut()).map_err(|e| envelope_error(e.to_string()))?;
    let share =
        std::str::from_utf8(hex_share.as_ref()).map_err(|e| envelope_error(e.to_string()))?;
    let envelope = Envelope {
        format: SHARE_FORMAT,
        deployment_id: info.deployment_id.clone(),
        split_id: info.split_id,
        index,
        threshold: info.threshold,
        shares: info.shares(),
        officer: officer.to_owned(),
        commitment: info.commitment,
        share,
    };
    // Room for the whole envelope up front: no reallocation leaves a copy behind.
    let mut out = Zeroizing::new(Vec::with_capacity(MAX_ENVELOPE));
    serde_json::to_writer(&mut *out, &envelope).map_err(|e| envelope_error(e.to_string()))?;
    Ok(out)
}

/// Parses and checks an envelope's shape; returns what it says and the share bytes.
pub(super) fn open_envelope(
    plain: &[u8],
) -> Result<(ShareInfo, Zeroizing<[u8; KEY_LEN]>), RecoveryError> {
    let envelope_error = |reason: String| RecoveryError::Envelope { reason };
    let envelope: Envelope<'_> =
        serde_json::from_slice(plain).map_err(|e| envelope_error(e.to_string()))?;
    mismatch("format", SHARE_FORMAT, envelope.format)?;
    let mut share = Zeroizing::new([0u8; KEY_LEN]);
    // No detail from the decoder: it would quote share characters.
    hex::decode_to_slice(envelope.share, share.as_mut())
        .map_err(|_| envelope_error(format!("the share is not {} hex digits", 2 * KEY_LEN)))?;
    let n = envelope.shares;
    if n == 0 || usize::from(n) > MAX_OFFICERS || envelope.threshold == 0 || envelope.threshold > n
    {
        return Err(envelope_error(format!(
            "threshold {} of {n} shares is not a valid split (1 <= k <= n <= {MAX_OFFICERS})",
            envelope.threshold
        )));
    }
    if envelope.index == 0 || envelope.index > n {
        return Err(RecoveryError::IndexOutOfRange {
            index: envelope.index,
            shares: n,
        });
    }
    let info = ShareInfo {
        deployment_id: envelope.deployment_id,
        split_id: envelope.split_id,
        index: envelope.index,
        threshold: envelope.threshold,
        shares: n,
        officer: envelope.officer,
        commitment: envelope.commitment,
    };
    Ok((info, share))
}

pub(super) fn open_officer_envelope(
    plain: &[u8],
    officer: &Identity,
) -> Result<(ShareInfo, Zeroizing<[u8; KEY_LEN]>), RecoveryError> {
    let (info, share) = open_envelope(plain)?;
    mismatch("officer", &officer.to_public().to_string(), &info.officer)?;
    Ok((info, share))
}

pub(super) fn encrypt_to(recipient: &Recipient, plaintext: &[u8]) -> Result<String, String> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(2 * plaintext.len() + 512);
    let armor =
        ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(|e| e.to_string())?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| e.to_string())?;
    writer.write_all(plaintext).map_err(|e| e.to_string())?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Decrypts an age file (armored or binary) with `identity` into a zeroizing buffer, read in
/// place so no copy of the plaintext is left in a reallocated buffer.
pub(super) fn decrypt_with(
    identity: &Identity,
    ciphertext: &[u8],
    whose: &'static str,
) -> Result<Zeroizing<Vec<u8>>, RecoveryError> {
    if ciphertext.len() > MAX_ENCRYPTED_SHARE {
        return Err(RecoveryError::TooLarge {
            what: "the encrypted share",
            got: ciphertext.len(),
            max: MAX_ENCRYPTED_SHARE,
        });
    }
    let decrypt_error = |reason: String| RecoveryError::Decrypt { whose, reason };
    let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(ciphertext))
        .map_err(|e| decrypt_error(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| decrypt_error(e.to_string()))?;
    let mut plain = Zeroizing::new(vec![0u8; MAX_ENVELOPE + 1]);
    let mut filled = 0;
    while filled < plain.len() {
        match reader.read(&mut plain[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) => return Err(decrypt_error(e.to_string())),
        }
    }
    if filled > MAX_ENVELOPE {
        return Err(RecoveryError::TooLarge {
            what: "the decrypted share",
            got: filled,
            max: MAX_ENVELOPE,
        });
    }
    plain.truncate(filled);
    Ok(plain)
}
