//! The one error type of [`crate::recovery`]: each variant names the input or check that failed,
//! with expected vs got where there is an expectation. None carries a secret.

use super::MAX_OFFICERS;

/// Why a split, a re-encryption or a restore failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Too few or too many officers.
    #[error("recovery policy names {officers} officers: give 1 to {MAX_OFFICERS}")]
    OfficerCount {
        /// How many were named.
        officers: usize,
    },
    /// A threshold outside 1..=n.
    #[error("recovery threshold {threshold} is not within 1..={officers} (the officers)")]
    Threshold {
        /// The threshold given.
        threshold: u8,
        /// The number of officers.
        officers: usize,
    },
    /// A recipient that is not an age X25519 public key.
    #[error("{what} {got:?} is not an age X25519 recipient (age1...): {reason}")]
    Recipient {
        /// Which recipient.
        what: String,
        /// The text given.
        got: String,
        /// What the parser said.
        reason: String,
    },
    /// The same officer named twice.
    #[error("recovery officer {officer} is named twice (positions {first} and {second}): each officer holds one share")]
    DuplicateOfficer {
        /// The recipient.
        officer: String,
        /// Its first position (1-based).
        first: usize,
        /// Its second position (1-based).
        second: usize,
    },
    /// A deployment id that is not one.
    #[error("deployment id {got:?} must be 1 to 63 of a-z, 0-9 and '-'")]
    DeploymentId {
        /// The id given.
        got: String,
    },
    /// The OS random number generator failed.
    #[error("the OS random number generator failed while {what}: {reason}")]
    Rng {
        /// What was being drawn.
        what: &'static str,
        /// What the RNG said.
        reason: String,
    },
    /// The Shamir split failed.
    #[error("cannot split the root key: {reason}")]
    Split {
        /// What vsss-rs said.
        reason: String,
    },
    /// age encryption failed.
    #[error("cannot age-encrypt {what}: {reason}")]
    Encrypt {
        /// What was being encrypted, to whom.
        what: String,
        /// What age said.
        reason: String,
    },
    /// An input larger than any share.
    #[error("{what} is {got} bytes, more than the {max} a share may have")]
    TooLarge {
        /// The input.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A share that does not decrypt with the identity given.
    #[error("the share does not decrypt with {whose}: {reason} (encrypted to another recipient, or altered)")]
    Decrypt {
        /// Whose identity was tried.
        whose: &'static str,
        /// What age said.
        reason: String,
    },
    /// Decrypted, but not a well-formed share envelope.
    #[error("the decrypted share is not a valid recovery share envelope: {reason}")]
    Envelope {
        /// What is wrong.
        reason: String,
    },
    /// An envelope field that is not what this split or session expects.
    #[error("the share's {field} is {got}, expected {expected}")]
    Mismatch {
        /// The field.
        field: &'static str,
        /// What was expected.
        expected: String,
        /// What the share says.
        got: String,
    },
    /// A share index outside 1..=n.
    #[error("the share's index {index} is not within 1..={shares}")]
    IndexOutOfRange {
        /// The index.
        index: u8,
        /// n.
        shares: u8,
    },
    /// A share index already submitted to this session.
    #[error("share {index} was already submitted to this session")]
    DuplicateIndex {
        /// The index.
        index: u8,
    },
    /// Fewer shares than the threshold.
    #[error("restoring the root key needs {needed} shares, got {got}")]
    NotEnoughShares {
        /// The threshold.
        needed: u8,
        /// The shares submitted.
        got: usize,
    },
    /// The shares combine to another key than the one committed to.
    #[error("the {count} shares (indices {indices}) combine to a key whose commitment is not the expected {expected}: a share is corrupted or altered")]
    CommitmentMismatch {
        /// The expected commitment, hex.
        expected: String,
        /// How many shares were combined.
        count: usize,
        /// Their indices.
        indices: String,
    },
    /// The Shamir combination failed.
    #[error("cannot combine the shares: {reason}")]
    Combine {
        /// What vsss-rs said.
        reason: String,
    },
    /// A recovery kit or info that is inconsistent.
    #[error("recovery kit: {reason}")]
    Kit {
        /// What is wrong.
        reason: String,
    },
    /// An officer identity file that cannot be used.
    #[error("officer identity: {reason}")]
    Identity {
        /// What is wrong (never the key).
        reason: String,
    },
}
