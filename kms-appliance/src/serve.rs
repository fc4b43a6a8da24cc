//! `kms-serve`: the key management service of the kms image.
//!
//! Opens the KMS state on the data disk (sealed under this guest's platform key; refused if
//! tampered, rolled back or sealed by another image), builds the authorizer from the deployment
//! manifest's `kms.authz`, and serves [`KmsApi`] over the attested mesh to the roles given with
//! `--accept`, plus the attestation endpoint for people. Every decision goes to the audit
//! journal (and the console) before anything is released; the control plane collects the
//! journal into its audit log ([`coffer_kms::api::journal`]). The journal is kept on the data
//! disk, beside the state but outside it, and flushed every half second: a crash loses at most
//! that much, and what the previous process left uncollected is carried over at start.
//!
//! A blank data disk with a join hint (`coffer run --kms-join`, see
//! [`coffer_types::JOIN_HINT_OFFSET`]) makes this KMS a replica or the upgraded image of an
//! existing one: it attests to that KMS over the mesh and receives its root key and state
//! ([`coffer_kms::kms::replica`](coffer_kms::Snapshot)) instead of generating a root key.
//!
//! A blank data disk under a manifest whose `kms.recovery.restore` names a split makes it a
//! **restoring** KMS: it waits for the recovery officers' shares on its attestation endpoint
//! ([`crate::recovery`]) and starts from the root key they restore (checked against the
//! commitment in the manifest). With recovery officers in the manifest, a KMS splits its root
//! key once and publishes the kit there.
//!
//! The rollback anchor is the witness quorum ([`coffer_kms::rollback::quorum`]): peer KMSs named
//! by the launcher's peer hint ([`coffer_types::PEER_HINT_OFFSET`], `coffer run --kms-peer`) or
//! learnt from peers that ask this one to witness them. The state opens only if every witness it
//! lists vouches for it; a survey every two seconds lists new witnesses, and stops this process
//! if a witness shows it is behind or forked. This process is itself a witness of its peers, on
//! its attestation endpoint.
//!
//! Fails (and, being critical, fail-stops the VM after its restarts) rather than serve from a
//! state it cannot verify.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use coffer_appliance::mesh::ServeArgs;
use coffer_evidence::EvidenceProvider;
use coffer_kms::api::journal::{DEFAULT_CAPACITY, FLUSH_INTERVAL};
use coffer_kms::api::AuditJournal;
use coffer_kms::api::REPLICA_SNAPSHOT_PATH;
use coffer_kms::rollback::quorum::transport::EndpointTransport;
use coffer_kms::rollback::quorum::{QuorumAnchor, QuorumHandle, Survey, WitnessTable};
use coffer_kms::rollback::Unanchored;
use coffer_kms::store::{Location, SealingKey, Store};
use coffer_kms::{Authorizer, AuthzConfig, Kms, KmsApi, Snapshot};
use coffer_mesh::http::MeshClient;
use coffer_mesh::{MeshError, MeshNode};
use coffer_types::{Role, DATA_DISK_RUNTIME_PATH};
use zeroize::Zeroize;

/// The attestation endpoint's claim naming the KMS's audit-checkpoint verifier key (C2SP
/// `name+id+key`).
pub const AUDIT_SIGNER_CLAIM: &str = "audit_signer";

/// `kms-serve`: the arguments of `mesh-serve`.
#[derive(Debug, Parser)]
#[command(name = "kms-serve")]
pub struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeCli {
    /// The arguments.
    pub fn args(&self) -> &ServeArgs {
        &self.args
    }
}

/// Runs `kms-serve`.
pub fn main(args: &ServeArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("kms-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &ServeArgs) -> Result<ExitCode, String> {
    let Some(node) = coffer_appliance::mesh::node(Role::Kms)? else {
        return Ok(coffer_appliance::mesh::idle());
    };
    let deployment = node.trust().deployment();
    let config = match &deployment.kms {
        Some(settings) => serde_json::from_value::<AuthzConfig>(settings.authz.clone())
            .map_err(|e| format!("deployment manifest field kms.authz: {e}"))?,
        None => {
            tracing::warn!(
                "the deployment manifest has no kms section: no issuer is trusted, every request will be denied"
            );
            AuthzConfig::new(Vec::new())
        }
    };
    let issuers = config.issuers.len();
    let authorizer =
        Authorizer::new(config).map_err(|e| format!("deployment manifest field kms.authz: {e}"))?;
    let disk = std::path::Path::new(DATA_DISK_RUNTIME_PATH);
    if !disk.exists() {
        return Err(format!(
            "no data disk ({DATA_DISK_RUNTIME_PATH} is missing): the kms image keeps its state on one; `coffer run` attaches it"
        ));
    }
    // Two worker threads, unlike the other applets' single thread: the attestation endpoint
    // must answer while the main thread opens the state, because its witness route is asked by
    // peers opening theirs, and, for a shared store, by this KMS itself.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The endpoint for people comes up first: while restoring, officers submit shares there.
    let recovery_state = crate::routes::Shared::default();
    let witness = Arc::new(WitnessTable::new());
    if let Some(endpoint) = &args.endpoint {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(endpoint))
            .map_err(|e| format!("{endpoint}: {e}"))?;
        tracing::info!(listen = %endpoint, "attestation endpoint: listening");
        rt.spawn(coffer_mesh::endpoint::serve_endpoint_with(
            node.clone(),
            listener,
            Some(crate::routes::extension(
                recovery_state.clone(),
                witness.clone(),
            )),
        ));
    }
    // SEV-SNP and sim give a guest no monotonic counter: the rollback anchor is the memory of
    // peer KMS processes (coffer_kms::rollback::quorum), named by the launcher's peer hint and
    // learnt from peers that ask this one to witness them.
    let peer_hint = coffer_types::read_peer_hint(disk)
        .map_err(|e| format!("{DATA_DISK_RUNTIME_PATH}: peer hint: {e}"))?
        .unwrap_or_default();
    let transport = EndpointTransport::new(node.trust().clone())
        .map_err(|e| format!("rollback witnesses: {e}"))?;
    let (anchor, quorum) = QuorumAnchor::new(
        Arc::new(transport),
        peer_hint.peers.clone(),
        peer_hint.self_url.clone(),
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        own = peer_hint.self_url.as_deref().unwrap_or("none"),
        peers = %peer_hint.peers.join(","),
        "rollback witnesses: peers to ask"
    );
    // Replicas of a deployment whose manifest says so keep their state in one database; the
    // launcher names it. The manifest decides, so the host cannot switch a KMS between the two.
    let shared = shared_store(deployment, &peer_hint)?;
    let anchor = Box::new(if shared.is_some() {
        anchor.shared()
    } else {
        anchor
    });
    let location = Location::Disk(disk.to_owned());
    let hint = coffer_types::read_join_hint(disk)
        .map_err(|e| format!("{DATA_DISK_RUNTIME_PATH}: join hint: {e}"))?;
    let restore = crate::routes::restore_info(deployment).transpose()?;
    // Opening verifies every record: done once more only when a join or restore may apply.
    let blank = (hint.is_some() || restore.is_some())
        && holds_no_state(&location, node.provider().as_ref())?;
    let sealing = || SealingKey::from_platform(node.provider().as_ref()).map_err(|e| e.to_string());
    let mut kms = match (hint, restore) {
        (Some(address), _) if blank => {
            let snapshot = rt.block_on(fetch_snapshot(&node, &address))?;
            let kms = match &shared {
                Some(store) => {
                    Kms::join_shared(location, sealing()?, store.clone(), anchor, &snapshot)
                }
                None => Kms::join(location, sealing()?, anchor, &snapshot),
            }
            .map_err(|e| format!("joining {address}: {e}"))?;
            tracing::info!(
                %address,
                records = snapshot.records(),
                "joined the KMS: root key and state received over the attested mesh, sealed to this image"
            );
            kms
        }
        (None, Some(info)) if blank => {
            if args.endpoint.is_none() {
                return Err("restoring needs the attestation endpoint (--endpoint) for the officers' shares".into());
            }
            let restored = rt.block_on(async {
                let done = crate::routes::begin(&recovery_state, &node, info).await?;
                done.await.map_err(|_| {
                    "the recovery session failed (see above); starting over".to_owned()
                })
            })?;
            let kms = match &shared {
                Some(store) => {
                    if restored.backup.is_some() {
                        tracing::warn!("a backup was submitted, but this KMS's state is in the shared store: the backup is not used");
                    }
                    Kms::restore_shared(location, sealing()?, store.clone(), anchor, &restored.root)
                }
                None => Kms::restore(
                    location,
                    sealing()?,
                    anchor,
                    &restored.root,
                    restored.backup.as_deref(),
                ),
            }
            .map_err(|e| format!("restoring: {e}"))?;
            tracing::info!(
                backup = restored.backup.is_some(),
                orgs = kms.org_keys().count(),
                "root key restored from the recovery officers' shares, sealed to this image"
            );
            kms
        }
        _ => match &shared {
            Some(store) => Kms::open_shared(location, sealing()?, store.clone(), anchor),
            None => Kms::open(location, node.provider().as_ref(), anchor),
        }
        .map_err(|e| format!("refusing to serve: {e}"))?,
    };
    // List the peers that answer now as this state's witnesses before serving anything.
    match quorum.survey(&witness.reporters()) {
        Ok(Survey::NewSet) => {
            kms.advance_state()
                .map_err(|e| format!("rollback witnesses: {e}"))?;
        }
        Ok(Survey::Unchanged) => {}
        Ok(Survey::Behind { version, witness }) => {
            kms.sync().map_err(|e| format!("refusing to serve: {e}"))?;
            quorum
                .synced(version, &witness)
                .map_err(|halt| format!("refusing to serve: {halt}"))?;
        }
        Err(halt) => return Err(format!("refusing to serve: {halt}")),
    }
    if quorum.witnesses().is_empty() {
        tracing::warn!(anchor = %kms.anchor(), "rollback anchor: no witness, a host replaying an old copy of the data disk is not detected");
    } else {
        tracing::info!(anchor = %kms.anchor(), instance = %quorum.instance(), "rollback anchor: witnessed");
    }
    // Every way above opened the state as `Kms::open` does: every record checked.
    tracing::info!(
        state_version = kms.state_version(),
        orgs = kms.org_keys().count(),
        issuers,
        "kms state opened and verified"
    );
    // The audit-signer key (derived from the root key, so every replica has it) is stated on the
    // attestation endpoint and bound into that evidence: a verifier learns that only this
    // attested KMS image can have co-signed a checkpoint.
    let origin = deployment.audit_log_origin();
    let vkey = kms
        .audit_signer_vkey(&origin)
        .map_err(|e| format!("audit signer: {e}"))?;
    tracing::info!(%vkey, "audit checkpoint signer");
    node.set_claims(BTreeMap::from([(AUDIT_SIGNER_CLAIM.to_owned(), vkey)]));
    let mut kit_json = None;
    if let Some(policy) = deployment.kms.as_ref().and_then(|k| k.recovery.as_ref()) {
        let kit = kms
            .recovery_kit(policy, &deployment.deployment_id)
            .map_err(|e| format!("recovery kit: {e}"))?;
        tracing::info!(
            split = %hex::encode(kit.info.split_id),
            commitment = %hex::encode(kit.info.commitment),
            threshold = kit.info.threshold,
            officers = kit.info.officers.len(),
            "recovery kit ready at {}",
            crate::routes::KIT_PATH
        );
        kit_json = Some(serde_json::to_string(&kit).map_err(|e| format!("recovery kit: {e}"))?);
    }
    // Every decision is journaled (and logged) until the control plane collects it; the journal
    // is on the data disk, and what the previous process left uncollected comes first.
    let journal_store = kms
        .journal_store()
        .map_err(|e| format!("audit journal: {e}"))?;
    let (journal, replay) = AuditJournal::durable(journal_store, DEFAULT_CAPACITY)
        .map_err(|e| format!("refusing to serve without the audit journal: {e}"))?;
    let journal = Arc::new(journal);
    tracing::info!(
        journal = journal.id(),
        previous = %replay.previous.join(","),
        replayed = replay.replayed,
        tampered = replay.tampered,
        missing = replay.missing,
        "audit journal started"
    );
    rt.spawn(journal.flusher(FLUSH_INTERVAL));
    let api = Arc::new(KmsApi::with_journal(kms, authorizer, journal.clone()));
    rt.spawn(survey_witnesses(quorum, witness, api.clone()));
    if shared.is_some() {
        rt.spawn(sync_shared_store(api.clone()));
    }
    rt.block_on(crate::routes::serving(
        &recovery_state,
        kit_json,
        api.clone(),
        origin,
    ));
    let served = rt
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;
            tracing::info!(listen = %args.listen, accept = ?args.accept, "kms-serve: listening");
            coffer_mesh::http::serve(node, listener, args.accept.clone(), api.handler(), None).await
        })
        .map_err(|e| e.to_string());
    // Whatever ended serving, what was recorded since the last flush goes to the disk too.
    if let Err(e) = journal.flush() {
        tracing::error!(error = %e, "audit journal: last flush failed");
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The shared store named by the launcher, if the manifest keeps the KMS state in one; an
/// error if only one of the two says so.
fn shared_store(
    deployment: &coffer_types::Deployment,
    hint: &coffer_types::PeerHint,
) -> Result<Option<Location>, String> {
    let wanted = deployment.kms.as_ref().is_some_and(|k| k.shared_store);
    match (&hint.store, wanted) {
        (Some(url), true) => {
            let store = Location::Postgres(url.clone());
            tracing::info!(store = %store.describe(), "kms state: the replicas' shared store");
            Ok(Some(store))
        }
        (None, false) => Ok(None),
        (None, true) => Err("the deployment manifest keeps the KMS state in a shared store (kms.shared_store), but the launcher named none: `coffer run --kms-store URL`".into()),
        (Some(_), false) => Err("the launcher names a shared store (--kms-store), but the deployment manifest keeps the KMS state on each KMS's data disk: refusing to choose".into()),
    }
}

/// How often a replica of a shared store takes in what the others wrote, at the latest: so a
/// key destroyed or a version retired at one replica stops unwrapping at the others within
/// this time.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every [`SYNC_INTERVAL`]: takes in the other replicas' writes ([`Kms::sync`]).
async fn sync_shared_store(api: Arc<KmsApi>) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tick.tick().await;
        let mut kms = api.kms().clone().lock_owned().await;
        match tokio::task::spawn_blocking(move || kms.sync()).await {
            Ok(Ok(_)) => {}
            // The database is unreachable or failed: the next tick tries again.
            Ok(Err(e @ coffer_kms::KmsError::Store(coffer_kms::StoreError::Db { .. }))) => {
                tracing::warn!(error = %e, "shared store: cannot take in other replicas' writes")
            }
            // Rolled back, tampered with, or not what was committed: stop, as at open.
            Ok(Err(e)) => {
                tracing::error!(error = %e, "shared store: refusing to serve from it; stopping");
                stop(&api);
            }
            Err(e) => tracing::error!(error = %e, "shared store: sync task failed"),
        }
    }
}

/// Stops the process (the init restarts it) after a last flush of the audit journal.
fn stop(api: &KmsApi) -> ! {
    if let Some(Err(e)) = api.journal().map(|j| j.flush()) {
        tracing::error!(error = %e, "audit journal: last flush failed");
    }
    std::process::exit(1);
}

/// How often the running KMS asks its peers what they hold for it.
const SURVEY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Every [`SURVEY_INTERVAL`]: asks the peers what they hold for this KMS; lists a changed set of
/// witnesses in the state (an empty commit); stops the process when a witness shows this KMS is
/// behind or forked (the init restarts it, and the open then refuses the state by name).
async fn survey_witnesses(quorum: QuorumHandle, witness: Arc<WitnessTable>, api: Arc<KmsApi>) {
    let mut tick = tokio::time::interval(SURVEY_INTERVAL);
    loop {
        tick.tick().await;
        let (handle, reporters) = (quorum.clone(), witness.reporters());
        match tokio::task::spawn_blocking(move || handle.survey(&reporters)).await {
            Ok(Ok(Survey::Unchanged)) => {}
            Ok(Ok(Survey::Behind { version, witness })) => {
                // Another replica of a shared store wrote: take it in, then the store must be
                // at least as new as what the witness holds.
                let mut kms = api.kms().clone().lock_owned().await;
                let synced = tokio::task::spawn_blocking(move || kms.sync()).await;
                match synced {
                    Ok(Ok(_)) => {
                        if let Err(halt) = quorum.synced(version, &witness) {
                            tracing::error!(%halt, "rollback witnesses: this KMS must not serve; stopping");
                            stop(&api);
                        }
                    }
                    // Unreachable store: the next survey asks again.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "shared store: cannot take in other replicas' writes yet")
                    }
                    Err(e) => tracing::error!(error = %e, "shared store: sync task failed"),
                }
            }
            Ok(Ok(Survey::NewSet)) => {
                let mut kms = api.kms().clone().lock_owned().await;
                let done = tokio::task::spawn_blocking(move || {
                    kms.advance_state().map(|version| (version, kms.anchor()))
                })
                .await;
                match done {
                    Ok(Ok((version, anchor))) => {
                        tracing::info!(state_version = version, %anchor, "rollback witnesses: new set listed");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "rollback witnesses: cannot list the new set yet")
                    }
                    Err(e) => tracing::error!(error = %e, "rollback witnesses: task failed"),
                }
            }
            Ok(Err(halt)) => {
                tracing::error!(%halt, "rollback witnesses: this KMS must not serve; stopping");
                stop(&api);
            }
            Err(e) => tracing::error!(error = %e, "rollback witnesses: survey task failed"),
        }
    }
}

/// Whether the store at `location` holds nothing yet (a blank disk, or a join or restore that
/// crashed before its one commit): then a join hint or a restore is followed. A store with
/// records never is.
fn holds_no_state(location: &Location, platform: &dyn EvidenceProvider) -> Result<bool, String> {
    let sealing = SealingKey::from_platform(platform).map_err(|e| e.to_string())?;
    Store::open(
        location.clone(),
        sealing,
        Box::new(Unanchored::accepting_rollback()),
    )
    .and_then(|store| store.is_empty())
    .map_err(|e| format!("refusing to serve: {e}"))
}

/// Attests to the KMS at `address` (it must be a pinned kms of this deployment, as the mesh
/// checks) and asks for its root key and state. Retries while it is not reachable yet (a
/// minute); an attestation refusal either way ends the attempt at once.
async fn fetch_snapshot(node: &MeshNode, address: &str) -> Result<Snapshot, String> {
    let mut attempt = 0;
    let mut client = loop {
        match MeshClient::connect(node, address, Role::Kms).await {
            Ok(client) => break client,
            Err(
                e @ (MeshError::Io(_)
                | MeshError::Timeout(_)
                | MeshError::Busy(_)
                | MeshError::Tls(_)),
            ) if attempt < 60 => {
                tracing::warn!(%address, error = %e, reason = e.name(), "join: the KMS is not reachable yet");
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(format!(
                    "join: cannot attest to the KMS at {address} ({}): {e}",
                    e.name()
                ))
            }
        }
    };
    tracing::info!(%address, peer = %client.peer(), "join: attested the KMS");
    let request = hyper::Request::post(REPLICA_SNAPSHOT_PATH)
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client
        .send(request)
        .await
        .map_err(|e| format!("join: {address}: {e}"))?;
    let status = response.status();
    let body = response.into_body();
    if !status.is_success() {
        return Err(format!(
            "join: the KMS at {address} refused: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let snapshot = Snapshot::from_json(&body).map_err(|e| format!("join: {e}"));
    // The body held the root key: wipe it if nothing else shares the buffer.
    if let Ok(mut owned) = body.try_into_mut() {
        owned.as_mut().zeroize();
    }
    snapshot
}
