//! Verified collateral, remembered: certificate signatures that already verified.
//!
//! A verifier that sees the same VCEK/ASK/ARK chain on every connection (the mesh does: one chip
//! per host, one chain per chip) need not redo the RSA-4096 signature checks each time. The cache
//! keeps only the fact "certificate with SHA-256 X verifies under issuer with SHA-256 Y", which
//! depends on nothing but those bytes; everything else (names, dates at the caller's clock, the
//! trust root, the report's own signature, the policy) is checked on every call. Failures are
//! never cached. The cache is bounded: when full it is cleared (entries are cheap to redo).

use std::collections::HashSet;
use std::sync::Mutex;

use crate::certs::Certificate;

/// Pairs (certificate, issuer) whose signature verified, by their SHA-256.
#[derive(Debug)]
pub struct SignatureCache {
    verified: Mutex<HashSet<[u8; 64]>>,
    capacity: usize,
}

impl Default for SignatureCache {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl SignatureCache {
    /// A cache of at most `capacity` verified pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            verified: Mutex::new(HashSet::new()),
            capacity: capacity.max(1),
        }
    }

    fn key(cert: &Certificate, issuer: &Certificate) -> [u8; 64] {
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&cert.sha256());
        key[32..].copy_from_slice(&issuer.sha256());
        key
    }

    /// Whether this pair verified before.
    pub fn contains(&self, cert: &Certificate, issuer: &Certificate) -> bool {
        let key = Self::key(cert, issuer);
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&key)
    }

    /// Remembers that this pair verified.
    pub fn insert(&self, cert: &Certificate, issuer: &Certificate) {
        let key = Self::key(cert, issuer);
        let mut set = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if set.len() >= self.capacity {
            set.clear();
        }
        set.insert(key);
    }

    /// How many pairs are remembered.
    pub fn len(&self) -> usize {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
