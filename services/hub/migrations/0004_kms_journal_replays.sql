-- How far the audit log holds each KMS journal's entries through their replays. A KMS that
-- restarts carries the entries its previous process left uncollected over into its new journal,
-- each marked with its original journal and sequence number; the hub may have appended some of
-- them already (collected just before the crash, the acknowledgement lost). An entry replayed
-- from (journal, seq) is appended only if seq is past both kms_journals.last_seq and
-- covered_seq of that journal; covered_seq rises with every replayed entry appended, so an
-- entry replayed again after a second restart is skipped too (a KMS keeps each entry's original
-- position through every replay). Updated in the same transaction as the entries.
CREATE TABLE kms_journal_replays (
    journal TEXT PRIMARY KEY,
    covered_seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
