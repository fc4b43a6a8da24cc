//! The control plane (the "hub"): who the people are, what data exists, which jobs may run,
//! who was told, and a tamper-evident record of all of it. It runs as an ordinary host process
//! (or container) beside the appliances and is multi-tenant.
//!
//! **Owns:** orgs, users, workspaces and role memberships; sessions; the dataset registry
//! (names, schemas, locations, key ids; never data); jobs (an encrypted definition it cannot
//! read, the datasets they read, their recipients) and their workflow; approvals; notifications
//! (inbox, server-sent events, signed webhooks); the audit log (an RFC 6962 Merkle tree with
//! signed C2SP checkpoints); and the signing keys of the credentials the KMS checks (identity
//! tokens and job grants).
//!
//! **Trusts:** its database and its host, for *availability* and for metadata only. The
//! platform's security does not rest on the hub: it never sees plaintext or keys, the KMS
//! recounts every approval in a job grant against each dataset's policy, and anyone can check
//! the audit log offline against checkpoints the KMS co-signed (`coffer audit verify`).
//!
//! **Checks:** every request's caller (session, service account) and role before acting;
//! passwords with argon2id and a per-account failure limit; OIDC ID tokens against the issuer's
//! keys; every job transition against the state machine ([`workflow`]); every input's shape,
//! with an error naming what was wrong ([`error::ApiError`]).
//!
//! Writes go through one [`state::Writer`] at a time: the action, its audit entry and its
//! notifications commit in one database transaction or not at all.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod keys;
pub mod notify;
pub mod openapi;
pub mod state;
pub mod workflow;

pub use config::HubConfig;
pub use state::{Hub, Writer};

/// Starts the hub's background work: webhook deliveries, audit checkpoints (co-signed by the
/// KMS when the hub has a KMS link) and the collection of the KMS's decisions.
pub fn spawn_workers(hub: &std::sync::Arc<Hub>) {
    notify::spawn_worker(hub.clone());
    audit::spawn_checkpointer(hub.clone());
    audit::kms_journal::spawn_collector(hub.clone());
}
