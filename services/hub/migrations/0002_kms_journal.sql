-- How far the hub has collected each KMS audit journal (a journal lives as long as one
-- kms-serve process). Updated in the same transaction as the audit entries it collected, so
-- every journaled decision is appended exactly once.
CREATE TABLE kms_journals (
    -- The order in which the hub first saw each journal (the latest is the KMS's current one).
    ord BIGINT PRIMARY KEY,
    journal TEXT NOT NULL UNIQUE,
    last_seq BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
