-- The control plane's schema. One portable dialect for SQLite and PostgreSQL (sqlx's Any
-- driver): ids and hashes are TEXT, times are BIGINT seconds since the Unix epoch, flags are
-- BIGINT 0/1, documents are JSON in TEXT. No plaintext data and no key material is ever stored:
-- job definitions are ciphertext the hub cannot open; session and service tokens are stored as
-- SHA-256 digests only.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    -- argon2id PHC string; NULL for users who sign in through OIDC only.
    password_hash TEXT,
    -- A deployment administrator: creates orgs and users. Org roles are memberships.
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE oidc_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (issuer, subject)
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

-- Failed sign-ins, per account name, for the login rate limit (kept in the database so that a
-- restart does not reset the limit).
CREATE TABLE login_failures (
    username TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX login_failures_by_name ON login_failures (username, at);

-- Non-human callers: the workload manager (kind 'scheduler').
CREATE TABLE service_accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE workspaces (
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE memberships (
    org_id TEXT NOT NULL REFERENCES orgs (id),
    user_id TEXT NOT NULL REFERENCES users (id),
    role TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id, role)
);

CREATE TABLE workspace_members (
    org_id TEXT NOT NULL,
    workspace TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (org_id, workspace, user_id)
);

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    schema_json TEXT NOT NULL,
    location TEXT NOT NULL,
    key_id TEXT NOT NULL,
    policy_json TEXT NOT NULL,
    -- 1: listed to every user of the deployment (so other orgs can propose joins); metadata only.
    shared BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT,
    UNIQUE (org_id, workspace, name)
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users (id),
    state TEXT NOT NULL,
    -- The encrypted job definition (base64): only an attested executor can open it.
    definition TEXT NOT NULL,
    recipients_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE job_datasets (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    PRIMARY KEY (job_id, dataset_id)
);

-- Every state change of every job, in order.
CREATE TABLE job_transitions (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    user_id TEXT NOT NULL REFERENCES users (id),
    org_id TEXT NOT NULL,
    role TEXT NOT NULL,
    at BIGINT NOT NULL,
    withdrawn_at BIGINT
);
CREATE INDEX approvals_by_job ON approvals (job_id);

CREATE TABLE notifications (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id),
    kind TEXT NOT NULL,
    job_id TEXT,
    body_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_by_user ON notifications (user_id, seq);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    url TEXT NOT NULL,
    -- The HMAC key the hub signs deliveries with (the receiver holds the same).
    secret TEXT NOT NULL,
    events_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id),
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending, delivered, failed (retries exhausted)
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_http_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);

-- The audit log: entry `idx` is leaf `idx` of the Merkle tree (RFC 6962 leaf hash, hex).
CREATE TABLE audit_entries (
    idx BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    leaf_hash TEXT NOT NULL,
    at BIGINT NOT NULL
);

-- Signed checkpoints (C2SP signed notes), with the KMS's co-signature once it has given it.
CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL,
    cosigned BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
