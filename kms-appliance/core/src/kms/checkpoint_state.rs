//! The KMS's memory of the last audit checkpoint it signed: one sealed record, `meta/`
//! [`AUDIT_CHECKPOINT_KEY`], written in the same durable commit that precedes every signature
//! it returns, and held in memory from open on.
//!
//! Read once, at open, while the store's record set is verified; afterwards only memory is
//! consulted, so a host that puts back an older sealed copy of the record under a running KMS
//! cannot make it sign a fork (the next open catches the swap through the store's digest).

use serde::{Deserialize, Serialize};

use super::{from_json, to_json, Kms, KmsError};
use crate::checkpoint::{self, CheckpointError, CheckpointSigner, SignedCheckpoint};
use crate::store::{Batch, Store, Table};
use coffer_tlog::{Checkpoint, Hash};

/// The record's key in [`Table::Meta`].
pub const AUDIT_CHECKPOINT_KEY: &str = "audit-checkpoint";

fn record_name() -> String {
    format!("{}/{AUDIT_CHECKPOINT_KEY}", Table::Meta.name())
}

/// The record: the checkpoint text signed and the note returned for it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditCheckpointRecord {
    checkpoint: String,
    note: String,
}

/// Reads the last signed checkpoint at open (`None`: the KMS never signed one).
pub(super) fn load(store: &Store) -> Result<Option<SignedCheckpoint>, KmsError> {
    let Some(bytes) = store.get(Table::Meta, AUDIT_CHECKPOINT_KEY)? else {
        return Ok(None);
    };
    let record = record_name();
    let stored: AuditCheckpointRecord = from_json(&record, &bytes)?;
    let checkpoint =
        Checkpoint::parse(stored.checkpoint.as_bytes()).map_err(|e| KmsError::Record {
            record: record.clone(),
            reason: e.to_string(),
        })?;
    if !stored.note.starts_with(&stored.checkpoint) {
        return Err(KmsError::Record {
            record,
            reason: "the signed note is not of the recorded checkpoint".into(),
        });
    }
    Ok(Some(SignedCheckpoint::new(
        checkpoint,
        stored.note.into_bytes(),
    )))
}

impl Kms {
    /// The audit checkpoint signer for log `origin`, holding the last signed checkpoint.
    fn audit_signer(&self, origin: &str) -> Result<CheckpointSigner, CheckpointError> {
        CheckpointSigner::new(&self.root, origin, self.audit_checkpoint.clone())
    }

    /// The Ed25519 public key that signs audit checkpoints (derived from the root key: the same
    /// on every replica and after recovery).
    pub fn audit_signer_public_key(&self) -> Result<[u8; 32], CheckpointError> {
        checkpoint::signer_public_key(&self.root)
    }

    /// The C2SP verifier key (`name+id+key`) of the audit checkpoint signer for log `origin`:
    /// what a verifier trusts, and what [`checkpoint::signer_report_data`] binds into evidence.
    pub fn audit_signer_vkey(&self, origin: &str) -> Result<String, CheckpointError> {
        Ok(CheckpointSigner::new(&self.root, origin, None)?
            .verifier_key()
            .to_string())
    }

    /// The last audit checkpoint this KMS signed, and the note it returned for it.
    pub fn last_signed_checkpoint(&self) -> Option<&SignedCheckpoint> {
        self.audit_checkpoint.as_ref()
    }

    /// Signs the audit checkpoint text `checkpoint` of log `origin` if it is consistent with the
    /// last one signed (`consistency_proof`: from the last signed size to this one's; empty for
    /// the first checkpoint or the same size). Records it durably before returning the signed
    /// note, so no crash can lead to signing two different trees of one size.
    pub fn sign_checkpoint(
        &mut self,
        origin: &str,
        checkpoint: &[u8],
        consistency_proof: &[Hash],
    ) -> Result<Vec<u8>, CheckpointError> {
        // A replica signs after the last checkpoint any replica signed, and no other signs
        // meanwhile.
        self.serialized(|kms| kms.sign_checkpoint_once(origin, checkpoint, consistency_proof))
    }

    fn sign_checkpoint_once(
        &mut self,
        origin: &str,
        checkpoint: &[u8],
        consistency_proof: &[Hash],
    ) -> Result<Vec<u8>, CheckpointError> {
        let mut signer = self.audit_signer(origin)?;
        let note = signer.sign(checkpoint, consistency_proof)?;
        let signed = signer
            .last_signed()
            .cloned()
            .ok_or_else(|| CheckpointError::Record {
                record: record_name(),
                reason: "the signer did not keep the checkpoint it signed".into(),
            })?;
        let note_text = String::from_utf8(note.clone()).map_err(|_| CheckpointError::Record {
            record: record_name(),
            reason: "the signed note is not UTF-8".into(),
        })?;
        let record = AuditCheckpointRecord {
            checkpoint: signed.checkpoint().to_text(),
            note: note_text,
        };
        let bytes = to_json(&record_name(), &record).map_err(|e| CheckpointError::Record {
            record: record_name(),
            reason: e.to_string(),
        })?;
        let mut batch = Batch::new();
        batch.put(Table::Meta, AUDIT_CHECKPOINT_KEY, &bytes);
        let committed = self.store.commit(batch);
        if crate::store::is_durable(&committed) {
            // On disk, so it is the one the next checkpoint must extend.
            self.audit_checkpoint = Some(signed);
        }
        committed?;
        Ok(note)
    }
}
