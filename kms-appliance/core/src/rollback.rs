//! Rollback defence: the store's state version checked against a trusted monotonic anchor.
//!
//! The store's sealed records prove that the KMS wrote them, not that they are the *latest*
//! thing it wrote: the host keeps the disk, so it can put back an older copy of the whole file
//! (resurrecting a destroyed org's KEKs, or a retired version). Every committed write therefore
//! raises a state version sealed into the store, and a [`VersionAnchor`] outside the host's
//! reach remembers the highest version committed. Opening checks `state version ≥ anchor`
//! ([`check`]).
//!
//! **Order of a write:** commit the store durably (version `n + 1`), then advance the anchor to
//! `n + 1`, then acknowledge. A crash between the two leaves the store one ahead of the anchor,
//! which opens fine (the anchor catches up); the reverse order would brick the KMS on such a
//! crash. The cost: a write that committed but was never acknowledged can be rolled back. An
//! acknowledged write cannot (where an anchor exists).
//!
//! **Per platform:**
//! - *Azure (vTPM):* [`tpm::TpmNvCounter`] (feature `tpm`), a TPM 2.0 NV *counter* index: the TPM
//!   only ever increments it, and a counter index that is deleted and defined again starts from
//!   the highest value any counter on that TPM has held, so it cannot be reset to go back. The
//!   vTPM lives in the paravisor (VMPL 0), out of the host's reach; its NV is persisted in the
//!   VM's guest state, which we trust the platform to protect from rollback.
//! - *SEV-SNP and sim:* there is no monotonic counter in SEV-SNP that a guest can use. The
//!   anchor is the memory of other running KMS processes, [`quorum::QuorumAnchor`]: peers
//!   witness each committed version, and a state opens only if every witness it lists answers
//!   and none saw anything newer. A KMS with no peer has no witness and says so; tests and tools
//!   without any anchor use [`Unanchored`], which the caller must choose by name.
//!
//! **Not defended:** a write committed but not yet anchored (above); on SNP and sim, a single
//! KMS with no peer, and the other limits listed in [`quorum`]; and, by nature, the host
//! withholding the disk entirely (availability is not ours to defend). Deletion of the store is
//! detected when an anchor exists: a missing store with an anchor already set is refused
//! ([`crate::store::StoreError::StateMissing`]).

use std::sync::{Arc, Mutex, PoisonError};

/// Why the anchor could not be read or advanced.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The anchor's backend failed.
    #[error("rollback anchor {anchor}: {op}: {reason}")]
    Backend {
        /// Which anchor.
        anchor: String,
        /// The operation.
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Not every part of the anchor answered, so the state cannot be shown to be the newest
    /// yet (witnesses still booting, or gone).
    #[error("rollback anchor {anchor}: {reason}")]
    Unanswered {
        /// Which anchor.
        anchor: String,
        /// Which parts did not answer, and why.
        reason: String,
    },
    /// The anchor refuses: the state was shown not to be the newest, or cannot be shown to be.
    #[error("rollback anchor {anchor}: {reason}")]
    Refused {
        /// Which anchor.
        anchor: String,
        /// Why, naming what was expected and what was found.
        reason: String,
    },
}

/// A trusted monotonic version: something the host cannot roll back.
pub trait VersionAnchor: Send {
    /// What this anchor is, for errors and logs (`TPM NV counter 0x01c1c0ff at ...`).
    fn describe(&self) -> String;

    /// The highest version anchored so far, or `None` if this anchor was never set (a new
    /// deployment).
    fn read(&mut self) -> Result<Option<u64>, AnchorError>;

    /// Raises the anchor to at least `version` and returns the value it holds afterwards, which
    /// may be higher (a TPM counter starts at the highest value any counter on its TPM held).
    /// Never lowers it.
    fn advance_to(&mut self, version: u64) -> Result<u64, AnchorError>;

    /// Told at open, before [`VersionAnchor::read`]: the state version found, the SHA-256 of its
    /// sealed state record, and the anchor's own data sealed in it ([`VersionAnchor::state_data`]).
    /// Anchors that keep nothing in the state ignore it.
    fn load_state(
        &mut self,
        _version: u64,
        _state: &[u8; 32],
        _data: &[u8],
    ) -> Result<(), AnchorError> {
        Ok(())
    }

    /// What to seal into the next state record beside the version (the quorum anchor: its
    /// instance id and witness sets). Empty by default.
    fn state_data(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// A state was committed durably (or opened): raise the anchor to `version`, whose sealed
    /// state record hashes to `state`. By default [`VersionAnchor::advance_to`].
    fn committed(&mut self, version: u64, _state: &[u8; 32]) -> Result<u64, AnchorError> {
        self.advance_to(version)
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The state is at least as new as the anchor.
    Fresh,
    /// The state is older than the anchor: it was rolled back.
    RolledBack {
        /// The store's state version.
        state: u64,
        /// The anchor's version.
        anchor: u64,
    },
}

/// Compares a store's state version with the anchor. A state *ahead* of the anchor is fresh: it
/// is a write that committed before a crash kept the anchor from advancing.
pub fn check(state: u64, anchor: Option<u64>) -> Verdict {
    match anchor {
        Some(anchor) if state < anchor => Verdict::RolledBack { state, anchor },
        _ => Verdict::Fresh,
    }
}

/// No anchor at all: every state version is accepted, so a host that keeps an old copy of the
/// disk can roll the KMS back to it. For tests and tools that need no defence; constructed
/// only through [`Unanchored::accepting_rollback`], so that choice is visible where it is made.
#[derive(Debug)]
pub struct Unanchored(());

impl Unanchored {
    /// No rollback defence. Use only where no anchor exists yet, and say so in the logs.
    pub fn accepting_rollback() -> Self {
        Self(())
    }
}

impl VersionAnchor for Unanchored {
    fn describe(&self) -> String {
        "none (rollback is not defended)".into()
    }

    fn read(&mut self) -> Result<Option<u64>, AnchorError> {
        Ok(None)
    }

    fn advance_to(&mut self, version: u64) -> Result<u64, AnchorError> {
        Ok(version)
    }
}

/// An anchor held in this process's memory and shared by its clones. It outlives one store
/// handle but not the process: it is what a replica will hold for its peers (the quorum is built
/// from it), and what tests use to stand for a trusted anchor across reopenings.
#[derive(Debug, Clone, Default)]
pub struct MemoryAnchor {
    version: Arc<Mutex<Option<u64>>>,
}

impl MemoryAnchor {
    /// A new, unset anchor.
    pub fn new() -> Self {
        Self::default()
    }
}

impl VersionAnchor for MemoryAnchor {
    fn describe(&self) -> String {
        "in-memory anchor".into()
    }

    fn read(&mut self) -> Result<Option<u64>, AnchorError> {
        // A poisoned lock still holds a valid number: nothing half-written can be in an Option<u64>.
        Ok(*self.version.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn advance_to(&mut self, version: u64) -> Result<u64, AnchorError> {
        let mut held = self.version.lock().unwrap_or_else(PoisonError::into_inner);
        let new = held.map_or(version, |old| old.max(version));
        *held = Some(new);
        Ok(new)
    }
}

pub mod quorum;
#[cfg(feature = "tpm")]
pub mod tpm;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_older_than_the_anchor_is_rolled_back_and_newer_is_fresh() {
        assert_eq!(
            check(4, Some(7)),
            Verdict::RolledBack {
                state: 4,
                anchor: 7
            }
        );
        assert_eq!(check(7, Some(7)), Verdict::Fresh);
        assert_eq!(check(8, Some(7)), Verdict::Fresh);
        assert_eq!(check(1, None), Verdict::Fresh);
    }

    #[test]
    fn a_memory_anchor_only_goes_up_and_is_shared_by_clones() {
        let mut anchor = MemoryAnchor::new();
        let mut clone = anchor.clone();
        assert_eq!(anchor.read().unwrap(), None);
        assert_eq!(anchor.advance_to(5).unwrap(), 5);
        assert_eq!(anchor.advance_to(3).unwrap(), 5);
        assert_eq!(clone.read().unwrap(), Some(5));
    }

    #[test]
    fn unanchored_accepts_anything() {
        let mut none = Unanchored::accepting_rollback();
        assert_eq!(none.advance_to(9).unwrap(), 9);
        assert_eq!(none.read().unwrap(), None);
    }
}
