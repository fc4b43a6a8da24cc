//! Shamir k-of-n over GF(256) for the 32-byte root key, through vsss-rs.
//!
//! vsss-rs rather than `sharks`, `blahaj` or `shamirsecretsharing`: its GF(256) arithmetic is
//! constant-time (no log/exp tables indexed by secret bytes, which a host sharing the CPU caches
//! can probe), it has had security audits, and it is maintained. `sharks` is no longer released
//! and `blahaj`, its maintained fork, keeps the secret-indexed tables; `shamirsecretsharing`
//! takes only 64-byte secrets under its own secretbox layer. What vsss-rs does not do, we do
//! around it: its shares come back in plain `Vec`s, wrapped here at once in [`Zeroizing`]; it
//! refuses k = 1, done here as the constant polynomial; it wants an infallible RNG, and gets one
//! that records an OS RNG failure instead of panicking. Not wiped: its polynomial buffer.

use std::collections::BTreeMap;

use zeroize::{Zeroize, Zeroizing};

use super::RecoveryError;
use crate::crypto::{self, KEY_LEN};

/// Shares as vsss-rs lays them out: `x ‖ y[0..32]`, x = 1..=n. Wiped on drop.
pub(super) type Points = Zeroizing<Vec<Vec<u8>>>;

pub(super) fn shamir_split(secret: &[u8; KEY_LEN], k: u8, n: u8) -> Result<Points, RecoveryError> {
    if k == 1 {
        // A constant polynomial (vsss-rs refuses k < 2): every share is the secret.
        let mut points = Zeroizing::new(Vec::with_capacity(usize::from(n)));
        for x in 1..=n {
            let mut point = Vec::with_capacity(KEY_LEN + 1);
            point.push(x);
            point.extend_from_slice(secret);
            points.push(point);
        }
        return Ok(points);
    }
    let mut rng = RecordingRng::default();
    let ids = (1..=n).map(|x| vsss_rs::IdentifierGf256(vsss_rs::Gf256(x)));
    let points = vsss_rs::Gf256::split_bytes_with_participant_ids_iter(
        usize::from(k),
        usize::from(n),
        secret,
        &mut rng,
        ids,
    )
    .map(Zeroizing::new)
    .map_err(|e| RecoveryError::Split {
        reason: e.to_string(),
    })?;
    match rng.failure {
        // The shares were drawn from a failed RNG: dropped (and wiped) unused.
        Some(reason) => Err(RecoveryError::Rng {
            what: "drawing the Shamir coefficients",
            reason,
        }),
        None => Ok(points),
    }
}

pub(super) fn shamir_combine(
    shares: &BTreeMap<u8, Zeroizing<[u8; KEY_LEN]>>,
) -> Result<Zeroizing<[u8; KEY_LEN]>, RecoveryError> {
    let mut root = Zeroizing::new([0u8; KEY_LEN]);
    let mut points: Points = Zeroizing::new(Vec::with_capacity(shares.len()));
    for (x, y) in shares {
        let mut point = Vec::with_capacity(KEY_LEN + 1);
        point.push(*x);
        point.extend_from_slice(y.as_ref());
        points.push(point);
    }
    let combined = match points.as_slice() {
        // k = 1: the share is the secret (vsss-rs needs two points to interpolate).
        [single] => Zeroizing::new(single[1..].to_vec()),
        _ => vsss_rs::Gf256::combine_bytes(points.as_slice())
            .map(Zeroizing::new)
            .map_err(|e| RecoveryError::Combine {
                reason: e.to_string(),
            })?,
    };
    if combined.len() != KEY_LEN {
        return Err(RecoveryError::Combine {
            reason: format!("{} bytes, expected {KEY_LEN}", combined.len()),
        });
    }
    root.copy_from_slice(&combined);
    Ok(root)
}

/// The OS CSPRNG in the infallible shape vsss-rs takes. Rather than panic when the OS RNG
/// fails, it records the failure (and yields zeros); [`shamir_split`] then discards the shares.
#[derive(Default)]
struct RecordingRng {
    failure: Option<String>,
}

impl RecordingRng {
    fn fill(&mut self, out: &mut [u8]) {
        if let Err(e) = crypto::random(out) {
            out.fill(0);
            self.failure.get_or_insert(format!("{e:?}"));
        }
    }
}

impl rand_core_010::TryRng for RecordingRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes);
        let value = u32::from_le_bytes(bytes);
        bytes.zeroize();
        Ok(value)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        let value = u64::from_le_bytes(bytes);
        bytes.zeroize();
        Ok(value)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.fill(dst);
        Ok(())
    }
}

impl rand_core_010::TryCryptoRng for RecordingRng {}
