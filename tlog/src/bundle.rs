//! Offline audit: a whole downloaded log (a [`LogExport`]) or a few entries with their proofs (a
//! [`ProofBundle`]) checked against signed checkpoints, and against the checkpoints a verifier
//! already trusted before ([`verify_log`], [`verify_bundle`]).
//!
//! **Log export** (JSON, [`EXPORT_FORMAT`]):
//!
//! ```text
//! { "format": "coffer-tlog-export/v1",
//!   "origin": "coffer/<deployment-id>/audit",
//!   "entries": ["<base64 of entry 0>", "<base64 of entry 1>", ...],      in log order
//!   "checkpoints": ["<signed checkpoint note>", ...] }                     sizes <= entries
//! ```
//!
//! **Proof bundle** (JSON, [`BUNDLE_FORMAT`]):
//!
//! ```text
//! { "format": "coffer-tlog-bundle/v1",
//!   "origin": "...",
//!   "checkpoint": "<signed checkpoint note>",
//!   "entries": [{ "index": 7, "entry": "<base64>", "proof": ["<base64 hash>", ...] }, ...],
//!   "consistency": [{ "old_size": 10, "old_checkpoint": "<signed note>",
//!                     "proof": ["<base64 hash>", ...] }, ...] }            optional
//! ```
//!
//! Base64 is standard and canonical (RFC 4648 §4, padded); an entry is hashed as an RFC 6962
//! leaf of its bytes; inclusion proofs are against the bundle's checkpoint, consistency proofs
//! from each older checkpoint to it.
//!
//! **Trusts:** the [`TrustedKeys`] and required signers the caller passes, and the checkpoints
//! it says it trusted before. Nothing in the file: the origin it names, its checkpoints, its
//! entries and its proofs are all checked.
//!
//! **Checks** (in this order, the first failure is returned as an [`AuditError`] naming
//! expected vs got): the JSON's shape and sizes ([`MAX_EXPORT_LEN`], [`MAX_ENTRIES`],
//! [`MAX_ENTRY_LEN`], ...) without panicking on any input; every checkpoint note verifies with
//! the trusted keys, carries every required signer (notes with the same text are merged first,
//! so co-signatures may come as separate notes), parses as a checkpoint of the file's origin; no
//! two checkpoints (signed, or trusted before) of one size have different roots (a fork); the
//! tree hash of the first N entries equals each signed checkpoint of size N (else an entry was
//! altered, deleted, inserted or reordered: the error names the smallest failing checkpoint and
//! the largest one that still matches, which brackets the first changed index); no checkpoint is
//! larger than the log (truncation); every checkpoint trusted before is a prefix of the log (for
//! an export: the entries' tree hash at its size; for a bundle: a consistency proof).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use base64ct::{Base64, Encoding as _};
use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, MalformedCheckpoint};
use crate::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion, Hash,
    HashReader, MemoryTree, ProofError, HASH_LEN,
};
use crate::note::{Note, NoteError, TrustedKeys, VerifierKey};

/// The `format` of a log export.
pub const EXPORT_FORMAT: &str = "coffer-tlog-export/v1";

/// The `format` of a proof bundle.
pub const BUNDLE_FORMAT: &str = "coffer-tlog-bundle/v1";

/// The largest log export [`LogExport::parse`] reads, in bytes.
pub const MAX_EXPORT_LEN: usize = 64 * 1024 * 1024;

/// The largest proof bundle [`ProofBundle::parse`] reads, in bytes.
pub const MAX_BUNDLE_LEN: usize = 16 * 1024 * 1024;

/// The most entries in a log export (the in-memory tree of a million entries is 64 MiB).
pub const MAX_ENTRIES: usize = 1_000_000;

/// The most entries in a proof bundle.
pub const MAX_BUNDLE_ENTRIES: usize = 10_000;

/// The largest entry, in bytes (audit entries are small JSON records).
pub const MAX_ENTRY_LEN: usize = 1024 * 1024;

/// The most checkpoint notes in a log export, and consistency proofs in a bundle.
pub const MAX_CHECKPOINTS: usize = 1_000;

/// The most hashes in one proof (a proof in a tree of 2^64 leaves has at most 65).
pub const MAX_PROOF_HASHES: usize = 128;

/// Why a log export or proof bundle was refused, or a bundle could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The file is not a well-formed export or bundle (JSON shape, base64, format, limits).
    #[error("{what}: {reason}")]
    Malformed {
        /// The part of the input.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no signed checkpoint, so nothing vouches for its entries.
    #[error("the log export holds no checkpoint: nothing vouches for its {entries} entries")]
    NoCheckpoint {
        /// Entries in the export.
        entries: u64,
    },
    /// A checkpoint note that does not parse or does not verify with the trusted keys.
    #[error("{what} is refused: {source}")]
    CheckpointRefused {
        /// Which checkpoint.
        what: String,
        /// Why.
        source: NoteError,
    },
    /// A checkpoint note without a signature by a required signer (a missing co-signature).
    #[error("{what} lacks a required signature: {source}")]
    MissingSigner {
        /// Which checkpoint.
        what: String,
        /// The key missing and the keys that did sign.
        source: NoteError,
    },
    /// A validly signed note whose text is not a checkpoint.
    #[error("{what} is not a checkpoint: {source}")]
    CheckpointMalformed {
        /// Which checkpoint.
        what: String,
        /// The rule it breaks.
        source: MalformedCheckpoint,
    },
    /// A checkpoint of another log.
    #[error("{what} is for log {got:?}, expected {expected:?}")]
    WrongOrigin {
        /// Which checkpoint.
        what: String,
        /// The origin of the log being verified.
        expected: String,
        /// The checkpoint's origin.
        got: String,
    },
    /// Two views of the log with the same size and different roots.
    #[error("fork at size {size}: {first} has root {first_root}, {second} has root {second_root}")]
    Fork {
        /// The tree size.
        size: u64,
        /// The first view (e.g. a previously trusted checkpoint).
        first: String,
        /// Its root, hex.
        first_root: String,
        /// The second view (e.g. a signed checkpoint in the file).
        second: String,
        /// Its root, hex.
        second_root: String,
    },
    /// A checkpoint trusted before is not a prefix of the bundle's checkpoint.
    #[error("fork: the checkpoint of size {old_size} (root {old_root}) is not a prefix of the checkpoint of size {new_size} (root {new_root}): {reason}")]
    Inconsistent {
        /// The older size.
        old_size: u64,
        /// The older root, hex.
        old_root: String,
        /// The newer size.
        new_size: u64,
        /// The newer root, hex.
        new_root: String,
        /// Why the consistency proof failed.
        reason: Box<ProofError>,
    },
    /// The entries do not hash to a signed checkpoint's root.
    #[error("the first {size} entries hash to root {computed_root}, expected {checkpoint_root} from the signed checkpoint of size {size}: an entry at an index in {matching_prefix}..{size} was altered, deleted, inserted or reordered ({})",
        if *matching_prefix == 0 { "no smaller checkpoint matches".to_owned() } else { format!("the first {matching_prefix} entries match the checkpoint of that size") })]
    ModifiedEntry {
        /// The failing checkpoint's size.
        size: u64,
        /// Its root, hex.
        checkpoint_root: String,
        /// The root of the first `size` entries, hex.
        computed_root: String,
        /// The size of the largest smaller checkpoint that matches (0 if none).
        matching_prefix: u64,
    },
    /// A bundle entry whose inclusion proof fails.
    #[error("bundle entry at index {index} is not in the checkpoint of size {size}: {source}")]
    EntryNotIncluded {
        /// The entry's index.
        index: u64,
        /// The checkpoint's size.
        size: u64,
        /// Why the proof failed.
        source: Box<ProofError>,
    },
    /// The log is shorter than a checkpoint says it is.
    #[error("truncated: {what} says the log has at least {expected_at_least} entries, got {got}")]
    Truncated {
        /// The checkpoint that says so.
        what: String,
        /// Its size.
        expected_at_least: u64,
        /// Entries in the export (or the bundle checkpoint's size).
        got: u64,
    },
    /// A checkpoint trusted before, smaller than the bundle's, and no consistency proof from it.
    #[error("the bundle holds no consistency proof from the previously trusted checkpoint of size {old_size} to its checkpoint of size {new_size}")]
    Unproven {
        /// The trusted checkpoint's size.
        old_size: u64,
        /// The bundle checkpoint's size.
        new_size: u64,
    },
    /// A proof in a bundle that cannot be checked (or made) as given.
    #[error("{what}: {reason}")]
    InvalidProof {
        /// Which proof.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

impl AuditError {
    /// A short, stable reason code: `malformed`, `no-checkpoint`, `checkpoint-signature`,
    /// `missing-signer`, `checkpoint-malformed`, `wrong-origin`, `fork`, `modified-entry`,
    /// `truncated`, `no-consistency-proof`, `invalid-proof`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::NoCheckpoint { .. } => "no-checkpoint",
            Self::CheckpointRefused { .. } => "checkpoint-signature",
            Self::MissingSigner { .. } => "missing-signer",
            Self::CheckpointMalformed { .. } => "checkpoint-malformed",
            Self::WrongOrigin { .. } => "wrong-origin",
            Self::Fork { .. } | Self::Inconsistent { .. } => "fork",
            Self::ModifiedEntry { .. } | Self::EntryNotIncluded { .. } => "modified-entry",
            Self::Truncated { .. } => "truncated",
            Self::Unproven { .. } => "no-consistency-proof",
            Self::InvalidProof { .. } => "invalid-proof",
        }
    }

    /// Whether the input is unusable (not an export or bundle at all) rather than refused.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Malformed { .. })
    }
}

fn malformed(what: impl Into<String>, reason: impl Into<String>) -> AuditError {
    AuditError::Malformed {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Deserializes a JSON list of at most `MAX` items, refusing longer ones before storing them.
fn bounded_vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX} items")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(A::Error::invalid_length(MAX + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportJson {
    format: String,
    origin: String,
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_ENTRIES>")]
    entries: Vec<String>,
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_CHECKPOINTS>")]
    checkpoints: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    format: String,
    origin: String,
    checkpoint: String,
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_BUNDLE_ENTRIES>")]
    entries: Vec<EntryJson>,
    #[serde(default, deserialize_with = "bounded_vec::<_, _, MAX_CHECKPOINTS>")]
    consistency: Vec<ConsistencyJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    index: u64,
    entry: String,
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_PROOF_HASHES>")]
    proof: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyJson {
    old_size: u64,
    old_checkpoint: String,
    #[serde(deserialize_with = "bounded_vec::<_, _, MAX_PROOF_HASHES>")]
    proof: Vec<String>,
}

fn check_len(what: &str, max: usize, got: usize) -> Result<(), AuditError> {
    if got > max {
        return Err(malformed(
            what,
            format!("is {got} bytes, more than the {max} allowed"),
        ));
    }
    Ok(())
}

fn check_format(expected: &str, got: &str) -> Result<(), AuditError> {
    if got != expected {
        return Err(malformed(
            "format",
            format!("expected {expected:?}, got {:?}", crate::note::excerpt(got)),
        ));
    }
    Ok(())
}

fn check_origin(origin: &str) -> Result<(), AuditError> {
    if origin.is_empty() || origin.contains('\n') {
        return Err(malformed(
            "origin",
            "must be one non-empty line (a checkpoint's first line)",
        ));
    }
    Ok(())
}

fn decode_entry(what: &str, b64: &str) -> Result<Vec<u8>, AuditError> {
    // Base64 grows 3 bytes to 4 characters: refuse what cannot decode to at most the limit.
    if b64.len() > MAX_ENTRY_LEN.div_ceil(3) * 4 {
        return Err(malformed(
            what,
            format!("is more than the {MAX_ENTRY_LEN} bytes an entry may have"),
        ));
    }
    let bytes =
        Base64::decode_vec(b64).map_err(|_| malformed(what, "is not canonical standard base64"))?;
    check_len(what, MAX_ENTRY_LEN, bytes.len())?;
    Ok(bytes)
}

fn decode_hashes(what: &str, hashes: &[String]) -> Result<Vec<Hash>, AuditError> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            let bad = |reason: String| malformed(format!("{what}, hash {i}"), reason);
            if b64.len() != 44 {
                return Err(bad(format!(
                    "is {} characters, not the 44 of a base64 SHA-256 hash",
                    b64.len()
                )));
            }
            let bytes = Base64::decode_vec(b64)
                .map_err(|_| bad("is not canonical standard base64".into()))?;
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("is {} bytes, not {HASH_LEN}", bytes.len())))
        })
        .collect()
}

fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| Base64::encode_string(h)).collect()
}

fn note_text(what: &str, note: &[u8]) -> Result<String, AuditError> {
    String::from_utf8(note.to_vec()).map_err(|_| malformed(what, "is not UTF-8"))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec_pretty(value).map_err(|e| malformed("JSON encoding", e.to_string()))
}

/// A whole log, as downloaded: its origin, every entry in order, and signed checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogExport {
    origin: String,
    entries: Vec<Vec<u8>>,
    checkpoints: Vec<String>,
}

impl LogExport {
    /// An export of `entries` (in log order) with signed checkpoint notes (as
    /// [`Note::to_bytes`] makes them), checked against the limits [`LogExport::parse`] applies.
    pub fn new(
        origin: &str,
        entries: Vec<Vec<u8>>,
        checkpoint_notes: &[Vec<u8>],
    ) -> Result<Self, AuditError> {
        check_origin(origin)?;
        if entries.len() > MAX_ENTRIES {
            return Err(malformed(
                "entries",
                format!(
                    "{} entries, more than the {MAX_ENTRIES} allowed",
                    entries.len()
                ),
            ));
        }
        if let Some((i, e)) = entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() > MAX_ENTRY_LEN)
        {
            check_len(&format!("entry {i}"), MAX_ENTRY_LEN, e.len())?;
        }
        if checkpoint_notes.len() > MAX_CHECKPOINTS {
            return Err(malformed(
                "checkpoints",
                format!(
                    "{} notes, more than the {MAX_CHECKPOINTS} allowed",
                    checkpoint_notes.len()
                ),
            ));
        }
        let checkpoints = checkpoint_notes
            .iter()
            .enumerate()
            .map(|(i, n)| note_text(&format!("checkpoint note #{i}"), n))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origin: origin.to_owned(),
            entries,
            checkpoints,
        })
    }

    /// Parses the JSON form (see the module doc), at most [`MAX_EXPORT_LEN`] bytes. Verifies
    /// nothing: call [`verify_log`].
    pub fn parse(json: &[u8]) -> Result<Self, AuditError> {
        check_len("log export", MAX_EXPORT_LEN, json.len())?;
        let raw: ExportJson = serde_json::from_slice(json)
            .map_err(|e| malformed("log export is not valid JSON of its format", e.to_string()))?;
        check_format(EXPORT_FORMAT, &raw.format)?;
        check_origin(&raw.origin)?;
        let entries = raw
            .entries
            .iter()
            .enumerate()
            .map(|(i, b64)| decode_entry(&format!("entry {i}"), b64))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origin: raw.origin,
            entries,
            checkpoints: raw.checkpoints,
        })
    }

    /// The JSON form.
    pub fn to_json(&self) -> Result<Vec<u8>, AuditError> {
        to_json(&ExportJson {
            format: EXPORT_FORMAT.to_owned(),
            origin: self.origin.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| Base64::encode_string(e))
                .collect(),
            checkpoints: self.checkpoints.clone(),
        })
    }

    /// The log's name, as the file states it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The entries, in log order.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }

    /// The checkpoint notes, as found (not verified).
    pub fn checkpoints(&self) -> &[String] {
        &self.checkpoints
    }
}

/// One entry of a [`ProofBundle`] with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// The entry's index in the log.
    pub index: u64,
    /// The entry's bytes.
    pub entry: Vec<u8>,
    /// Its inclusion proof in the bundle's checkpoint.
    pub proof: Vec<Hash>,
}

/// A consistency proof from an older signed checkpoint to a [`ProofBundle`]'s checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleConsistency {
    /// The older checkpoint's size (must be the size in `old_checkpoint`).
    pub old_size: u64,
    /// The older checkpoint's signed note.
    pub old_checkpoint: String,
    /// The proof.
    pub proof: Vec<Hash>,
}

/// Some entries of a log with inclusion proofs against one signed checkpoint, and consistency
/// proofs from older checkpoints to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBundle {
    /// The log's name.
    pub origin: String,
    /// The signed checkpoint note the proofs lead to.
    pub checkpoint: String,
    /// The entries.
    pub entries: Vec<BundleEntry>,
    /// Consistency proofs from older checkpoints.
    pub consistency: Vec<BundleConsistency>,
}

impl ProofBundle {
    /// Parses the JSON form (see the module doc), at most [`MAX_BUNDLE_LEN`] bytes. Verifies
    /// nothing: call [`verify_bundle`].
    pub fn parse(json: &[u8]) -> Result<Self, AuditError> {
        check_len("proof bundle", MAX_BUNDLE_LEN, json.len())?;
        let raw: BundleJson = serde_json::from_slice(json).map_err(|e| {
            malformed(
                "proof bundle is not valid JSON of its format",
                e.to_string(),
            )
        })?;
        check_format(BUNDLE_FORMAT, &raw.format)?;
        check_origin(&raw.origin)?;
        let entries = raw
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let what = format!("bundle entry #{i} (index {})", e.index);
                Ok(BundleEntry {
                    index: e.index,
                    entry: decode_entry(&what, &e.entry)?,
                    proof: decode_hashes(&format!("{what}, proof"), &e.proof)?,
                })
            })
            .collect::<Result<_, AuditError>>()?;
        let consistency = raw
            .consistency
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(BundleConsistency {
                    old_size: c.old_size,
                    proof: decode_hashes(&format!("consistency proof #{i}"), &c.proof)?,
                    old_checkpoint: c.old_checkpoint,
                })
            })
            .collect::<Result<_, AuditError>>()?;
        Ok(Self {
            origin: raw.origin,
            checkpoint: raw.checkpoint,
            entries,
            consistency,
        })
    }

    /// The JSON form.
    pub fn to_json(&self) -> Result<Vec<u8>, AuditError> {
        to_json(&BundleJson {
            format: BUNDLE_FORMAT.to_owned(),
            origin: self.origin.clone(),
            checkpoint: self.checkpoint.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| EntryJson {
                    index: e.index,
                    entry: Base64::encode_string(&e.entry),
                    proof: encode_hashes(&e.proof),
                })
                .collect(),
            consistency: self
                .consistency
                .iter()
                .map(|c| ConsistencyJson {
                    old_size: c.old_size,
                    old_checkpoint: c.old_checkpoint.clone(),
                    proof: encode_hashes(&c.proof),
                })
                .collect(),
        })
    }
}

/// The checkpoint in a note (parsed, not verified): for making bundles from notes a log signed.
fn unverified_checkpoint(what: &str, note: &[u8]) -> Result<Checkpoint, AuditError> {
    let parsed = Note::parse(note).map_err(|source| AuditError::CheckpointRefused {
        what: what.to_owned(),
        source,
    })?;
    Checkpoint::parse(parsed.text().as_bytes()).map_err(|source| AuditError::CheckpointMalformed {
        what: what.to_owned(),
        source,
    })
}

/// Makes a bundle of `entries` (index, bytes) with inclusion proofs from `log` against the
/// signed `checkpoint_note`, and consistency proofs to it from each of `older_notes` (signed
/// checkpoints of smaller or equal sizes). The notes are not verified here; the proofs are made
/// from `log`'s stored hashes, so a wrong store or a wrong entry makes a bundle that fails
/// [`verify_bundle`].
pub fn make_bundle<R: HashReader + ?Sized>(
    log: &R,
    checkpoint_note: &[u8],
    entries: &[(u64, &[u8])],
    older_notes: &[&[u8]],
) -> Result<ProofBundle, AuditError> {
    let checkpoint = unverified_checkpoint("the bundle's checkpoint", checkpoint_note)?;
    let size = checkpoint.size();
    let proof_error = |what: String| {
        move |e: ProofError| AuditError::InvalidProof {
            what,
            reason: e.to_string(),
        }
    };
    let entries = entries
        .iter()
        .map(|&(index, entry)| {
            Ok(BundleEntry {
                index,
                entry: entry.to_vec(),
                proof: inclusion_proof(log, index, size)
                    .map_err(proof_error(format!("inclusion proof of entry {index}")))?,
            })
        })
        .collect::<Result<_, AuditError>>()?;
    let consistency = older_notes
        .iter()
        .enumerate()
        .map(|(i, note)| {
            let what = format!("older checkpoint #{i}");
            let old = unverified_checkpoint(&what, note)?;
            Ok(BundleConsistency {
                old_size: old.size(),
                old_checkpoint: note_text(&what, note)?,
                proof: consistency_proof(log, old.size(), size)
                    .map_err(proof_error(format!("consistency proof from {what}")))?,
            })
        })
        .collect::<Result<_, AuditError>>()?;
    Ok(ProofBundle {
        origin: checkpoint.origin().to_owned(),
        checkpoint: note_text("the bundle's checkpoint", checkpoint_note)?,
        entries,
        consistency,
    })
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The log's name.
    pub origin: String,
    /// Entries verified: every entry of an export, the bundle's entries for a bundle.
    pub entries: u64,
    /// The newest (largest) signed checkpoint.
    pub newest: Checkpoint,
    /// `name+id` of the trusted keys whose signatures on the newest checkpoint verified.
    pub signed_by: Vec<String>,
    /// Distinct signed checkpoints checked.
    pub checkpoints: usize,
    /// Export only: entries after the newest checkpoint, which no signature covers yet.
    pub beyond_newest: u64,
    /// Previously trusted checkpoints shown to be prefixes of the log.
    pub previous: usize,
}

/// A signed checkpoint that verified.
struct Signed {
    what: String,
    checkpoint: Checkpoint,
    signed_by: Vec<String>,
}

fn verify_note(
    what: &str,
    note: &Note,
    origin: &str,
    trusted: &TrustedKeys,
    required: &[VerifierKey],
) -> Result<Signed, AuditError> {
    let verified = note
        .verify(trusted)
        .map_err(|source| AuditError::CheckpointRefused {
            what: what.to_owned(),
            source,
        })?;
    let required: Vec<&VerifierKey> = required.iter().collect();
    verified
        .require(&required)
        .map_err(|source| AuditError::MissingSigner {
            what: what.to_owned(),
            source,
        })?;
    let checkpoint =
        Checkpoint::from_note(&verified).map_err(|source| AuditError::CheckpointMalformed {
            what: what.to_owned(),
            source,
        })?;
    if checkpoint.origin() != origin {
        return Err(AuditError::WrongOrigin {
            what: what.to_owned(),
            expected: origin.to_owned(),
            got: checkpoint.origin().to_owned(),
        });
    }
    Ok(Signed {
        what: format!("{what} (size {})", checkpoint.size()),
        signed_by: verified
            .verified_by()
            .iter()
            .map(VerifierKey::label)
            .collect(),
        checkpoint,
    })
}

fn parse_note(what: &str, text: &str) -> Result<Note, AuditError> {
    Note::parse(text.as_bytes()).map_err(|source| AuditError::CheckpointRefused {
        what: what.to_owned(),
        source,
    })
}

/// Refuses two views of one size with different roots; keeps one per (size, root).
fn check_forks<'a>(
    views: impl IntoIterator<Item = (&'a str, &'a Checkpoint)>,
) -> Result<(), AuditError> {
    let mut by_size: BTreeMap<u64, (&str, &Checkpoint)> = BTreeMap::new();
    for (what, checkpoint) in views {
        match by_size.get(&checkpoint.size()) {
            Some((first, seen)) if seen.root() != checkpoint.root() => {
                return Err(AuditError::Fork {
                    size: checkpoint.size(),
                    first: (*first).to_owned(),
                    first_root: hex::encode(seen.root()),
                    second: what.to_owned(),
                    second_root: hex::encode(checkpoint.root()),
                });
            }
            Some(_) => {}
            None => {
                by_size.insert(checkpoint.size(), (what, checkpoint));
            }
        }
    }
    Ok(())
}

fn check_previous_origins(previous: &[Checkpoint], origin: &str) -> Result<(), AuditError> {
    for (i, p) in previous.iter().enumerate() {
        if p.origin() != origin {
            return Err(AuditError::WrongOrigin {
                what: format!("previously trusted checkpoint #{i}"),
                expected: origin.to_owned(),
                got: p.origin().to_owned(),
            });
        }
    }
    Ok(())
}

fn previous_label(i: usize, p: &Checkpoint) -> String {
    format!("previously trusted checkpoint #{i} (size {})", p.size())
}

/// Verifies a whole log: every checkpoint note verifies with `trusted` and carries every key in
/// `required`; no fork among them and the checkpoints in `previous` (which the caller trusted
/// before); each checkpoint's root is the tree hash of that many entries; no checkpoint is
/// larger than the log; each of `previous` is a prefix of the log. See the module doc.
pub fn verify_log(
    export: &LogExport,
    trusted: &TrustedKeys,
    required: &[VerifierKey],
    previous: &[Checkpoint],
) -> Result<Report, AuditError> {
    let origin = export.origin();
    let entries = export.entries.len() as u64;
    if export.checkpoints.is_empty() {
        return Err(AuditError::NoCheckpoint { entries });
    }
    // Co-signatures of one checkpoint may come as separate notes: merge notes of equal text.
    let mut notes: Vec<(String, Note)> = Vec::new();
    for (i, text) in export.checkpoints.iter().enumerate() {
        let what = format!("checkpoint note #{i}");
        let note = parse_note(&what, text)?;
        match notes.iter_mut().find(|(_, n)| n.text() == note.text()) {
            Some((what, merged)) => {
                merged
                    .merge(&note)
                    .map_err(|source| AuditError::CheckpointRefused {
                        what: what.clone(),
                        source,
                    })?
            }
            None => notes.push((what, note)),
        }
    }
    let mut signed = notes
        .iter()
        .map(|(what, note)| verify_note(what, note, origin, trusted, required))
        .collect::<Result<Vec<_>, _>>()?;
    signed.sort_by_key(|s| s.checkpoint.size());
    check_previous_origins(previous, origin)?;
    let previous_labels: Vec<String> = previous
        .iter()
        .enumerate()
        .map(|(i, p)| previous_label(i, p))
        .collect();
    check_forks(
        previous_labels
            .iter()
            .map(String::as_str)
            .zip(previous)
            .chain(signed.iter().map(|s| (s.what.as_str(), &s.checkpoint))),
    )?;

    let tree = MemoryTree::from_leaf_hashes(export.entries.iter().map(|e| leaf_hash(e)));
    let mut matching_prefix = 0;
    for s in signed.iter().filter(|s| s.checkpoint.size() <= entries) {
        let size = s.checkpoint.size();
        let computed = tree.root_at(size).map_err(|e| AuditError::InvalidProof {
            what: format!("the tree hash of the first {size} entries"),
            reason: e.to_string(),
        })?;
        if computed != *s.checkpoint.root() {
            return Err(AuditError::ModifiedEntry {
                size,
                checkpoint_root: hex::encode(s.checkpoint.root()),
                computed_root: hex::encode(computed),
                matching_prefix,
            });
        }
        matching_prefix = size;
    }
    let largest = previous_labels
        .iter()
        .zip(previous)
        .chain(signed.iter().map(|s| (&s.what, &s.checkpoint)))
        .max_by_key(|(_, c)| c.size());
    if let Some((what, c)) = largest.filter(|(_, c)| c.size() > entries) {
        return Err(AuditError::Truncated {
            what: what.clone(),
            expected_at_least: c.size(),
            got: entries,
        });
    }
    for (what, p) in previous_labels.iter().zip(previous) {
        let computed = tree
            .root_at(p.size())
            .map_err(|e| AuditError::InvalidProof {
                what: format!("the tree hash of the first {} entries", p.size()),
                reason: e.to_string(),
            })?;
        if computed != *p.root() {
            return Err(AuditError::Fork {
                size: p.size(),
                first: what.clone(),
                first_root: hex::encode(p.root()),
                second: format!("the log's first {} entries", p.size()),
                second_root: hex::encode(computed),
            });
        }
    }
    let checkpoints = signed.len();
    let Some(newest) = signed.pop() else {
        return Err(AuditError::NoCheckpoint { entries });
    };
    Ok(Report {
        origin: origin.to_owned(),
        entries,
        beyond_newest: entries - newest.checkpoint.size(),
        newest: newest.checkpoint,
        signed_by: newest.signed_by,
        checkpoints,
        previous: previous.len(),
    })
}

/// Verifies a proof bundle: its checkpoint (and every older checkpoint it carries) verifies with
/// `trusted` and carries every key in `required`; each entry's inclusion proof leads to the
/// checkpoint's root; each consistency proof holds; each checkpoint in `previous` is not larger
/// than the bundle's, and is equal to it or proven a prefix of it by a consistency proof.
pub fn verify_bundle(
    bundle: &ProofBundle,
    trusted: &TrustedKeys,
    required: &[VerifierKey],
    previous: &[Checkpoint],
) -> Result<Report, AuditError> {
    let origin = bundle.origin.as_str();
    check_origin(origin)?;
    let what = "the bundle's checkpoint";
    let newest = verify_note(
        what,
        &parse_note(what, &bundle.checkpoint)?,
        origin,
        trusted,
        required,
    )?;
    let (size, root) = (newest.checkpoint.size(), *newest.checkpoint.root());
    check_previous_origins(previous, origin)?;

    // Older checkpoints the bundle proves consistent with its own.
    let mut older: Vec<Signed> = Vec::new();
    for (i, c) in bundle.consistency.iter().enumerate() {
        let what = format!("consistency proof #{i}'s old checkpoint");
        let old = verify_note(
            &what,
            &parse_note(&what, &c.old_checkpoint)?,
            origin,
            trusted,
            required,
        )?;
        if old.checkpoint.size() != c.old_size {
            return Err(AuditError::InvalidProof {
                what: format!("consistency proof #{i}"),
                reason: format!(
                    "old_size is {}, its checkpoint's size is {}",
                    c.old_size,
                    old.checkpoint.size()
                ),
            });
        }
        if old.checkpoint.size() > size {
            return Err(AuditError::Truncated {
                what: old.what,
                expected_at_least: c.old_size,
                got: size,
            });
        }
        verify_consistency(c.old_size, size, old.checkpoint.root(), &root, &c.proof).map_err(
            |reason| AuditError::Inconsistent {
                old_size: c.old_size,
                old_root: hex::encode(old.checkpoint.root()),
                new_size: size,
                new_root: hex::encode(root),
                reason: Box::new(reason),
            },
        )?;
        older.push(old);
    }
    let previous_labels: Vec<String> = previous
        .iter()
        .enumerate()
        .map(|(i, p)| previous_label(i, p))
        .collect();
    check_forks(
        previous_labels
            .iter()
            .map(String::as_str)
            .zip(previous)
            .chain(std::iter::once((newest.what.as_str(), &newest.checkpoint)))
            .chain(older.iter().map(|s| (s.what.as_str(), &s.checkpoint))),
    )?;

    for e in &bundle.entries {
        verify_inclusion(e.index, size, &leaf_hash(&e.entry), &e.proof, &root).map_err(
            |source| AuditError::EntryNotIncluded {
                index: e.index,
                size,
                source: Box::new(source),
            },
        )?;
    }

    for (what, p) in previous_labels.iter().zip(previous) {
        if p.size() > size {
            return Err(AuditError::Truncated {
                what: what.clone(),
                expected_at_least: p.size(),
                got: size,
            });
        }
        // Equal sizes were compared by the fork check; the empty tree is a prefix of any tree.
        // Otherwise an older checkpoint of this size was proven consistent above, and the fork
        // check made its root equal to this one.
        if p.size() != size
            && p.size() != 0
            && !older.iter().any(|o| o.checkpoint.size() == p.size())
        {
            return Err(AuditError::Unproven {
                old_size: p.size(),
                new_size: size,
            });
        }
    }
    Ok(Report {
        origin: origin.to_owned(),
        entries: bundle.entries.len() as u64,
        newest: newest.checkpoint,
        signed_by: newest.signed_by,
        checkpoints: 1 + older.len(),
        beyond_newest: 0,
        previous: previous.len(),
    })
}

#[cfg(test)]
mod tests;
