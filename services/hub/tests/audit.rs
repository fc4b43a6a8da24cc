//! The audit log over HTTP: entries recorded for actions and refusals, signed checkpoints,
//! inclusion and consistency proofs, exports and bundles that verify offline (and fail when
//! tampered with), who may read which entries, range errors, the background checkpointer, and
//! tamper evidence at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding as _};
use coffer_hub::{Hub, HubConfig};
use coffer_tlog::bundle::{verify_bundle, verify_log, LogExport, ProofBundle};
use coffer_tlog::merkle::{
    leaf_hash, tree_hash, verify_consistency, verify_inclusion, Hash, MemoryTree,
};
use coffer_tlog::{Checkpoint, TrustedKeys, VerifierKey};
use common::TestHub;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

const ORIGIN: &str = "coffer/test/audit";

/// A checkpoint as `GET /v1/audit/checkpoint` answers it, with its note verified.
struct Signed {
    size: u64,
    root: Hash,
    note: String,
    vkey: VerifierKey,
    checkpoint: Checkpoint,
}

fn hash(v: &Value) -> Hash {
    Base64::decode_vec(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hash).collect()
}

fn trusted(vkey: &VerifierKey) -> TrustedKeys {
    TrustedKeys::new([vkey.clone()]).unwrap()
}

/// Verifies a checkpoint note with `vkey`; returns the checkpoint.
fn open_checkpoint(note: &str, vkey: &VerifierKey) -> Checkpoint {
    let verified = coffer_tlog::note::open(note.as_bytes(), &trusted(vkey)).unwrap();
    Checkpoint::from_note(&verified).unwrap()
}

async fn checkpoint(t: &TestHub, token: &str) -> Signed {
    let v = t
        .ok(200, "GET", "/v1/audit/checkpoint", Some(token), None)
        .await;
    let vkey = VerifierKey::parse(v["verifier_key"].as_str().unwrap()).unwrap();
    let note = v["note"].as_str().unwrap().to_owned();
    let checkpoint = open_checkpoint(&note, &vkey);
    Signed {
        size: v["size"].as_u64().unwrap(),
        root: hash(&v["root"]),
        note,
        vkey,
        checkpoint,
    }
}

/// Entries `start..end` as `token` sees them: (index, entry text).
async fn entries(t: &TestHub, token: &str, start: u64, end: u64) -> Vec<(u64, String)> {
    let v = t
        .ok(
            200,
            "GET",
            &format!("/v1/audit/entries?start={start}&end={end}"),
            Some(token),
            None,
        )
        .await;
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["entry"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn parsed(entry: &str) -> Value {
    serde_json::from_str(entry).unwrap()
}

/// `GET path` as raw bytes (exports and bundles are verified from their exact bytes).
async fn get_bytes(t: &TestHub, path: &str, token: &str) -> (StatusCode, Vec<u8>) {
    let resp = t
        .http
        .get(format!("{}{path}", t.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

fn assert_error(value: &Value, code: &str, mentions: &[&str]) {
    assert_eq!(value["error"]["code"], code, "{value}");
    let message = value["error"]["message"].as_str().unwrap();
    for m in mentions {
        assert!(message.contains(m), "{message:?} should mention {m:?}");
    }
}

/// A hub with orgs `a` and `b` (workspace `w` each), auditor `audra` of `a`, analyst `ann` of
/// `a`, owner `otto` of `b`. Returns the admin's, audra's, ann's and otto's sessions.
async fn two_orgs(t: &TestHub) -> (String, String, String, String) {
    let admin = t.admin().await;
    t.org(&admin, "a", "w").await;
    t.org(&admin, "b", "w").await;
    let audra = t.user(&admin, "audra").await;
    let ann = t.user(&admin, "ann").await;
    let otto = t.user(&admin, "otto").await;
    t.member(&admin, "a", "audra", &["auditor"], &[]).await;
    t.member(&admin, "a", "ann", &["analyst"], &["w"]).await;
    t.member(&admin, "b", "otto", &["owner"], &[]).await;
    (admin, audra, ann, otto)
}

#[tokio::test]
async fn actions_and_refusals_are_recorded_in_order() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let alice = t.user(&admin, "alice").await;
    t.member(&admin, "acme", "alice", &["analyst"], &["ws"])
        .await;
    t.ok(
        200,
        "POST",
        "/v1/tokens/identity",
        Some(&alice),
        Some(json!({"org": "acme", "workspace": "ws"})),
    )
    .await;
    let (status, _) = t
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "not-her-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let size = t.hub.audit.size();
    let all = entries(&t, &admin, 0, size).await;
    assert_eq!(all.len() as u64, size);
    for (i, (index, entry)) in all.iter().enumerate() {
        assert_eq!(*index, i as u64);
        assert_eq!(parsed(entry)["idx"], i as u64, "{entry}");
    }
    let find = |action: &str, outcome: &str| {
        all.iter()
            .map(|(_, e)| parsed(e))
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} entry in {all:?}"))
    };
    assert_eq!(find("user.bootstrap_admin", "ok")["actor"], "hub");
    assert_eq!(find("auth.login", "ok")["actor"], "user:admin");
    assert_eq!(find("org.create", "ok")["org"], "acme");
    assert_eq!(find("workspace.create", "ok")["target"], "ws");
    assert_eq!(find("user.create", "ok")["actor"], "user:admin");
    assert_eq!(find("member.set", "ok")["target"], "alice");
    assert_eq!(find("token.identity", "ok")["actor"], "user:alice");
    let denied = find("auth.login", "denied");
    assert_eq!(denied["actor"], "anonymous:alice");
    assert_eq!(denied["detail"]["reason"], "invalid_credentials");
    // The refusal is the last entry, stored exactly in the documented form.
    let (_, last) = all.last().unwrap();
    assert!(last.contains(r#""outcome":"denied""#), "{last}");
    assert!(
        last.starts_with(&format!(r#"{{"v":1,"idx":{}"#, size - 1)),
        "{last}"
    );

    // Reads are not recorded; without `start`/`end` the route answers from 0.
    let v = t
        .ok(200, "GET", "/v1/audit/entries", Some(&admin), None)
        .await;
    assert_eq!(v["entries"].as_array().unwrap().len() as u64, size);
    assert_eq!(
        (v["start"].as_u64(), v["end"].as_u64()),
        (Some(0), Some(size))
    );
    assert_eq!(t.hub.audit.size(), size);
}

#[tokio::test]
async fn the_checkpoint_is_signed_and_its_root_is_the_tree_of_the_entries() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let c = checkpoint(&t, &admin).await;
    assert_eq!(c.vkey, t.hub.keys.audit_signer().verifier_key());
    assert_eq!(c.checkpoint.origin(), ORIGIN);
    assert_eq!(c.checkpoint.size(), c.size);
    assert_eq!(*c.checkpoint.root(), c.root);
    assert_eq!(c.size, t.hub.audit.size());

    let all = entries(&t, &admin, 0, c.size).await;
    let tree = MemoryTree::from_leaf_hashes(all.iter().map(|(_, e)| leaf_hash(e.as_bytes())));
    assert_eq!(tree_hash(&tree, c.size).unwrap(), c.root);

    // Signing the same size again gives the stored note; one row per size.
    assert_eq!(
        coffer_hub::audit::checkpoint_now(&t.hub).await.unwrap(),
        c.note
    );
    assert_eq!(checkpoint(&t, &admin).await.note, c.note);
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_checkpoints WHERE size = $1")
        .bind(c.size as i64)
        .fetch_one(&t.hub.db)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(rows, 1);

    // The signature covers the text: another size under the same signature is refused.
    let forged = c.note.replacen(
        &format!("\n{}\n", c.size),
        &format!("\n{}\n", c.size + 1),
        1,
    );
    assert_ne!(forged, c.note);
    assert!(coffer_tlog::note::open(forged.as_bytes(), &trusted(&c.vkey)).is_err());

    // Any signed-in user may read it; nobody else.
    let bob = t.user(&admin, "bob").await;
    let seen = checkpoint(&t, &bob).await;
    assert!(seen.size > c.size, "bob's creation and login grew the log");
    let (status, v) = t.call("GET", "/v1/audit/checkpoint", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_verify() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let first = checkpoint(&t, &admin).await;
    let bob = t.user(&admin, "bob").await;
    t.org(&admin, "other", "ws").await;
    let second = checkpoint(&t, &bob).await;
    assert!(second.size > first.size);

    let all = entries(&t, &admin, 0, second.size).await;
    for (index, entry) in &all {
        let v = t
            .ok(
                200,
                "GET",
                &format!(
                    "/v1/audit/proof/inclusion?index={index}&size={}",
                    second.size
                ),
                Some(&bob),
                None,
            )
            .await;
        let leaf = leaf_hash(entry.as_bytes());
        assert_eq!(hash(&v["leaf_hash"]), leaf);
        assert_eq!(v["index"], *index);
        assert_eq!(v["size"], second.size);
        verify_inclusion(
            *index,
            second.size,
            &leaf,
            &hashes(&v["proof"]),
            &second.root,
        )
        .unwrap();
    }
    // An entry of the first checkpoint is in it too.
    let v = t
        .ok(
            200,
            "GET",
            &format!("/v1/audit/proof/inclusion?index=1&size={}", first.size),
            Some(&bob),
            None,
        )
        .await;
    verify_inclusion(
        1,
        first.size,
        &leaf_hash(all[1].1.as_bytes()),
        &hashes(&v["proof"]),
        &first.root,
    )
    .unwrap();

    let v = t
        .ok(
            200,
            "GET",
            &format!(
                "/v1/audit/proof/consistency?from={}&to={}",
                first.size, second.size
            ),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (v["from"].as_u64(), v["to"].as_u64()),
        (Some(first.size), Some(second.size))
    );
    let proof = hashes(&v["proof"]);
    verify_consistency(first.size, second.size, &first.root, &second.root, &proof).unwrap();
    // The same proof does not join the second tree to a different first root.
    assert!(verify_consistency(first.size, second.size, &[7; 32], &second.root, &proof).is_err());
    let v = t
        .ok(
            200,
            "GET",
            &format!("/v1/audit/proof/consistency?from={0}&to={0}", second.size),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(v["proof"], json!([]));
}

#[tokio::test]
async fn the_export_verifies_offline_and_tampering_with_it_is_reported() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    let first = checkpoint(&t, &admin).await;
    t.user(&admin, "bob").await;

    let (status, bytes) = get_bytes(&t, "/v1/audit/export", &admin).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let export = LogExport::parse(&bytes).unwrap();
    assert_eq!(export.origin(), ORIGIN);
    let vkey = first.vkey.clone();
    let report = verify_log(
        &export,
        &trusted(&vkey),
        std::slice::from_ref(&vkey),
        std::slice::from_ref(&first.checkpoint),
    )
    .unwrap();
    let size = t.hub.audit.size();
    assert_eq!(report.entries, size);
    assert_eq!(
        report.newest.size(),
        size,
        "the export signs the current size"
    );
    assert_eq!(report.beyond_newest, 0);
    assert!(report.checkpoints >= 2, "{report:?}");
    assert_eq!(report.previous, 1);

    let notes: Vec<Vec<u8>> = export
        .checkpoints()
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    // A modified entry.
    let mut modified = export.entries().to_vec();
    let text = String::from_utf8(modified[1].clone()).unwrap();
    assert!(text.contains(r#""outcome":"ok""#), "{text}");
    modified[1] = text
        .replace(r#""outcome":"ok""#, r#""outcome":"denied""#)
        .into_bytes();
    let tampered = LogExport::new(ORIGIN, modified, &notes).unwrap();
    let err = verify_log(&tampered, &trusted(&vkey), std::slice::from_ref(&vkey), &[]).unwrap_err();
    assert_eq!(err.code(), "modified-entry", "{err}");
    // A dropped last entry.
    let mut truncated = export.entries().to_vec();
    truncated.pop();
    let tampered = LogExport::new(ORIGIN, truncated, &notes).unwrap();
    let err = verify_log(&tampered, &trusted(&vkey), std::slice::from_ref(&vkey), &[]).unwrap_err();
    assert_eq!(err.code(), "truncated", "{err}");
    // Another key is not the hub's.
    let other =
        coffer_tlog::note::NoteSigner::ed25519_from_seed(ORIGIN, zeroize::Zeroizing::new([9; 32]))
            .unwrap()
            .verifier_key();
    let err = verify_log(&export, &trusted(&other), std::slice::from_ref(&other), &[]).unwrap_err();
    assert_eq!(err.code(), "checkpoint-signature", "{err}");
}

#[tokio::test]
async fn a_bundle_verifies_offline_with_consistency_from_earlier_checkpoints() {
    let t = TestHub::new().await;
    let (admin, audra, _, _) = two_orgs(&t).await;
    let first = checkpoint(&t, &admin).await;
    t.member(&admin, "a", "ann", &["analyst", "approver"], &["w"])
        .await;
    let later = first.size; // the member.set just recorded
    let all = entries(&t, &admin, 0, t.hub.audit.size()).await;
    assert_eq!(parsed(&all[later as usize].1)["action"], "member.set");

    let (status, bytes) = get_bytes(
        &t,
        &format!("/v1/audit/bundle?indices=1,2,{later}&from={}", first.size),
        &admin,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let bundle = ProofBundle::parse(&bytes).unwrap();
    let vkey = first.vkey.clone();
    let report = verify_bundle(
        &bundle,
        &trusted(&vkey),
        std::slice::from_ref(&vkey),
        std::slice::from_ref(&first.checkpoint),
    )
    .unwrap();
    assert_eq!(report.entries, 3);
    assert!(report.checkpoints >= 2, "{report:?}");
    let indices: Vec<u64> = bundle.entries.iter().map(|e| e.index).collect();
    assert_eq!(indices, [1, 2, later]);
    for e in &bundle.entries {
        assert_eq!(e.entry, all[e.index as usize].1.as_bytes());
    }
    // Without the consistency proof from the checkpoint trusted before, it is unproven.
    let mut without = bundle.clone();
    without.consistency.retain(|c| c.old_size != first.size);
    let err = verify_bundle(
        &without,
        &trusted(&vkey),
        std::slice::from_ref(&vkey),
        std::slice::from_ref(&first.checkpoint),
    )
    .unwrap_err();
    assert_eq!(err.code(), "no-consistency-proof", "{err}");

    // A modified entry is reported.
    let mut tampered = bundle.clone();
    tampered.entries[0].entry = String::from_utf8(tampered.entries[0].entry.clone())
        .unwrap()
        .replace(r#""outcome":"ok""#, r#""outcome":"denied""#)
        .into_bytes();
    let err =
        verify_bundle(&tampered, &trusted(&vkey), std::slice::from_ref(&vkey), &[]).unwrap_err();
    assert_eq!(err.code(), "modified-entry", "{err}");

    // An org auditor gets a bundle of their org's entries, not of another org's.
    let own = all.iter().find(|(_, e)| parsed(e)["org"] == "a").unwrap().0;
    let foreign = all.iter().find(|(_, e)| parsed(e)["org"] == "b").unwrap().0;
    let (status, bytes) = get_bytes(&t, &format!("/v1/audit/bundle?indices={own}"), &audra).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let bundle = ProofBundle::parse(&bytes).unwrap();
    verify_bundle(&bundle, &trusted(&vkey), std::slice::from_ref(&vkey), &[]).unwrap();
    let (status, v) = t
        .call(
            "GET",
            &format!("/v1/audit/bundle?indices={own},{foreign}"),
            Some(&audra),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&v, "forbidden", &[&format!("entry {foreign} "), "audra"]);
}

#[tokio::test]
async fn org_auditors_and_owners_see_only_their_orgs_entries_and_analysts_none() {
    let t = TestHub::new().await;
    let (admin, audra, ann, otto) = two_orgs(&t).await;
    let size = t.hub.audit.size();
    let all = entries(&t, &admin, 0, size).await;
    let of_org = |org: &str| -> Vec<(u64, String)> {
        all.iter()
            .filter(|(_, e)| parsed(e)["org"] == org)
            .cloned()
            .collect()
    };
    assert!(of_org("a").len() >= 4 && !of_org("b").is_empty());

    // Indices are kept: they are the log's.
    assert_eq!(entries(&t, &audra, 0, size).await, of_org("a"));
    assert_eq!(entries(&t, &otto, 0, size).await, of_org("b"));
    let actions: Vec<Value> = entries(&t, &audra, 0, size)
        .await
        .iter()
        .map(|(_, e)| parsed(e)["action"].clone())
        .collect();
    assert!(actions.contains(&json!("org.create")), "{actions:?}");
    assert!(actions.contains(&json!("member.set")), "{actions:?}");

    for (who, token) in [("ann", &ann), ("audra", &audra), ("otto", &otto)] {
        let (status, v) = t.call("GET", "/v1/audit/export", Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {v}");
    }
    let (status, v) = t.call("GET", "/v1/audit/entries", Some(&ann), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&v, "forbidden", &["ann", "auditor"]);
    let (status, v) = t
        .call("GET", "/v1/audit/bundle?indices=0", Some(&ann), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // Hashes only: an analyst may have the checkpoint and proofs.
    let c = checkpoint(&t, &ann).await;
    t.ok(
        200,
        "GET",
        &format!("/v1/audit/proof/inclusion?index=0&size={}", c.size),
        Some(&ann),
        None,
    )
    .await;
}

#[tokio::test]
async fn bad_ranges_and_indices_are_refused_with_their_numbers() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    let size = t.hub.audit.size();
    let beyond = size + 5;
    let cases: Vec<(String, &str, Vec<String>)> = vec![
        (
            "/v1/audit/entries?start=2&end=1".into(),
            "invalid_range",
            vec!["end 1".into(), "start 2".into()],
        ),
        (
            "/v1/audit/entries?start=0&end=1001".into(),
            "invalid_range",
            vec!["0..1001".into(), "1000".into()],
        ),
        (
            format!("/v1/audit/entries?start=0&end={beyond}"),
            "invalid_range",
            vec![format!("end {beyond}"), format!("{size} entries")],
        ),
        (
            format!("/v1/audit/entries?start={beyond}"),
            "invalid_range",
            vec![format!("start {beyond}")],
        ),
        ("/v1/audit/entries?start=x".into(), "invalid_query", vec![]),
        ("/v1/audit/entries?begin=0".into(), "invalid_query", vec![]),
        (
            format!("/v1/audit/proof/inclusion?index={size}&size={size}"),
            "index_out_of_range",
            vec![format!("index {size}"), format!("{size} entries")],
        ),
        (
            format!("/v1/audit/proof/inclusion?index=0&size={beyond}"),
            "size_beyond_log",
            vec![format!("size {beyond}"), format!("{size} entries")],
        ),
        (
            "/v1/audit/proof/inclusion?index=0".into(),
            "invalid_query",
            vec!["size".into()],
        ),
        (
            "/v1/audit/proof/consistency?from=2&to=1".into(),
            "sizes_out_of_order",
            vec!["from 2".into(), "to 1".into()],
        ),
        (
            format!("/v1/audit/proof/consistency?from=1&to={beyond}"),
            "size_beyond_log",
            vec![format!("to {beyond}")],
        ),
        (
            "/v1/audit/bundle?indices=1,x".into(),
            "invalid_indices",
            vec!["\"x\"".into()],
        ),
        (
            "/v1/audit/bundle?indices=".into(),
            "invalid_indices",
            vec![],
        ),
        (
            format!("/v1/audit/bundle?indices=0,{beyond}"),
            "index_out_of_range",
            vec![format!("index {beyond}")],
        ),
        (
            "/v1/audit/bundle?indices=0&from=1".into(),
            "unknown_checkpoint",
            vec!["size 1".into()],
        ),
    ];
    // The checkpointer may have signed size 1 at start-up; no checkpoint of size 1 is stored.
    assert!(size > 1);
    sqlx::query("DELETE FROM audit_checkpoints WHERE size = 1")
        .execute(&t.hub.db)
        .await
        .unwrap();
    for (path, code, mentions) in cases {
        let (status, v) = t.call("GET", &path, Some(&admin), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        let mentions: Vec<&str> = mentions.iter().map(String::as_str).collect();
        assert_error(&v, code, &mentions);
    }
}

/// Waits up to 10 s for a stored checkpoint of at least `size` entries; returns its note.
async fn stored_checkpoint_covering(t: &TestHub, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = sqlx::query(
            "SELECT size, note FROM audit_checkpoints WHERE size >= $1 ORDER BY size LIMIT 1",
        )
        .bind(size as i64)
        .fetch_optional(&t.hub.db)
        .await
        .unwrap();
        if let Some(row) = row {
            return row.try_get("note").unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size} entries was signed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_checkpointer_signs_new_entries_by_itself() {
    let t = TestHub::new().await;
    let admin = t.admin().await;
    let vkey = t.hub.keys.audit_signer().verifier_key();
    let size = t.hub.audit.size();
    stored_checkpoint_covering(&t, size).await;
    t.org(&admin, "acme", "ws").await;
    let grown = t.hub.audit.size();
    assert!(grown > size);
    let note = stored_checkpoint_covering(&t, grown).await;
    let c = open_checkpoint(&note, &vkey);
    assert_eq!(c.size(), grown);
    let tree = MemoryTree::from_leaf_hashes(
        entries(&t, &admin, 0, grown)
            .await
            .iter()
            .map(|(_, e)| leaf_hash(e.as_bytes())),
    );
    assert_eq!(*c.root(), tree.root());
}

#[tokio::test]
async fn a_modified_or_deleted_entry_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = HubConfig {
        database_url: format!("sqlite://{}", dir.path().join("hub.db").display()),
        state_dir: dir.path().join("state"),
        issuer: "https://hub.test".into(),
        audit_origin: ORIGIN.into(),
        oidc: Vec::new(),
        kms: None,
    };
    let t = TestHub::start_with(dir, config.clone()).await;
    let admin = t.admin().await;
    t.org(&admin, "acme", "ws").await;
    t.user(&admin, "bob").await;
    let size = t.hub.audit.size();
    assert!(size >= 6);
    coffer_hub::audit::checkpoint_now(&t.hub).await.unwrap();
    // One hub per database: stop this one first (its directory keeps the database).
    let _dir = t.stop().await;
    // Untouched, it opens again.
    let again = Hub::open(config.clone()).await.unwrap();
    assert_eq!(again.audit.size(), size);
    drop(again);

    // Tampering goes through a plain connection, not a hub.
    let pool = coffer_hub::db::connect(&config.database_url).await.unwrap();
    let db = &pool;
    let row = |idx: u64| async move {
        let r = sqlx::query("SELECT body, leaf_hash, at FROM audit_entries WHERE idx = $1")
            .bind(idx as i64)
            .fetch_one(db)
            .await
            .unwrap();
        let body: String = r.try_get("body").unwrap();
        let leaf: String = r.try_get("leaf_hash").unwrap();
        let at: i64 = r.try_get("at").unwrap();
        (body, leaf, at)
    };
    let set = |idx: u64, body: String, leaf: String| async move {
        sqlx::query("UPDATE audit_entries SET body = $1, leaf_hash = $2 WHERE idx = $3")
            .bind(body)
            .bind(leaf)
            .bind(idx as i64)
            .execute(db)
            .await
            .unwrap();
    };
    let refused = || async { Hub::open(config.clone()).await.unwrap_err().to_string() };

    // A modified body: its stored leaf hash no longer matches.
    let (body, leaf, _) = row(2).await;
    assert!(body.contains("org.create"), "{body}");
    let forged = body.replace("org.create", "org.delete");
    set(2, forged.clone(), leaf.clone()).await;
    let err = refused().await;
    assert!(err.contains("audit log entry 2 was modified"), "{err}");
    // A modified body with a recomputed leaf hash: the signed checkpoint's root no longer matches.
    set(2, forged.clone(), hex::encode(leaf_hash(forged.as_bytes()))).await;
    let err = refused().await;
    assert!(
        err.contains(&format!(
            "the stored audit checkpoint of size {size} has root"
        )),
        "{err}"
    );
    set(2, body, leaf).await;
    Hub::open(config.clone()).await.unwrap();

    // The last entry deleted: no gap, but the checkpoint covers it.
    let last = size - 1;
    let (body, leaf, at) = row(last).await;
    sqlx::query("DELETE FROM audit_entries WHERE idx = $1")
        .bind(last as i64)
        .execute(db)
        .await
        .unwrap();
    let err = refused().await;
    assert!(
        err.contains(&format!(
            "a checkpoint of {size} entries was signed, the database holds {last}"
        )),
        "{err}"
    );
    sqlx::query("INSERT INTO audit_entries (idx, body, leaf_hash, at) VALUES ($1, $2, $3, $4)")
        .bind(last as i64)
        .bind(body)
        .bind(leaf)
        .bind(at)
        .execute(db)
        .await
        .unwrap();
    Hub::open(config.clone()).await.unwrap();

    // An entry in the middle deleted: a gap.
    sqlx::query("DELETE FROM audit_entries WHERE idx = 3")
        .execute(db)
        .await
        .unwrap();
    let err = refused().await;
    assert!(
        err.contains("audit log entry 3 is missing (found entry 4 in its place)"),
        "{err}"
    );
}
