//! The witness quorum, the rollback defence of SEV-SNP and sim (`coffer_kms::rollback::quorum`),
//! on real stores: witnesses are in-process [`WitnessTable`]s on a simulated network that the
//! test restarts and cuts, so each rule of the protocol is exercised by name. The same protocol
//! over real attested endpoints is in `quorum_endpoint.rs`; in VMs in `tests/tests/kms.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_kms::rollback::quorum::{QuorumAnchor, QuorumHandle, Survey, WitnessTable};
use coffer_kms::{Kms, KmsError, OrgId, StoreError};
use common::witnesses::Net;

const A: &str = "https://10.0.2.2:9001";
const B: &str = "https://10.0.2.2:9002";
const C: &str = "https://10.0.2.2:9003";

fn acme() -> OrgId {
    OrgId::new("acme").unwrap()
}

/// Opens the KMS at `path` as `A`, with `peers` to survey; a short wait at open.
fn open(net: &Net, path: &Path, peers: &[&str]) -> Result<(Kms, QuorumHandle), KmsError> {
    open_as(net, path, A, peers)
}

/// Opens the KMS at `path` as the replica whose witness URL is `me`.
fn open_as(
    net: &Net,
    path: &Path,
    me: &str,
    peers: &[&str],
) -> Result<(Kms, QuorumHandle), KmsError> {
    let (anchor, handle) = QuorumAnchor::new(
        Arc::new(net.clone()),
        peers.iter().map(|p| (*p).to_owned()),
        Some(me.to_owned()),
    )
    .unwrap();
    let anchor = anchor.with_open_wait(Duration::from_millis(200));
    let kms = Kms::open(path, &common::platform(), Box::new(anchor))?;
    Ok((kms, handle))
}

/// Surveys and, when the witnesses changed, commits so the state lists them.
fn settle(kms: &mut Kms, handle: &QuorumHandle) {
    if handle.survey(&[]).unwrap() == Survey::NewSet {
        kms.advance_state().unwrap();
    }
}

fn write(kms: &mut Kms, keys: usize) {
    if kms.org_key(&acme()).is_none() {
        kms.create_org_key(&acme()).unwrap();
    }
    for _ in 0..keys {
        kms.generate_data_key(&acme()).unwrap();
    }
}

fn refusal(result: Result<(Kms, QuorumHandle), KmsError>) -> KmsError {
    match result {
        Ok(_) => panic!("the state opened"),
        Err(e) => e,
    }
}

#[test]
fn an_older_copy_of_the_store_is_refused_by_the_witness_that_saw_the_newer_one() {
    let net = Net::default();
    net.start(B);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[B]).unwrap();
    assert!(kms.anchor().contains("no witness yet"), "{}", kms.anchor());
    settle(&mut kms, &handle);
    assert_eq!(handle.witnesses().len(), 1);
    write(&mut kms, 3);
    let old = kms.state_version();
    drop(kms);
    std::fs::copy(&path, dir.path().join("aside.redb")).unwrap();

    let (mut kms, handle) = open(&net, &path, &[B]).unwrap();
    write(&mut kms, 2);
    let new = kms.state_version();
    let instance: [u8; 16] = hex::decode(handle.instance()).unwrap().try_into().unwrap();
    assert_eq!(net.table(B).query(&instance).unwrap().version, new);
    drop(kms);
    std::fs::copy(&path, dir.path().join("newest.redb")).unwrap();

    std::fs::copy(dir.path().join("aside.redb"), &path).unwrap();
    let err = refusal(open(&net, &path, &[B]));
    match &err {
        KmsError::Store(StoreError::RolledBack { state, anchor, .. }) => {
            assert_eq!((*state, *anchor), (old, new));
        }
        other => panic!("expected a rollback refusal, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("state version {old} < anchor {new}"))
            && message.contains(&format!("witness {B}"))
            && message.contains(&format!("holds version {new}")),
        "{message}"
    );

    // The newest copy still opens: the refusal changed nothing.
    std::fs::copy(dir.path().join("newest.redb"), &path).unwrap();
    assert_eq!(open(&net, &path, &[B]).unwrap().0.state_version(), new);
}

#[test]
fn the_newest_state_opens_and_a_commit_never_witnessed_is_caught_up_at_open() {
    let net = Net::default();
    net.start(B);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[B]).unwrap();
    settle(&mut kms, &handle);
    write(&mut kms, 2);
    // B cannot be reached: the commit is durable but not acknowledged.
    net.cut(B, true);
    let err = kms.generate_data_key(&acme()).unwrap_err().to_string();
    assert!(
        err.contains("is committed but no witness of one set recorded it")
            && err.contains("connection refused"),
        "{err}"
    );
    let committed = kms.state_version();
    drop(kms);
    net.cut(B, false);
    // Reopening finds B behind by that one commit (fresh: it was never acknowledged), and
    // brings B up to date.
    let (kms, handle) = open(&net, &path, &[B]).unwrap();
    assert_eq!(kms.state_version(), committed);
    let instance: [u8; 16] = hex::decode(handle.instance()).unwrap().try_into().unwrap();
    assert_eq!(net.table(B).query(&instance).unwrap().version, committed);
}

#[test]
fn a_witness_that_restarted_while_the_kms_was_down_cannot_vouch_for_it() {
    let net = Net::default();
    net.start(B);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[B]).unwrap();
    settle(&mut kms, &handle);
    write(&mut kms, 1);
    drop(kms);
    net.start(B); // a new incarnation, which remembers nothing
    let err = refusal(open(&net, &path, &[B])).to_string();
    assert!(
        err.contains("cannot prove this state is the newest")
            && err.contains("answers as another process")
            && err.contains(B)
            && err.contains("re-join this KMS from a running replica"),
        "{err}"
    );
    // Unreachable is refused the same way.
    net.cut(B, true);
    let err = refusal(open(&net, &path, &[B])).to_string();
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn a_running_kms_lists_a_restarted_witness_and_older_states_stay_refused() {
    let net = Net::default();
    net.start(B);
    net.start(C);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[B, C]).unwrap();
    settle(&mut kms, &handle);
    assert_eq!(handle.witnesses(), vec![handle.witnesses()[0].clone()]);
    assert_eq!(handle.witnesses()[0].len(), 2);
    write(&mut kms, 2);
    drop(kms);
    // A copy listing the first incarnations of B and C.
    std::fs::copy(&path, dir.path().join("first.redb")).unwrap();

    let (mut kms, handle) = open(&net, &path, &[B, C]).unwrap();
    // B restarts while the KMS runs: the survey sees it, the next state lists both sets, and the
    // one after that only the new one.
    net.start(B);
    settle(&mut kms, &handle);
    assert_eq!(
        handle.witnesses().len(),
        2,
        "old and new set while changing"
    );
    write(&mut kms, 1);
    assert_eq!(
        handle.witnesses().len(),
        1,
        "only the new set once witnessed"
    );
    let newest = kms.state_version();
    drop(kms);

    // The newest state opens with B's new incarnation.
    let (kms, _) = open(&net, &path, &[B, C]).unwrap();
    assert_eq!(kms.state_version(), newest);
    drop(kms);
    std::fs::copy(&path, dir.path().join("newest.redb")).unwrap();

    // The first copy lists B's old incarnation, which is gone: refused.
    std::fs::copy(dir.path().join("first.redb"), &path).unwrap();
    let err = refusal(open(&net, &path, &[B, C])).to_string();
    assert!(err.contains("answers as another process"), "{err}");
    // Even with B cut off so only C answers, C alone cannot vouch: every listed witness must.
    net.cut(B, true);
    let err = refusal(open(&net, &path, &[B, C])).to_string();
    assert!(
        err.contains("cannot prove this state is the newest"),
        "{err}"
    );
    net.cut(B, false);
    std::fs::copy(dir.path().join("newest.redb"), &path).unwrap();
    assert_eq!(
        open(&net, &path, &[B, C]).unwrap().0.state_version(),
        newest
    );
}

#[test]
fn two_copies_of_one_state_fork_and_the_witness_stops_the_second() {
    let net = Net::default();
    net.start(B);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &first, &[B]).unwrap();
    settle(&mut kms, &handle);
    write(&mut kms, 1);
    drop(kms);
    // The host copies the disk and starts both copies.
    let second = dir.path().join("copy.redb");
    std::fs::copy(&first, &second).unwrap();
    let (mut one, _) = open(&net, &first, &[B]).unwrap();
    let (mut two, two_handle) = open(&net, &second, &[B]).unwrap();
    one.generate_data_key(&acme()).unwrap();
    // The second copy writes the same version with another state: the witness refuses it, and
    // the copy stops for good.
    let err = two.generate_data_key(&acme()).unwrap_err().to_string();
    assert!(err.contains("forked: witness") && err.contains(B), "{err}");
    assert!(two_handle.halted().is_some());
    let err = two
        .create_org_key(&OrgId::new("other").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("forked"), "{err}");

    // A copy that only reads is stopped by the survey once a witness shows it is behind.
    let third = dir.path().join("third.redb");
    std::fs::copy(&first, &third).unwrap();
    let (_reader, reader_handle) = open(&net, &third, &[B]).unwrap();
    one.generate_data_key(&acme()).unwrap();
    let halt = reader_handle.survey(&[]).unwrap_err();
    assert!(
        halt.contains("behind: witness") && halt.contains("newer than its"),
        "{halt}"
    );
}

#[test]
fn without_a_peer_the_kms_says_rollback_is_not_defended() {
    let net = Net::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[]).unwrap();
    settle(&mut kms, &handle);
    write(&mut kms, 1);
    assert!(
        kms.anchor().contains("rollback is not defended"),
        "{}",
        kms.anchor()
    );
}

#[test]
fn a_witness_answers_bad_requests_by_field_and_never_lowers_what_it_holds() {
    let table = WitnessTable::new();
    let (status, body) = table.answer(b"{\"op\":\"advance\",\"instance\":\"zz\"}");
    assert_eq!(status, 400);
    assert!(body.to_string().contains("body:"), "{body}");
    let (status, body) = table.answer(
        br#"{"op":"advance","instance":"00112233445566778899aabbccddeeff","version":1,"state":"ab"}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.to_string().contains("state: expected 32 bytes of hex"),
        "{body}"
    );
    let state = |b: u8| hex::encode([b; 32]);
    let advance = |version: u64, s: &str| {
        table.answer(
            format!(
                r#"{{"op":"advance","instance":"00112233445566778899aabbccddeeff","version":{version},"state":"{s}","reply_to":"https://10.0.2.2:1"}}"#
            )
            .as_bytes(),
        )
    };
    assert_eq!(advance(5, &state(1)).0, 200);
    assert_eq!(advance(5, &state(1)).0, 200, "a repeat is fine");
    let (status, body) = advance(5, &state(2));
    assert_eq!(
        (status, body["refused"].as_str()),
        (409, Some("witness_fork"))
    );
    let (status, body) = advance(4, &state(3));
    assert_eq!(
        (status, body["refused"].as_str()),
        (409, Some("witness_stale"))
    );
    assert_eq!(body["held"]["version"], 5);
    assert_eq!(table.reporters(), vec!["https://10.0.2.2:1".to_owned()]);
    let (status, body) = table.answer(
        br#"{"op":"advance","instance":"00112233445566778899aabbccddeeff","version":9,"state":"0000000000000000000000000000000000000000000000000000000000000000","reply_to":"http://x"}"#,
    );
    assert_eq!(status, 400);
    assert!(body.to_string().contains("reply_to"), "{body}");
}

#[test]
fn no_new_set_is_listed_while_the_listed_one_cannot_witness_it() {
    let net = Net::default();
    net.start(B);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let (mut kms, handle) = open(&net, &path, &[B, C]).unwrap();
    settle(&mut kms, &handle);
    write(&mut kms, 1);
    let listed = handle.witnesses();
    assert_eq!(listed.len(), 1);
    net.cut(B, true);
    // C comes and restarts while B is cut off: a set {C} proposed now could die before any
    // write is witnessed and block writes for good, so nothing is proposed.
    for _ in 0..3 {
        net.start(C);
        assert_eq!(handle.survey(&[]).unwrap(), Survey::Unchanged);
        assert_eq!(handle.witnesses(), listed);
    }
    // Once B answers again, C joins the set through one witnessed change.
    net.cut(B, false);
    settle(&mut kms, &handle);
    write(&mut kms, 1);
    let now = handle.witnesses();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].len(), 2, "{now:?}");
}

#[test]
fn three_replicas_restarted_one_at_a_time_stay_writable_and_reopen_without_a_rejoin() {
    // Each replica is a KMS (its own store) and, at its URL, a witness of the other two: a
    // restart is a new witness incarnation with an empty memory and a reopened store.
    let net = Net::default();
    let dir = tempfile::tempdir().unwrap();
    let names = [A, B, C];
    let peers = |me: &str| -> Vec<&str> { names.iter().copied().filter(|n| *n != me).collect() };
    let path = |me: &str| dir.path().join(format!("{}.redb", &me[me.len() - 4..]));
    let mut replicas: Vec<(Kms, QuorumHandle)> = names
        .iter()
        .map(|me| {
            net.start(me);
            open_as(&net, &path(me), me, &peers(me)).unwrap()
        })
        .collect();
    let settle_all = |replicas: &mut Vec<(Kms, QuorumHandle)>| {
        // Two rounds: a change is listed by one write and confirmed by the next.
        for _ in 0..2 {
            for (kms, handle) in replicas.iter_mut() {
                settle(kms, handle);
                write(kms, 1);
            }
        }
    };
    settle_all(&mut replicas);
    for (_, handle) in &replicas {
        assert_eq!(handle.witnesses().len(), 1);
        assert_eq!(handle.witnesses()[0].len(), 2, "{:?}", handle.witnesses());
    }
    std::fs::copy(path(A), dir.path().join("a-before.redb")).unwrap();

    // A rolling restart, twice around: each replica reopens on the two others' word, and the
    // others list its new incarnation through the witness they have in common.
    for round in 0..2 {
        for (i, me) in names.iter().enumerate() {
            let (kms, _) = replicas.remove(i);
            drop(kms);
            net.start(me);
            let reopened = open_as(&net, &path(me), me, &peers(me))
                .unwrap_or_else(|e| panic!("round {round}: {me} does not reopen: {e}"));
            replicas.insert(i, reopened);
            settle_all(&mut replicas);
        }
    }
    for (_, handle) in &replicas {
        assert_eq!(handle.witnesses().len(), 1, "{:?}", handle.witnesses());
    }

    // The copy of A from before the restarts lists witnesses that are all gone: refused.
    let (kms, _) = replicas.remove(0);
    drop(kms);
    std::fs::copy(path(A), dir.path().join("a-newest.redb")).unwrap();
    std::fs::copy(dir.path().join("a-before.redb"), path(A)).unwrap();
    let err = refusal(open_as(&net, &path(A), A, &peers(A))).to_string();
    assert!(
        err.contains("cannot prove this state is the newest"),
        "{err}"
    );
    std::fs::copy(dir.path().join("a-newest.redb"), path(A)).unwrap();
    open_as(&net, &path(A), A, &peers(A)).unwrap();
}
