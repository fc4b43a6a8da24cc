//! The audit journal's records in the KMS's own embedded store ([`crate::api::journal`] decides
//! what goes in them; this module only seals, writes and reads them back).
//!
//! **Where:** table `journal` of the redb database that holds the store (a file, or the data
//! disk), one record per journaled decision, keyed `journal id/sequence number` (the number
//! zero-padded to 20 digits, so key order is journal order). The table is not a [`Table`]: the
//! state digest, the state version and the rollback anchor never see it, so a flush neither
//! raises the version nor asks the witnesses. Its writes share the database with the store's
//! commits (redb runs one write transaction at a time) and are durable when
//! [`JournalStore::commit`] returns (`Durability::Immediate`).
//!
//! **A record** is `format (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)` under the store's sealing
//! key, with associated data `"coffer-kms journal v1" ‖ journal id ‖ sequence number (8,
//! big-endian) ‖ format`. A record the host altered, forged without the key, or moved to another
//! journal or sequence number does not open: [`JournalStore::read`] reports it
//! ([`StoreError::Tampered`]) beside the records that do open, and never drops it silently.
//!
//! **What the host can still do:** delete records, or put back an older copy of the whole file
//! (the journal is outside the rollback defence). Both lose decisions that were not yet
//! collected by the control plane, never add or change one; a deletion inside a journal's range
//! shows as missing sequence numbers when the next process replays it.
//!
//! [`Table`]: super::Table

use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use zeroize::Zeroizing;

use super::{SealingKey, StoreError};
use crate::crypto::{self, AeadFailure};

/// The journal's table: outside the sealed state (see the module docs).
const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");

/// The format byte of every journal record this version writes.
pub const JOURNAL_FORMAT: u8 = 1;

const JOURNAL_AAD_LABEL: &str = "coffer-kms journal v1";

/// The key of the record of entry `seq` of `journal`.
pub fn record_key(journal: &str, seq: u64) -> String {
    format!("{journal}/{seq:020}")
}

/// The journal id and sequence number a record key names, if it is one [`record_key`] makes.
fn parse_key(key: &str) -> Option<(&str, u64)> {
    let (journal, seq) = key.rsplit_once('/')?;
    if journal.is_empty() || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((journal, seq.parse().ok()?))
}

fn journal_aad(journal: &str, seq: u64, format: u8) -> Vec<u8> {
    crypto::aad(
        JOURNAL_AAD_LABEL,
        &[journal.as_bytes(), &seq.to_be_bytes(), &[format]],
    )
}

/// One record read back by [`JournalStore::read`].
#[derive(Debug)]
pub struct JournalRecord {
    /// Its key in the table, as found (what names it in reports).
    pub key: String,
    /// The journal id and sequence number the key names; `None` when the key is not one this
    /// module writes (then `plaintext` is an error too).
    pub position: Option<(String, u64)>,
    /// The plaintext, which authenticated under `position`; or why it does not.
    pub plaintext: Result<Zeroizing<Vec<u8>>, StoreError>,
}

/// Writes for one [`JournalStore::commit`]: all or nothing.
#[derive(Debug, Default)]
pub struct JournalWrite {
    puts: Vec<(String, u64, Vec<u8>)>,
    removes: Vec<String>,
    ranges: Vec<(String, u64, u64)>,
}

impl JournalWrite {
    /// An empty write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes entry `seq` of `journal` (sealed at commit).
    pub fn put(&mut self, journal: &str, seq: u64, plaintext: Vec<u8>) -> &mut Self {
        self.puts.push((journal.to_owned(), seq, plaintext));
        self
    }

    /// Removes the record at `key` (nothing if absent).
    pub fn remove(&mut self, key: impl Into<String>) -> &mut Self {
        self.removes.push(key.into());
        self
    }

    /// Removes entries `from..=through` of `journal` (those present).
    pub fn remove_range(&mut self, journal: &str, from: u64, through: u64) -> &mut Self {
        if from <= through {
            self.ranges.push((journal.to_owned(), from, through));
        }
        self
    }

    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.removes.is_empty() && self.ranges.is_empty()
    }

    /// How many entries it writes.
    pub fn puts(&self) -> usize {
        self.puts.len()
    }
}

/// The audit journal's records in one embedded store (see the module docs). Made by
/// [`super::Store::journal`]; shares the store's database, not its mutex.
pub struct JournalStore {
    db: Arc<Database>,
    sealing: SealingKey,
    name: String,
}

impl std::fmt::Debug for JournalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStore")
            .field("store", &self.name)
            .finish_non_exhaustive()
    }
}

impl JournalStore {
    pub(super) fn new(db: Arc<Database>, sealing: SealingKey, name: String) -> Self {
        Self { db, sealing, name }
    }

    /// The store's name (its path).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn db_error(&self, op: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| StoreError::Db {
            store: self.name.clone(),
            op,
            reason: e.to_string(),
        }
    }

    /// Every record, in key order (journal, then sequence number), each opened or reported.
    /// Fails only if the database cannot be read.
    pub fn read(&self) -> Result<Vec<JournalRecord>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.db_error("reading the audit journal")(e.into()))?;
        let table = match read.open_table(JOURNAL) {
            Ok(table) => table,
            // No journal was ever flushed to this store.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.db_error("opening the audit journal")(e.into())),
        };
        let mut records = Vec::new();
        for entry in table
            .iter()
            .map_err(|e| self.db_error("listing the audit journal")(e.into()))?
        {
            let (key, value) =
                entry.map_err(|e| self.db_error("reading the audit journal")(e.into()))?;
            records.push(self.open(key.value(), value.value()));
        }
        Ok(records)
    }

    fn open(&self, key: &str, sealed: &[u8]) -> JournalRecord {
        let tampered = |reason: String| StoreError::Tampered {
            record: format!("journal/{key}"),
            reason,
        };
        let Some((journal, seq)) = parse_key(key) else {
            return JournalRecord {
                key: key.to_owned(),
                position: None,
                plaintext: Err(tampered(
                    "not a journal record key (journal id/20-digit sequence number)".into(),
                )),
            };
        };
        let plaintext = match sealed.split_first() {
            None => Err(tampered("empty".into())),
            Some((&format, _)) if format != JOURNAL_FORMAT => Err(tampered(format!(
                "unknown record format {format} (expected {JOURNAL_FORMAT})"
            ))),
            Some((&format, body)) => crypto::open(
                &self.sealing.key,
                &journal_aad(journal, seq, format),
                body,
            )
            .map_err(|e| match e {
                AeadFailure::TooShort(n) => tampered(format!("{n} bytes, too short to be sealed")),
                _ => tampered(
                    "it does not authenticate as this journal's entry at this sequence number (altered, forged, or moved from another entry)"
                        .into(),
                ),
            }),
        };
        JournalRecord {
            key: key.to_owned(),
            position: Some((journal.to_owned(), seq)),
            plaintext,
        }
    }

    fn seal(&self, journal: &str, seq: u64, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let body = crypto::seal(
            &self.sealing.key,
            &journal_aad(journal, seq, JOURNAL_FORMAT),
            plaintext,
        )
        .map_err(|e| StoreError::Seal {
            record: format!("journal/{}", record_key(journal, seq)),
            reason: format!("{e:?}"),
        })?;
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(JOURNAL_FORMAT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Seals and writes `write` in one redb transaction, durable when this returns
    /// (`Durability::Immediate`: data and the new root fsynced). Blocking I/O: async callers run
    /// it on the blocking pool. An empty write does nothing.
    pub fn commit(&self, write: JournalWrite) -> Result<(), StoreError> {
        if write.is_empty() {
            return Ok(());
        }
        let mut sealed = Vec::with_capacity(write.puts.len());
        for (journal, seq, plaintext) in &write.puts {
            sealed.push((
                record_key(journal, *seq),
                self.seal(journal, *seq, plaintext)?,
            ));
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.db_error("writing the audit journal")(e.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn
                .open_table(JOURNAL)
                .map_err(|e| self.db_error("opening the audit journal")(e.into()))?;
            for key in &write.removes {
                table
                    .remove(key.as_str())
                    .map_err(|e| self.db_error("removing a journal record")(e.into()))?;
            }
            for (journal, from, through) in &write.ranges {
                let (from, through) = (record_key(journal, *from), record_key(journal, *through));
                table
                    .retain_in(from.as_str()..=through.as_str(), |_, _| false)
                    .map_err(|e| self.db_error("removing journal records")(e.into()))?;
            }
            for (key, value) in &sealed {
                table
                    .insert(key.as_str(), value.as_slice())
                    .map_err(|e| self.db_error("writing a journal record")(e.into()))?;
            }
        }
        txn.commit()
            .map_err(|e| self.db_error("committing the audit journal")(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_sort_in_sequence_order_and_parse_back() {
        assert!(record_key("j", 9) < record_key("j", 10));
        assert_eq!(parse_key(&record_key("ab", 42)), Some(("ab", 42)));
        assert_eq!(
            parse_key(&record_key("ab", u64::MAX)),
            Some(("ab", u64::MAX))
        );
        for bad in [
            "ab",
            "/00000000000000000001",
            "ab/1",
            "ab/0000000000000000000x",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn journal_aad_binds_journal_and_sequence_number() {
        assert_ne!(journal_aad("a", 1, 1), journal_aad("a", 2, 1));
        assert_ne!(journal_aad("a", 1, 1), journal_aad("b", 1, 1));
        assert_ne!(journal_aad("a", 1, 1), journal_aad("a", 1, 2));
    }
}
