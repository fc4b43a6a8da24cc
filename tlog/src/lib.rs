//! `coffer-tlog`: the primitives of Coffer's transparency logs (the audit log of every user
//! action and KMS decision).
//!
//! **Owns:**
//! - [`bundle`]: offline audit of a downloaded log ([`bundle::LogExport`]) or proof bundle
//!   ([`bundle::ProofBundle`]) against trusted checkpoints: forks, truncation and modified
//!   entries ([`bundle::verify_log`], [`bundle::verify_bundle`]; `coffer audit verify`).
//! - [`merkle`]: RFC 6962 / RFC 9162 Merkle tree hashing, tree heads, and inclusion and
//!   consistency proofs: made from a log's stored subtree hashes (a [`HashReader`]; in memory:
//!   [`MemoryTree`]) and verified as RFC 9162 §2.1.3.2 and §2.1.4.2 say.
//! - [`checkpoint`]: C2SP tlog-checkpoint text (origin, size, root, extension lines).
//! - [`note`]: C2SP signed notes with Ed25519 keys (sign, co-sign, verify against trusted
//!   verifier keys; `name+id+key` verifier key strings).
//!
//! **Trusts:** ring for Ed25519 and the [`HashReader`] a log hands to the proof functions (a
//! wrong stored hash makes proofs that fail, never a false success). Nothing else: no I/O, no
//! clock; callers pass bytes.
//!
//! **Checks:** every parser ([`Note::parse`], [`Checkpoint::parse`], [`VerifierKey::parse`])
//! takes any bytes without panicking, bounds sizes ([`note::MAX_NOTE_LEN`],
//! [`note::MAX_SIGNATURES`]) and names the rule broken; every verifier checks lengths and sizes
//! before hashing and reports expected vs got (root hashes in hex).
//!
//! **Why written here rather than taken from crates.io** (evaluated for this crate):
//! `tlog_tiles` and `signed_note` (Cloudflare azul, ports of Go's `sumdb/tlog` and `note`) are
//! good ports, but bring `url`/`idna`, `thiserror` 1 and `base64` 0.21 next to the versions the
//! workspace has, `ed25519-dalek` with `curve25519-dalek` as a second Ed25519 implementation
//! beside the ring every image already links, errors that do not say what was expected
//! (`InvalidProof`, `MalformedCheckpointError`), and `assert!`s in proof code; `ct-merkle` is
//! on `digest` 0.11 (a second SHA-2 stack) and makes proofs only from a tree held in memory;
//! `sigsum` speaks Sigsum's protocol and also uses `ed25519-dalek`. The algorithms are short and
//! have public test vectors, which the tests reproduce: RFC 6962's reference tree (roots,
//! inclusion and consistency proofs, as in transparency-dev/merkle) and the signatures and keys
//! of Go's `golang.org/x/mod/sumdb/note` tests.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod checkpoint;
pub mod merkle;
pub mod note;

pub use checkpoint::{Checkpoint, MalformedCheckpoint};
pub use merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, tree_hash,
    verify_consistency, verify_inclusion, Hash, HashReadError, HashReader, MemoryTree, NodeId,
    ProofError, HASH_LEN,
};
pub use note::{
    KeyError, Note, NoteError, NoteSigner, Signature, TrustedKeys, VerifiedNote, VerifierKey,
};
