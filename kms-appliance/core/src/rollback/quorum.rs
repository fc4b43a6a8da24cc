//! The rollback defence of SEV-SNP and sim: other KMS processes *witness* this KMS's state
//! versions in their memory, and a KMS opens its state only once every witness listed in that
//! state says it saw nothing newer.
//!
//! SEV-SNP gives a guest no monotonic counter, and the host keeps every disk, so anything a
//! KMS writes to disk (its own or a peer's) the host can put back in an older copy. What the
//! host cannot put back is the memory of a running confidential VM. So the anchor is the memory
//! of other running KMS processes, and a witness is named by its **incarnation**: the SHA-256 of
//! the TLS key its attestation endpoint presents, which the process generates at start and its
//! evidence binds. A restarted witness is a new incarnation that remembers nothing, and cannot
//! pass for the old one.
//!
//! **The protocol.** A KMS has a random *instance* id, sealed into its state record. Each state
//! record also lists the witness sets `L` that vouch for it (one set, or two while the set
//! changes). Then:
//! - *Write:* commit version `v` durably; send `advance(instance, v, state hash)` to every
//!   witness of every set in `L(v)`; acknowledge the write only when **at least one** witness of
//!   **each** set recorded it ([`QuorumAnchor`]'s `committed`).
//! - *Open:* **every** witness of every set in `L(s)` must answer (its incarnation unchanged)
//!   and none may hold a version above `s` (rolled back) or `s` with another state (forked).
//! - *Changing the set:* a running KMS surveys its peers every few seconds
//!   ([`QuorumHandle::survey`]); when the reachable incarnations differ from its set (a peer
//!   restarted, joined or left) and every listed set still has a member that answers, it
//!   commits a state listing the old set *and* the new one, and lists only the new one from the
//!   commit after that write was witnessed by both.
//!
//! **Why this detects a rollback.** Say state `s` is opened while a later write `u > s` was
//! acknowledged. Sets leave `L` only after a write witnessed by them, so the first acknowledged
//! write after `s` was recorded by at least one witness of each set of `L(s)`; opening `s`
//! needs every witness of `L(s)` alive and unchanged, so that witness answers with a version
//! `≥ u > s`, and the open is refused, naming it. A host that restarts that witness to erase
//! its memory makes it a new incarnation, and the open is refused for that instead.
//!
//! **What it does not defend, by design or not yet:**
//! - A KMS whose witnesses all restarted while it was down cannot prove its state and refuses to
//!   start (fail closed): re-join it from a running replica (blank disk, `coffer run
//!   --kms-join`), which hands over the current state; if no replica runs, restore with the
//!   recovery officers. Restarting the *whole* group at once is such a case.
//! - A single KMS with no peer has no witness: rollback is not defended there, and it says so.
//! - Forks need two running copies of one state (a copy of the data disk started on the same
//!   chip and image, whose sealing key opens it). A witness that sees both refuses the second
//!   (`witness_fork`) and the survey stops a KMS that a witness shows to be behind; a host that
//!   also partitions the network so that no witness sees both copies is not stopped.
//! - A write committed but not yet witnessed can be rolled back; it was never acknowledged.
//! - A witness is trusted to be genuine, pinned KMS code (its evidence is checked against the
//!   kms pins of this KMS's manifest, under *any* manifest of the deployment, so witnesses keep
//!   working across a manifest change: [`coffer_mesh::Binding::AnyManifest`]); nothing it holds
//!   is secret, and whoever calls it proves nothing (a forged advance can only make a KMS
//!   refuse to start, which a host can cause anyway).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{AnchorError, VersionAnchor};

pub mod transport;

/// The witness route on the KMS's attestation endpoint.
pub const WITNESS_PATH: &str = "/.well-known/coffer/witness";
/// The most witnesses one set lists (a survey keeps the first by URL).
pub const MAX_WITNESSES: usize = 8;
/// The most witness sets one state lists (old and new while the set changes; more only while
/// commits go unwitnessed).
pub const MAX_SETS: usize = 4;
/// The most KMS instances one witness remembers.
pub const MAX_INSTANCES: usize = 1024;
/// The most peer URLs a witness remembers from callers' `reply_to`.
pub const MAX_REPORTERS: usize = 32;
/// The longest witness URL accepted.
pub const MAX_URL: usize = 200;

/// A KMS instance's id: random, sealed into its state record at its first commit.
pub type InstanceId = [u8; 16];
/// A witness process: SHA-256 of the TLS key its attestation endpoint presents.
pub type Incarnation = [u8; 32];

/// What a witness holds for one instance: the highest version it was told, and the hash of the
/// sealed state record of that version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The state version.
    pub version: u64,
    /// SHA-256 of the sealed state record.
    pub state: [u8; 32],
}

/// [`Held`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldWire {
    /// The state version.
    pub version: u64,
    /// SHA-256 of the sealed state record, hex.
    pub state: String,
}

impl From<Held> for HeldWire {
    fn from(held: Held) -> Self {
        Self {
            version: held.version,
            state: hex::encode(held.state),
        }
    }
}

impl HeldWire {
    fn parse(&self) -> Result<Held, String> {
        Ok(Held {
            version: self.version,
            state: hex32(&self.state, "state")?,
        })
    }
}

/// A request to a witness (JSON, `op` names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WitnessRequest {
    /// Record that `instance` committed `version` with this state.
    Advance {
        /// The instance, hex.
        instance: String,
        /// The version committed.
        version: u64,
        /// SHA-256 of its sealed state record, hex.
        state: String,
        /// Where the caller's own witness route is (`https://HOST:PORT`), so the witness can
        /// witness it in return. Untrusted: a wrong one is a peer that does not answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// What is held for `instance`?
    Query {
        /// The instance, hex.
        instance: String,
    },
}

/// A witness's answer (200: `held`; 409: `refused` names why the advance was not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessReply {
    /// What the witness holds for the instance (after the advance, if one was recorded).
    pub held: Option<HeldWire>,
    /// `witness_fork` or `witness_stale` when an advance was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl WitnessReply {
    /// What an answer with HTTP `status` states; anything else is an error naming it.
    pub fn outcome(&self, status: u16) -> Result<Outcome, String> {
        let held = self.held.as_ref().map(HeldWire::parse).transpose()?;
        match (status, self.refused.as_deref(), held) {
            (200, None, held) => Ok(Outcome::Held(held)),
            (409, Some("witness_fork"), Some(held)) => Ok(Outcome::Fork(held)),
            (409, Some("witness_stale"), Some(held)) => Ok(Outcome::Stale(held)),
            (code, refused, _) => Err(format!("unexpected answer {code} (refused: {refused:?})")),
        }
    }
}

/// One witness's answer as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The advance was recorded, or the query answered: what the witness holds.
    Held(Option<Held>),
    /// The witness holds this version with another state: two copies of the instance run.
    Fork(Held),
    /// The witness holds a newer version: the caller runs an older copy.
    Stale(Held),
}

fn hex32(text: &str, field: &str) -> Result<[u8; 32], String> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{field}: expected 32 bytes of hex"))
}

fn hex16(text: &str, field: &str) -> Result<[u8; 16], String> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{field}: expected 16 bytes of hex"))
}

/// Whether `url` is a plausible witness URL: `https://HOST:PORT`, short, no path.
pub fn valid_url(url: &str) -> bool {
    url.len() <= MAX_URL
        && url.strip_prefix("https://").is_some_and(|authority| {
            !authority.is_empty()
                && !authority.contains(['/', '?', '#', '@', ' '])
                && authority
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        })
}

/// The witness side: what this process holds for other KMS instances, in memory only (that is
/// the point: a restart forgets it, and is a new incarnation).
#[derive(Debug, Default)]
pub struct WitnessTable {
    held: Mutex<HashMap<InstanceId, Held>>,
    reporters: Mutex<BTreeSet<String>>,
}

impl WitnessTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `held` for `instance` if it is not older than what is held: a higher version
    /// replaces it, the same version with the same state is a repeat; the same version with
    /// another state is a fork and an older version is stale, and both are refused and leave
    /// what is held.
    pub fn advance(&self, instance: InstanceId, held: Held) -> Result<Outcome, String> {
        let mut table = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let len = table.len();
        match table.get_mut(&instance) {
            Some(old) if held.version < old.version => Ok(Outcome::Stale(*old)),
            Some(old) if held.version == old.version && held.state != old.state => {
                Ok(Outcome::Fork(*old))
            }
            Some(old) => {
                *old = held;
                Ok(Outcome::Held(Some(held)))
            }
            None if len >= MAX_INSTANCES => Err(format!(
                "this witness already holds {MAX_INSTANCES} instances"
            )),
            None => {
                table.insert(instance, held);
                Ok(Outcome::Held(Some(held)))
            }
        }
    }

    /// What is held for `instance`.
    pub fn query(&self, instance: &InstanceId) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(instance)
            .copied()
    }

    /// The witness URLs callers gave as `reply_to`.
    pub fn reporters(&self) -> Vec<String> {
        self.reporters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The witness route alone as an attestation-endpoint extension (the kms appliance serves
    /// it beside its other routes; tests and benchmarks serve only this).
    pub fn extension(self: &Arc<Self>) -> coffer_mesh::endpoint::Extension {
        let table = self.clone();
        Arc::new(move |method, path, body| {
            let table = table.clone();
            Box::pin(async move {
                (method == hyper::Method::POST && path == WITNESS_PATH)
                    .then(|| table.respond(&body))
            })
        })
    }

    /// [`WitnessTable::answer`] as the HTTP response the witness route sends.
    pub fn respond(
        &self,
        body: &[u8],
    ) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
        let (status, reply) = self.answer(body);
        let mut response = hyper::Response::new(http_body_util::Full::new(
            hyper::body::Bytes::from(reply.to_string()),
        ));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Answers one request body: the HTTP status and the JSON reply. Never panics; a malformed
    /// body is 400 with the field named.
    pub fn answer(&self, body: &[u8]) -> (u16, serde_json::Value) {
        let bad = |message: String| {
            (
                400,
                serde_json::json!({"error": {"code": "invalid_witness_request", "message": message}}),
            )
        };
        let request: WitnessRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => return bad(format!("body: {e}")),
        };
        let reply = |held: Option<Held>, refused: Option<&str>| {
            serde_json::to_value(WitnessReply {
                held: held.map(HeldWire::from),
                refused: refused.map(str::to_owned),
            })
            .unwrap_or_default()
        };
        match request {
            WitnessRequest::Query { instance } => match hex16(&instance, "instance") {
                Ok(instance) => (200, reply(self.query(&instance), None)),
                Err(e) => bad(e),
            },
            WitnessRequest::Advance {
                instance,
                version,
                state,
                reply_to,
            } => {
                let instance = match hex16(&instance, "instance") {
                    Ok(instance) => instance,
                    Err(e) => return bad(e),
                };
                let state = match hex32(&state, "state") {
                    Ok(state) => state,
                    Err(e) => return bad(e),
                };
                if let Some(url) = reply_to {
                    if !valid_url(&url) {
                        return bad(format!(
                            "reply_to: expected https://HOST:PORT (at most {MAX_URL} bytes)"
                        ));
                    }
                    let mut reporters = self
                        .reporters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if reporters.len() < MAX_REPORTERS {
                        reporters.insert(url);
                    }
                }
                match self.advance(instance, Held { version, state }) {
                    Ok(Outcome::Held(held)) => (200, reply(held, None)),
                    Ok(Outcome::Fork(held)) => (409, reply(Some(held), Some("witness_fork"))),
                    Ok(Outcome::Stale(held)) => (409, reply(Some(held), Some("witness_stale"))),
                    Err(e) => (
                        503,
                        serde_json::json!({"error": {"code": "witness_full", "message": e}}),
                    ),
                }
            }
        }
    }
}

/// How a KMS reaches witnesses: sends one request to each URL (concurrently where it can) and
/// returns, per URL in order, the witness's incarnation and its answer, or why there is none.
pub trait WitnessTransport: Send + Sync {
    /// Sends `request` to every URL.
    fn call_all(
        &self,
        urls: &[String],
        request: &WitnessRequest,
    ) -> Vec<Result<(Incarnation, Outcome), String>>;
}

/// One witness of a set, as sealed into the state record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    /// Its URL when it was listed (a hint: the incarnation is what is checked).
    pub url: String,
    /// Its incarnation, hex.
    pub incarnation: String,
}

/// What the anchor seals into each state record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorData {
    instance: String,
    sets: Vec<Vec<Witness>>,
}

#[derive(Debug)]
struct Inner {
    instance: InstanceId,
    /// The sets listed in the current state.
    sets: Vec<Vec<Witness>>,
    /// Whether the current state was witnessed by each of its sets.
    witnessed: bool,
    /// The sets of the commit in progress (from [`VersionAnchor::state_data`]).
    staged: Option<Vec<Vec<Witness>>>,
    /// A new set found by a survey, to list from the next commit.
    proposed: Option<Vec<Witness>>,
    version: u64,
    state: [u8; 32],
    peers: BTreeSet<String>,
    self_url: Option<String>,
    /// The last finding worth naming (which witness held what).
    finding: String,
    /// Why this KMS must stop serving, once a witness showed it is behind or forked.
    halted: Option<String>,
    /// The instance is a store shared by replicas ([`QuorumAnchor::shared`]).
    shared: bool,
}

impl Inner {
    /// The sets the next commit lists.
    fn next_sets(&self) -> Vec<Vec<Witness>> {
        let mut next = if self.witnessed {
            self.sets.last().cloned().into_iter().collect()
        } else {
            self.sets.clone()
        };
        // A set leaves only after a write it witnessed (the module doc's argument), so while
        // commits go unwitnessed the list can only grow: it stops growing at MAX_SETS.
        if let Some(proposed) = &self.proposed {
            if next.last() != Some(proposed) && next.len() < MAX_SETS {
                next.push(proposed.clone());
            }
        }
        next
    }
}

/// The quorum anchor (see the module doc). Shares its state with its [`QuorumHandle`].
pub struct QuorumAnchor {
    inner: Arc<Mutex<Inner>>,
    transport: Arc<dyn WitnessTransport>,
    open_wait: Duration,
}

/// What a [`QuorumHandle::survey`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Survey {
    /// Nothing to do.
    Unchanged,
    /// The listed witnesses should change: commit an empty change
    /// ([`crate::Kms::advance_state`]) so the next state lists them.
    NewSet,
    /// A shared store's witness holds a newer version: another replica wrote. Sync the store
    /// ([`crate::Kms::sync`]), then [`QuorumHandle::synced`].
    Behind {
        /// The newest version a witness holds.
        version: u64,
        /// That witness's URL.
        witness: String,
    },
}

/// The running KMS's side of the anchor: surveys peers without holding the KMS, and says when
/// a commit is needed to list a new witness set or when the KMS must stop.
#[derive(Clone)]
pub struct QuorumHandle {
    inner: Arc<Mutex<Inner>>,
    transport: Arc<dyn WitnessTransport>,
}

impl std::fmt::Debug for QuorumAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumAnchor").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for QuorumHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumHandle").finish_non_exhaustive()
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // Every field is written whole under the lock: a poisoned lock holds a consistent value.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl QuorumAnchor {
    /// An anchor reaching witnesses through `transport`. `peers` are witness URLs to survey
    /// (untrusted hints); `self_url` is this KMS's own witness URL, sent as `reply_to` so peers
    /// witness it in return. At open, listed witnesses that do not answer are asked again for
    /// up to a minute (peers may be booting) before the open is refused.
    pub fn new(
        transport: Arc<dyn WitnessTransport>,
        peers: impl IntoIterator<Item = String>,
        self_url: Option<String>,
    ) -> Result<(Self, QuorumHandle), AnchorError> {
        let mut instance = [0u8; 16];
        crate::crypto::random(&mut instance).map_err(|e| AnchorError::Backend {
            anchor: "witness quorum".into(),
            op: "drawing an instance id",
            reason: format!("{e:?}"),
        })?;
        // A malformed own URL would make every witness refuse our advances: leave it out.
        let self_url = self_url.filter(|url| valid_url(url));
        let peers: BTreeSet<String> = peers
            .into_iter()
            .filter(|p| valid_url(p) && Some(p) != self_url.as_ref())
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            instance,
            sets: Vec::new(),
            witnessed: true,
            staged: None,
            proposed: None,
            version: 0,
            state: [0; 32],
            peers,
            self_url,
            finding: String::new(),
            halted: None,
            shared: false,
        }));
        let handle = QuorumHandle {
            inner: inner.clone(),
            transport: transport.clone(),
        };
        Ok((
            Self {
                inner,
                transport,
                open_wait: Duration::from_secs(60),
            },
            handle,
        ))
    }

    /// The anchor of a store that several replicas write ([`crate::store::Location::Postgres`]):
    /// the replicas witness each other's writes *and their own*, so every replica surveys the
    /// same reachable set (itself included) and lists the same witnesses; a witness that holds a
    /// newer version is another replica's write, which the survey reports
    /// ([`Survey::Behind`]) instead of stopping the KMS. The open does not wait for witnesses
    /// itself: the store reads the state again while it waits, since other replicas change the
    /// listed set meanwhile (a restarted replica is a new incarnation that they list).
    pub fn shared(mut self) -> Self {
        lock(&self.inner).shared = true;
        self.open_wait = Duration::ZERO;
        self
    }

    /// How long an open waits for listed witnesses to answer (a minute by default).
    pub fn with_open_wait(mut self, wait: Duration) -> Self {
        self.open_wait = wait;
        self
    }

    fn refused(reason: String) -> AnchorError {
        AnchorError::Refused {
            anchor: "witness quorum".into(),
            reason,
        }
    }
}

/// Every URL the sets list, once each.
fn urls_of(sets: &[Vec<Witness>]) -> Vec<String> {
    let urls: BTreeSet<&String> = sets.iter().flatten().map(|w| &w.url).collect();
    urls.into_iter().cloned().collect()
}

/// Why a KMS must stop: `who` holds a newer version of it than its own.
fn behind(who: &str, held: u64, ours: u64) -> String {
    format!(
        "behind: witness {who} holds version {held} of this KMS, newer than its {ours}: another copy of this state runs, or this one was rolled back"
    )
}

/// Why a KMS must stop: `who` holds its version `version` with another state.
fn forked(who: &str, version: u64) -> String {
    format!(
        "forked: witness {who} holds version {version} with another state: another copy of this KMS's state ran"
    )
}

/// Names a witness for messages: its URL and the start of its incarnation.
fn name(witness: &Witness) -> String {
    format!(
        "{} (incarnation {})",
        witness.url,
        witness
            .incarnation
            .get(..12)
            .unwrap_or(&witness.incarnation)
    )
}

/// Matches each listed witness with its answer (by URL, then incarnation).
fn answers_of<'a>(
    sets: &'a [Vec<Witness>],
    urls: &[String],
    results: Vec<Result<(Incarnation, Outcome), String>>,
) -> BTreeMap<&'a Witness, Result<Outcome, String>> {
    let by_url: HashMap<&String, Result<(Incarnation, Outcome), String>> =
        urls.iter().zip(results).collect();
    let mut out = BTreeMap::new();
    for witness in sets.iter().flatten() {
        let answer = match by_url.get(&witness.url) {
            Some(Ok((incarnation, outcome))) if hex::encode(incarnation) == witness.incarnation => {
                Ok(outcome.clone())
            }
            Some(Ok((incarnation, _))) => Err(format!(
                "answers as another process (incarnation {}): the witness restarted and remembers nothing",
                hex::encode(&incarnation[..6])
            )),
            Some(Err(e)) => Err(e.clone()),
            None => Err("not asked".into()),
        };
        out.insert(witness, answer);
    }
    out
}

impl VersionAnchor for QuorumAnchor {
    fn describe(&self) -> String {
        let inner = lock(&self.inner);
        let listed = match inner.sets.as_slice() {
            [] => "no witness yet: rollback is not defended until a peer KMS witnesses this one"
                .to_owned(),
            sets => format!(
                "witness quorum, opening needs every one of {}",
                sets.iter()
                    .flatten()
                    .map(name)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if inner.finding.is_empty() {
            listed
        } else {
            format!("{listed}; {}", inner.finding)
        }
    }

    fn load_state(
        &mut self,
        version: u64,
        state: &[u8; 32],
        data: &[u8],
    ) -> Result<(), AnchorError> {
        let mut inner = lock(&self.inner);
        inner.version = version;
        inner.state = *state;
        inner.witnessed = false;
        if data.is_empty() {
            // A store written before it had witnesses: it keeps the instance drawn at start.
            inner.sets.clear();
            return Ok(());
        }
        let parsed: AnchorData = serde_json::from_slice(data)
            .map_err(|e| Self::refused(format!("the state record's witness list: {e}")))?;
        inner.instance = hex16(&parsed.instance, "instance").map_err(Self::refused)?;
        inner.sets = parsed.sets;
        Ok(())
    }

    fn read(&mut self) -> Result<Option<u64>, AnchorError> {
        let (sets, instance, version, state) = {
            let inner = lock(&self.inner);
            (
                inner.sets.clone(),
                inner.instance,
                inner.version,
                inner.state,
            )
        };
        if sets.is_empty() {
            return Ok(None);
        }
        let urls = urls_of(&sets);
        let request = WitnessRequest::Query {
            instance: hex::encode(instance),
        };
        let started = Instant::now();
        loop {
            let answers = answers_of(&sets, &urls, self.transport.call_all(&urls, &request));
            let missing: Vec<String> = answers
                .iter()
                .filter_map(|(w, a)| a.as_ref().err().map(|e| format!("{}: {e}", name(w))))
                .collect();
            if missing.is_empty() {
                let mut newest: Option<(&Witness, Held)> = None;
                for (witness, answer) in &answers {
                    let Ok(Outcome::Held(Some(held))) = answer else {
                        continue;
                    };
                    if held.version == version && held.state != state {
                        return Err(Self::refused(forked(&name(witness), version)));
                    }
                    if newest.is_none_or(|(_, n)| held.version > n.version) {
                        newest = Some((witness, *held));
                    }
                }
                let mut inner = lock(&self.inner);
                inner.finding = match newest {
                    Some((w, held)) => {
                        format!("witness {} holds version {}", name(w), held.version)
                    }
                    None => "no witness holds a version yet".into(),
                };
                return Ok(newest.map(|(_, held)| held.version));
            }
            if started.elapsed() >= self.open_wait {
                return Err(AnchorError::Unanswered {
                    anchor: "witness quorum".into(),
                    reason: format!(
                    "cannot prove this state is the newest: every listed witness must answer, and {} did not ({}); re-join this KMS from a running replica, or restore it with the recovery officers",
                    missing.len(),
                    missing.join("; ")
                    ),
                });
            }
            tracing::warn!(missing = %missing.join("; "), "rollback witnesses: waiting for every listed witness");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn advance_to(&mut self, version: u64) -> Result<u64, AnchorError> {
        // Only a new store comes here (before its first commit): it lists no witness yet.
        if lock(&self.inner).sets.is_empty() {
            Ok(version)
        } else {
            Err(Self::refused(
                "a version with witnesses needs its state (committed)".into(),
            ))
        }
    }

    fn state_data(&mut self) -> Vec<u8> {
        let mut inner = lock(&self.inner);
        let sets = inner.next_sets();
        inner.staged = Some(sets.clone());
        serde_json::to_vec(&AnchorData {
            instance: hex::encode(inner.instance),
            sets,
        })
        .unwrap_or_default()
    }

    fn committed(&mut self, version: u64, state: &[u8; 32]) -> Result<u64, AnchorError> {
        let (sets, urls, request) = {
            let mut inner = lock(&self.inner);
            if let Some(reason) = &inner.halted {
                return Err(Self::refused(reason.clone()));
            }
            if let Some(staged) = inner.staged.take() {
                inner.sets = staged;
            }
            inner.version = version;
            inner.state = *state;
            inner.witnessed = false;
            let request = WitnessRequest::Advance {
                instance: hex::encode(inner.instance),
                version,
                state: hex::encode(state),
                reply_to: inner.self_url.clone(),
            };
            (inner.sets.clone(), urls_of(&inner.sets), request)
        };
        if sets.is_empty() {
            lock(&self.inner).witnessed = true;
            return Ok(version);
        }
        let answers = answers_of(&sets, &urls, self.transport.call_all(&urls, &request));
        for (witness, answer) in &answers {
            let halt = match answer {
                Ok(Outcome::Fork(held)) => forked(&name(witness), held.version),
                Ok(Outcome::Stale(held)) => behind(&name(witness), held.version, version),
                _ => continue,
            };
            lock(&self.inner).halted = Some(halt.clone());
            return Err(Self::refused(halt));
        }
        let mut unwitnessed = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let acked = set
                .iter()
                .any(|w| matches!(answers.get(w), Some(Ok(Outcome::Held(_)))));
            if !acked {
                let why: Vec<String> = set
                    .iter()
                    .map(|w| match answers.get(w) {
                        Some(Err(e)) => format!("{}: {e}", name(w)),
                        _ => name(w),
                    })
                    .collect();
                unwitnessed.push(format!("set {}: {}", i + 1, why.join("; ")));
            }
        }
        if !unwitnessed.is_empty() {
            return Err(Self::refused(format!(
                "version {version} is committed but no witness of {} recorded it, so it is not acknowledged: {}",
                if unwitnessed.len() == 1 { "one set" } else { "several sets" },
                unwitnessed.join(" | ")
            )));
        }
        let mut inner = lock(&self.inner);
        inner.witnessed = true;
        if inner.proposed.as_ref() == inner.sets.last() {
            inner.proposed = None;
        }
        Ok(version)
    }
}

impl QuorumHandle {
    /// Asks every known peer what it holds for this KMS (without holding the KMS). Stops the
    /// KMS (returns the reason, and every later commit fails) when a witness holds the same
    /// version with another state, or a newer version of a KMS that is its store's only writer;
    /// a newer version of a shared store is reported ([`Survey::Behind`]). Otherwise says
    /// whether the caller should commit an empty change ([`crate::Kms::advance_state`]): the
    /// reachable witnesses differ from the listed set, or the state still lists a set it no
    /// longer needs.
    pub fn survey(&self, reporters: &[String]) -> Result<Survey, String> {
        let (urls, request) = {
            let mut inner = lock(&self.inner);
            if let Some(reason) = &inner.halted {
                return Err(reason.clone());
            }
            let self_url = inner.self_url.clone();
            for url in reporters {
                if valid_url(url) && Some(url) != self_url.as_ref() {
                    inner.peers.insert(url.clone());
                }
            }
            let mut urls: BTreeSet<String> = inner.peers.clone();
            urls.extend(urls_of(&inner.sets));
            if inner.shared {
                urls.extend(self_url);
            }
            let request = WitnessRequest::Query {
                instance: hex::encode(inner.instance),
            };
            (urls.into_iter().collect::<Vec<_>>(), request)
        };
        if urls.is_empty() {
            return Ok(Survey::Unchanged);
        }
        let results = self.transport.call_all(&urls, &request);
        let mut inner = lock(&self.inner);
        let mut reachable = Vec::new();
        let mut newest = None;
        for (url, result) in urls.iter().zip(results) {
            let Ok((incarnation, outcome)) = result else {
                continue;
            };
            if let Outcome::Held(Some(held)) = outcome {
                let halt = if held.version > inner.version && !inner.shared {
                    Some(behind(url, held.version, inner.version))
                } else if held.version == inner.version && held.state != inner.state {
                    Some(forked(url, held.version))
                } else {
                    None
                };
                if let Some(halt) = halt {
                    inner.halted = Some(halt.clone());
                    return Err(halt);
                }
                if held.version > inner.version
                    && newest.as_ref().is_none_or(|(v, _)| held.version > *v)
                {
                    newest = Some((held.version, url.clone()));
                }
            }
            reachable.push(Witness {
                url: url.clone(),
                incarnation: hex::encode(incarnation),
            });
        }
        if let Some((version, witness)) = newest {
            return Ok(Survey::Behind { version, witness });
        }
        reachable.truncate(MAX_WITNESSES);
        if reachable.is_empty() || inner.sets.last() == Some(&reachable) {
            // A set change is complete once a write listing both was witnessed: one more
            // commit drops the old set, which could never open the state again if its members
            // restarted.
            return Ok(if inner.witnessed && inner.sets.len() > 1 {
                Survey::NewSet
            } else {
                Survey::Unchanged
            });
        }
        // Propose only while every listed set can witness the change (one of its members
        // answers): a set proposed meanwhile could die before any write is witnessed, and sets
        // leave the list only after a witnessed write, so it would block writes for good.
        let witnessable = inner
            .sets
            .iter()
            .all(|set| set.iter().any(|w| reachable.contains(w)));
        if !witnessable {
            return Ok(Survey::Unchanged);
        }
        inner.proposed = Some(reachable);
        Ok(Survey::NewSet)
    }

    /// After [`Survey::Behind`] and a sync of the shared store ([`crate::Kms::sync`]): stops the
    /// KMS if the store still holds no state as new as the `version` that `witness` holds (the
    /// store was rolled back under it, or a copy of it runs).
    pub fn synced(&self, version: u64, witness: &str) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        if inner.version >= version {
            return Ok(());
        }
        let halt = behind(witness, version, inner.version);
        inner.halted = Some(halt.clone());
        Err(halt)
    }

    /// Why the KMS must stop, if a witness showed it is behind or forked.
    pub fn halted(&self) -> Option<String> {
        lock(&self.inner).halted.clone()
    }

    /// This KMS's instance id, hex.
    pub fn instance(&self) -> String {
        hex::encode(lock(&self.inner).instance)
    }

    /// The witnesses listed in the current state.
    pub fn witnesses(&self) -> Vec<Vec<Witness>> {
        lock(&self.inner).sets.clone()
    }
}
