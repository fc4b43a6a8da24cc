//! The state digest: an incremental hash of the *set* of sealed records, so that a store whose
//! records each open can still be caught if records were deleted, added back from an older copy,
//! or swapped for an older sealed version of themselves.
//!
//! Construction: LtHash16 with 1024 lanes (Lewi, Kim, Maykov and Weis, "Securing Update
//! Propagation with Homomorphic Hashing", 2019, the parameters they recommend: over 200 bits of
//! security from the lattice SIS problem). A record's element hash is 2048 bytes expanded from
//! SHA-256 of the record (MGF1-SHA-256, RFC 8017 B.2.1); the digest is the lane-wise sum mod 2^16
//! of the element hashes of all records, so adding or removing one record costs one expansion,
//! whatever the store's size. The digest is kept inside the sealed state record, so only the KMS
//! can write it.
//!
//! Written by hand because no maintained Rust crate implements LtHash; the construction is a
//! lane-wise sum over `sha2` output, and a plain hash of the sorted record set would cost a pass
//! over the whole store on every commit.

use sha2::{Digest as _, Sha256};

/// Lanes of 16 bits.
pub const LANES: usize = 1024;
/// Bytes of a digest.
pub const DIGEST_LEN: usize = LANES * 2;

const ELEMENT_LABEL: &[u8] = b"coffer-kms state element v1\0";

/// The digest of a set of records.
#[derive(Clone, PartialEq, Eq)]
pub struct StateDigest {
    lanes: Box<[u16; LANES]>,
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = Sha256::digest(self.to_bytes());
        write!(f, "StateDigest(sha256 {})", hex::encode(&short[..8]))
    }
}

impl Default for StateDigest {
    fn default() -> Self {
        Self {
            lanes: Box::new([0; LANES]),
        }
    }
}

/// A record's seed: the SHA-256 its element is expanded from. Keeping it lets a record be
/// removed from a digest without its bytes (the shared store's index of records).
pub fn seed(table: &str, key: &str, sealed: &[u8]) -> [u8; 32] {
    let mut seed = Sha256::new();
    seed.update(ELEMENT_LABEL);
    for field in [table.as_bytes(), key.as_bytes(), sealed] {
        seed.update((field.len() as u64).to_be_bytes());
        seed.update(field);
    }
    seed.finalize().into()
}

fn element(seed: &[u8; 32]) -> [u16; LANES] {
    let mut lanes = [0u16; LANES];
    // MGF1: block i = SHA-256(seed ‖ i as 4 bytes big-endian); 64 blocks of 32 bytes = 2048.
    for (i, chunk) in lanes.chunks_mut(16).enumerate() {
        let block = Sha256::new()
            .chain_update(seed)
            .chain_update((i as u32).to_be_bytes())
            .finalize();
        for (lane, pair) in chunk.iter_mut().zip(block.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
    }
    lanes
}

impl StateDigest {
    /// Adds the record `table/key` holding `sealed`.
    pub fn add(&mut self, table: &str, key: &str, sealed: &[u8]) {
        self.add_seed(&seed(table, key, sealed));
    }

    /// Removes the record `table/key` holding `sealed`.
    pub fn remove(&mut self, table: &str, key: &str, sealed: &[u8]) {
        self.remove_seed(&seed(table, key, sealed));
    }

    /// Adds the record whose [`seed`] this is.
    pub fn add_seed(&mut self, seed: &[u8; 32]) {
        for (lane, e) in self.lanes.iter_mut().zip(element(seed)) {
            *lane = lane.wrapping_add(e);
        }
    }

    /// Removes the record whose [`seed`] this is.
    pub fn remove_seed(&mut self, seed: &[u8; 32]) {
        for (lane, e) in self.lanes.iter_mut().zip(element(seed)) {
            *lane = lane.wrapping_sub(e);
        }
    }

    /// The digest's bytes (lanes little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// A digest from [`StateDigest::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != DIGEST_LEN {
            return None;
        }
        let mut lanes = Box::new([0u16; LANES]);
        for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(Self { lanes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_the_set_not_the_order_and_removal_undoes_addition() {
        let mut a = StateDigest::default();
        a.add("t", "1", b"x");
        a.add("t", "2", b"y");
        let mut b = StateDigest::default();
        b.add("t", "2", b"y");
        b.add("t", "1", b"x");
        assert_eq!(a, b);
        b.remove("t", "2", b"y");
        let mut c = StateDigest::default();
        c.add("t", "1", b"x");
        assert_eq!(b, c);
        assert_eq!(StateDigest::from_bytes(&a.to_bytes()), Some(a));
    }

    #[test]
    fn table_key_and_bytes_each_change_the_element() {
        let digest = |t: &str, k: &str, v: &[u8]| {
            let mut d = StateDigest::default();
            d.add(t, k, v);
            d
        };
        let base = digest("t", "k", b"v");
        assert_ne!(base, digest("u", "k", b"v"));
        assert_ne!(base, digest("t", "j", b"v"));
        assert_ne!(base, digest("t", "k", b"w"));
        assert_ne!(digest("ab", "c", b""), digest("a", "bc", b""));
    }
}
