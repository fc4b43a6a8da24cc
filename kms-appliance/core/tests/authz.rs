//! The KMS policy matrix (issue 5, "Must show"): every denial with its reason code and audit
//! event, and the allowed cases. Issuer keys are generated here with ring.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::authz::{
    AttestedPeer, Authorizer, AuthzConfig, Credential, Decision, IssuerConfig, IssuerKind, Outcome,
    Reason, Request, IDENTITY_TOKEN_TYP, JOB_GRANT_TYP,
};
use coffer_kms::{KeyId, OrgId};
use coffer_types::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const CP: &str = "https://cp.coffer.test";
const OIDC: &str = "https://idp.example.test";
const T0: u64 = 1_700_000_000;
const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const KEY_X: &str = "cccccccccccccccccccccccccccccccc";

struct Signer {
    kid: &'static str,
    alg: Algorithm,
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn ed25519(kid: &'static str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = Base64UrlUnpadded::encode_string(pair.public_key().as_ref());
    Signer {
        kid,
        alg: Algorithm::EdDSA,
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}),
    }
}

fn p256(kid: &'static str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        kid,
        alg: Algorithm::ES256,
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": Base64UrlUnpadded::encode_string(&point[1..33]),
            "y": Base64UrlUnpadded::encode_string(&point[33..65])}),
    }
}

impl Signer {
    fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.into());
        let key = match self.alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.pkcs8),
            _ => EncodingKey::from_ec_der(&self.pkcs8),
        };
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

struct World {
    authz: Authorizer,
    cp: Signer,
    oidc: Signer,
}

fn issuer(iss: &str, kind: IssuerKind, keys: &[&Signer]) -> IssuerConfig {
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    IssuerConfig {
        issuer: iss.into(),
        kind,
        jwks: serde_json::from_value(jwks).unwrap(),
    }
}

fn world() -> World {
    let cp = ed25519("cp-1");
    let oidc = p256("idp-1");
    let config = AuthzConfig::new(vec![
        issuer(CP, IssuerKind::ControlPlane, &[&cp]),
        issuer(OIDC, IssuerKind::Oidc, &[&oidc]),
    ]);
    World {
        authz: Authorizer::new(config).unwrap(),
        cp,
        oidc,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn client() -> AttestedPeer {
    AttestedPeer {
        role: Role::Client,
        measurement: [0xc1; 48],
    }
}

fn executor() -> AttestedPeer {
    AttestedPeer {
        role: Role::Executor,
        measurement: [0xe1; 48],
    }
}

fn org(id: &str) -> OrgId {
    OrgId::new(id).unwrap()
}

fn key(id: &str) -> KeyId {
    KeyId::parse(id).unwrap()
}

fn identity(roles: &[&str]) -> Value {
    json!({"iss": CP, "sub": "alice", "org": "acme", "workspace": "research", "roles": roles,
        "aud": "kms", "iat": T0, "exp": T0 + 600, "jti": "tok-1"})
}

/// A two-org job: acme submits, reads acme's and beta's datasets; both owners approved.
fn grant() -> Value {
    json!({"iss": CP, "sub": "alice", "aud": "kms", "iat": T0, "exp": T0 + 3600, "jti": "grant-1",
        "job": "job-17", "org": "acme",
        "datasets": [
            {"id": "ds-a", "org": "acme", "key_id": KEY_A, "policy": {"roles": ["owner"], "k": 1}},
            {"id": "ds-b", "org": "beta", "key_id": KEY_B, "policy": {"roles": ["approver"], "k": 2}}],
        "recipients": [{"org": "acme", "workspace": "research"}],
        "approvals": [
            {"user": "olga", "org": "acme", "role": "owner", "at": T0 - 100},
            {"user": "bob", "org": "beta", "role": "approver", "at": T0 - 90},
            {"user": "bea", "org": "beta", "role": "approver", "at": T0 - 80}]})
}

fn unwrap_req(o: &str, k: &str) -> Request {
    Request::UnwrapDataKey {
        org: org(o),
        key_id: key(k),
    }
}

fn generate_req(o: &str, ws: &str) -> Request {
    Request::GenerateDataKey {
        org: org(o),
        workspace: ws.into(),
    }
}

/// Checks a denial: its code, a message naming what was wrong, and its audit event.
fn assert_denied(d: &Decision, reason: Reason, message_part: &str) {
    assert!(!d.is_allowed(), "expected {reason}, got allowed");
    assert_eq!(d.reason(), Some(reason), "{:?}", d.denial());
    let message = &d.denial().unwrap().message;
    assert!(
        message.contains(message_part),
        "message {message:?} lacks {message_part:?}"
    );
    let audit = d.audit();
    assert_eq!(audit.outcome, Outcome::Denied);
    assert_eq!(audit.reason, Some(reason));
    assert_eq!(&audit.message, message);
    let json = serde_json::to_value(audit).unwrap();
    assert_eq!(json["reason"], reason.code());
    assert_eq!(json["outcome"], "denied");
}

fn assert_allowed(d: &Decision) {
    assert!(d.is_allowed(), "{:?}", d.denial());
    assert_eq!(d.audit().outcome, Outcome::Allowed);
    assert_eq!(d.audit().reason, None);
}

fn as_user(w: &World, req: &Request, token: String) -> Decision {
    w.authz.authorize(
        req,
        Some(&client()),
        &Credential::IdentityToken(token),
        at(T0 + 10),
    )
}

fn as_job(w: &World, req: &Request, token: String) -> Decision {
    w.authz.authorize(
        req,
        Some(&executor()),
        &Credential::JobGrant(token),
        at(T0 + 10),
    )
}

// --- Allowed -----------------------------------------------------------------------------

#[test]
fn an_analyst_of_the_org_generates_and_unwraps_and_it_is_audited() {
    let w = world();
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    let d = as_user(&w, &generate_req("acme", "research"), token.clone());
    assert_allowed(&d);
    let a = d.audit();
    assert_eq!(a.subject.as_deref(), Some("user:alice"));
    assert_eq!(a.issuer.as_deref(), Some(CP));
    assert_eq!(a.credential_id.as_deref(), Some("tok-1"));
    assert_eq!(a.peer_role, Some(Role::Client));
    assert_eq!(a.peer_measurement, Some(hex::encode([0xc1; 48])));
    assert_eq!(a.time, T0 + 10);
    assert_eq!(a.org, "acme");
    assert_eq!(a.workspace.as_deref(), Some("research"));
    assert_allowed(&as_user(&w, &unwrap_req("acme", KEY_A), token));
}

#[test]
fn an_es256_oidc_token_of_an_admin_creates_rotates_and_lists_org_keys() {
    let w = world();
    let mut claims = identity(&["admin"]);
    claims["iss"] = OIDC.into();
    let token = w.oidc.sign(IDENTITY_TOKEN_TYP, &claims);
    for req in [
        Request::CreateOrgKey { org: org("acme") },
        Request::RotateOrgKey { org: org("acme") },
        Request::DestroyOrgKey { org: org("acme") },
        Request::ListKeyMetadata { org: org("acme") },
    ] {
        assert_allowed(&as_user(&w, &req, token.clone()));
    }
}

#[test]
fn an_executor_with_a_complete_grant_unwraps_its_datasets_keys_and_generates_result_keys() {
    let w = world();
    let token = w.cp.sign(JOB_GRANT_TYP, &grant());
    for req in [
        unwrap_req("acme", KEY_A),
        unwrap_req("beta", KEY_B),
        generate_req("acme", "research"),
    ] {
        let d = as_job(&w, &req, token.clone());
        assert_allowed(&d);
        assert_eq!(d.audit().subject.as_deref(), Some("job:job-17"));
        assert_eq!(d.audit().peer_role, Some(Role::Executor));
    }
}

// --- The policy matrix of the issue ------------------------------------------------------

#[test]
fn a_user_of_another_org_is_denied() {
    let w = world();
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["owner"]));
    let d = as_user(&w, &unwrap_req("beta", KEY_B), token);
    assert_denied(
        &d,
        Reason::OrgMismatch,
        "is for acme, the request is for beta",
    );
    // The subject verified: the audit event names who tried.
    assert_eq!(d.audit().subject.as_deref(), Some("user:alice"));
}

#[test]
fn an_expired_token_is_denied() {
    let w = world();
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    // exp = T0 + 600, skew 60 s: fine at T0 + 660, refused one second later.
    let req = unwrap_req("acme", KEY_A);
    let cred = Credential::IdentityToken(token);
    assert_allowed(
        &w.authz
            .authorize(&req, Some(&client()), &cred, at(T0 + 660)),
    );
    let d = w
        .authz
        .authorize(&req, Some(&client()), &cred, at(T0 + 661));
    assert_denied(&d, Reason::TokenExpired, "got exp 1700000600");
    assert_eq!(
        d.audit().subject,
        None,
        "an unverified subject is not audited"
    );
}

#[test]
fn a_token_for_another_audience_is_denied() {
    let w = world();
    for aud in [json!("hub"), json!(["kms", "hub"]), json!([])] {
        let mut claims = identity(&["analyst"]);
        claims["aud"] = aud;
        let d = as_user(
            &w,
            &unwrap_req("acme", KEY_A),
            w.cp.sign(IDENTITY_TOKEN_TYP, &claims),
        );
        assert_denied(&d, Reason::AudienceMismatch, "expected \"kms\"");
    }
}

#[test]
fn a_token_from_an_unknown_issuer_is_denied() {
    let w = world();
    let mut claims = identity(&["analyst"]);
    claims["iss"] = "https://evil.test".into();
    let d = as_user(
        &w,
        &unwrap_req("acme", KEY_A),
        w.cp.sign(IDENTITY_TOKEN_TYP, &claims),
    );
    assert_denied(&d, Reason::IssuerUnknown, "got \"https://evil.test\"");
}

#[test]
fn a_token_with_a_bad_signature_is_denied() {
    let w = world();
    // A key the attacker made, under the control plane's kid.
    let forger = ed25519("cp-1");
    let d = as_user(
        &w,
        &unwrap_req("acme", KEY_A),
        forger.sign(IDENTITY_TOKEN_TYP, &identity(&["owner"])),
    );
    assert_denied(&d, Reason::SignatureInvalid, "does not verify");
    // A genuine token whose claims were edited after signing.
    let genuine = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    let mut parts: Vec<String> = genuine.split('.').map(String::from).collect();
    let mut edited = identity(&["owner"]);
    edited["org"] = "beta".into();
    parts[1] = Base64UrlUnpadded::encode_string(edited.to_string().as_bytes());
    let d = as_user(&w, &unwrap_req("beta", KEY_B), parts.join("."));
    assert_denied(&d, Reason::SignatureInvalid, "does not verify");
}

#[test]
fn an_unpinned_client_image_is_denied() {
    let w = world();
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    // The mesh gives no identity to a peer whose measurement is not pinned.
    let d = w.authz.authorize(
        &unwrap_req("acme", KEY_A),
        None,
        &Credential::IdentityToken(token.clone()),
        at(T0),
    );
    assert_denied(&d, Reason::PeerNotAttested, "got none");
    assert_eq!(d.audit().peer_role, None);
    // A peer attested as another role (here a KMS image) is not a client.
    let kms = AttestedPeer {
        role: Role::Kms,
        measurement: [0x0b; 48],
    };
    let d = w.authz.authorize(
        &unwrap_req("acme", KEY_A),
        Some(&kms),
        &Credential::IdentityToken(token),
        at(T0),
    );
    assert_denied(&d, Reason::PeerRoleNotAllowed, "got kms");
}

#[test]
fn an_executor_without_a_job_grant_is_denied() {
    let w = world();
    let req = unwrap_req("acme", KEY_A);
    let d = w
        .authz
        .authorize(&req, Some(&executor()), &Credential::None, at(T0));
    assert_denied(
        &d,
        Reason::CredentialMissing,
        "expected a job grant, got no credential",
    );
    // A user's identity token does not stand in for a grant.
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["owner"]));
    let d = w.authz.authorize(
        &req,
        Some(&executor()),
        &Credential::JobGrant(token),
        at(T0),
    );
    assert_denied(
        &d,
        Reason::TokenTypeMismatch,
        "expected coffer-job-grant+jwt",
    );
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["owner"]));
    let d = w.authz.authorize(
        &req,
        Some(&executor()),
        &Credential::IdentityToken(token),
        at(T0),
    );
    assert_denied(
        &d,
        Reason::CredentialKindMismatch,
        "expected a job grant, got an identity token",
    );
}

#[test]
fn a_job_missing_one_owners_approval_is_denied() {
    let w = world();
    let mut g = grant();
    // beta needs two approvers; only bob approved (bob twice counts once).
    g["approvals"] = json!([
        {"user": "olga", "org": "acme", "role": "owner", "at": T0 - 100},
        {"user": "bob", "org": "beta", "role": "approver", "at": T0 - 90},
        {"user": "bob", "org": "beta", "role": "approver", "at": T0 - 50}]);
    // Even the key of acme's own, fully approved dataset is refused: the job is not approved.
    let d = as_job(&w, &unwrap_req("acme", KEY_A), w.cp.sign(JOB_GRANT_TYP, &g));
    assert_denied(
        &d,
        Reason::ApprovalsInsufficient,
        "expected 2 distinct approver(s) of org beta",
    );
    // Approvals that do not count: beta's approver from another org, the wrong role, after iat.
    g["approvals"] = json!([
        {"user": "olga", "org": "acme", "role": "owner", "at": T0 - 100},
        {"user": "bob", "org": "beta", "role": "approver", "at": T0 - 90},
        {"user": "eve", "org": "acme", "role": "approver", "at": T0 - 90},
        {"user": "bea", "org": "beta", "role": "analyst", "at": T0 - 90},
        {"user": "ben", "org": "beta", "role": "approver", "at": T0 + 1}]);
    let d = as_job(&w, &unwrap_req("beta", KEY_B), w.cp.sign(JOB_GRANT_TYP, &g));
    assert_denied(&d, Reason::ApprovalsInsufficient, "got 1 ({\"bob\"})");
    // And an "approved: true" flag is not a claim: the grant is malformed.
    let mut g = grant();
    g["approved"] = true.into();
    let d = as_job(&w, &unwrap_req("acme", KEY_A), w.cp.sign(JOB_GRANT_TYP, &g));
    assert_denied(&d, Reason::TokenMalformed, "approved");
}

#[test]
fn an_executor_asking_for_a_dataset_outside_its_job_is_denied() {
    let w = world();
    let token = w.cp.sign(JOB_GRANT_TYP, &grant());
    let d = as_job(&w, &unwrap_req("beta", KEY_X), token.clone());
    assert_denied(
        &d,
        Reason::DatasetNotInJob,
        "key cccccccccccccccccccccccccccccccc of org beta",
    );
    // A dataset's key id under another org is not that dataset.
    let d = as_job(&w, &unwrap_req("acme", KEY_B), token);
    assert_denied(&d, Reason::DatasetNotInJob, "outside it");
}

// --- The other denials, one each ---------------------------------------------------------

#[test]
fn a_client_without_a_token_or_with_a_grant_is_denied() {
    let w = world();
    let req = unwrap_req("acme", KEY_A);
    let d = w
        .authz
        .authorize(&req, Some(&client()), &Credential::None, at(T0));
    assert_denied(&d, Reason::CredentialMissing, "expected an identity token");
    let g = w.cp.sign(JOB_GRANT_TYP, &grant());
    let d = w
        .authz
        .authorize(&req, Some(&client()), &Credential::JobGrant(g), at(T0));
    assert_denied(&d, Reason::CredentialKindMismatch, "got a job grant");
}

#[test]
fn malformed_tokens_are_denied() {
    let w = world();
    let req = unwrap_req("acme", KEY_A);
    assert_denied(
        &as_user(&w, &req, "not.a.jwt".into()),
        Reason::TokenMalformed,
        "malformed",
    );
    // Claims of the wrong type (a string exp: CVE-2026-25537's shape), an unknown role,
    // exp before iat.
    for (field, value) in [
        ("exp", json!("never")),
        ("roles", json!(["superuser"])),
        ("exp", json!(T0 - 1)),
    ] {
        let mut claims = identity(&["analyst"]);
        claims[field] = value;
        let d = as_user(&w, &req, w.cp.sign(IDENTITY_TOKEN_TYP, &claims));
        assert_denied(&d, Reason::TokenMalformed, "malformed token");
    }
}

#[test]
fn a_token_naming_an_unknown_key_or_no_key_is_denied() {
    let w = world();
    let other = ed25519("cp-2");
    let d = as_user(
        &w,
        &unwrap_req("acme", KEY_A),
        other.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"])),
    );
    assert_denied(&d, Reason::KeyUnknown, "got \"cp-2\"");
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(IDENTITY_TOKEN_TYP.into());
    let token = jsonwebtoken::encode(
        &header,
        &identity(&["analyst"]),
        &EncodingKey::from_ed_der(&w.cp.pkcs8),
    )
    .unwrap();
    assert_denied(
        &as_user(&w, &unwrap_req("acme", KEY_A), token),
        Reason::KeyUnknown,
        "has none",
    );
}

#[test]
fn hmac_and_algorithms_not_fitting_the_key_are_denied() {
    let w = world();
    let req = unwrap_req("acme", KEY_A);
    // HS256 with the public key as the secret: the classic confusion.
    let b64 = |v: Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
    let forged = format!(
        "{}.{}.{}",
        b64(json!({"alg": "HS256", "typ": IDENTITY_TOKEN_TYP, "kid": "cp-1"})),
        b64(identity(&["owner"])),
        Base64UrlUnpadded::encode_string(&[0u8; 32])
    );
    assert_denied(
        &as_user(&w, &req, forged),
        Reason::AlgorithmNotAllowed,
        "got HS256",
    );
    // ES256 claimed under the control plane's Ed25519 key.
    let forged = format!(
        "{}.{}.{}",
        b64(json!({"alg": "ES256", "typ": IDENTITY_TOKEN_TYP, "kid": "cp-1"})),
        b64(identity(&["owner"])),
        Base64UrlUnpadded::encode_string(&[0u8; 64])
    );
    assert_denied(
        &as_user(&w, &req, forged),
        Reason::AlgorithmNotAllowed,
        "expected EdDSA, got ES256",
    );
}

#[test]
fn tokens_living_too_long_or_not_yet_valid_are_denied() {
    let w = world();
    let req = unwrap_req("acme", KEY_A);
    let mut claims = identity(&["analyst"]);
    claims["exp"] = (T0 + 901).into();
    let d = as_user(&w, &req, w.cp.sign(IDENTITY_TOKEN_TYP, &claims));
    assert_denied(
        &d,
        Reason::LifetimeTooLong,
        "expected at most 900 s, got 901 s",
    );
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    let cred = Credential::IdentityToken(token);
    // iat = T0, skew 60 s: fine from T0 - 60, refused before.
    assert_allowed(&w.authz.authorize(&req, Some(&client()), &cred, at(T0 - 60)));
    let d = w.authz.authorize(&req, Some(&client()), &cred, at(T0 - 61));
    assert_denied(&d, Reason::TokenNotYetValid, "starts at 1700000000");
    let mut claims = identity(&["analyst"]);
    claims["nbf"] = (T0 + 300).into();
    let d = as_user(&w, &req, w.cp.sign(IDENTITY_TOKEN_TYP, &claims));
    assert_denied(&d, Reason::TokenNotYetValid, "starts at 1700000300");
}

#[test]
fn roles_and_workspaces_limit_what_a_user_may_do() {
    let w = world();
    let analyst =
        w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst", "approver"]));
    let d = as_user(
        &w,
        &Request::DestroyOrgKey { org: org("acme") },
        analyst.clone(),
    );
    assert_denied(
        &d,
        Reason::RoleInsufficient,
        "expected one of [Owner, Admin]",
    );
    let auditor = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["auditor"]));
    assert_allowed(&as_user(
        &w,
        &Request::ListKeyMetadata { org: org("acme") },
        auditor.clone(),
    ));
    let d = as_user(&w, &unwrap_req("acme", KEY_A), auditor);
    assert_denied(&d, Reason::RoleInsufficient, "has [Auditor]");
    let d = as_user(&w, &generate_req("acme", "finance"), analyst);
    assert_denied(
        &d,
        Reason::WorkspaceMismatch,
        "the token is for \"research\"",
    );
}

#[test]
fn grants_from_oidc_issuers_bad_policies_and_foreign_recipients_are_denied() {
    let w = world();
    let mut g = grant();
    g["iss"] = OIDC.into();
    let d = as_job(
        &w,
        &unwrap_req("acme", KEY_A),
        w.oidc.sign(JOB_GRANT_TYP, &g),
    );
    assert_denied(&d, Reason::IssuerNotAllowed, "expected a control plane");
    let mut g = grant();
    g["datasets"][1]["policy"]["k"] = 0.into();
    let d = as_job(&w, &unwrap_req("acme", KEY_A), w.cp.sign(JOB_GRANT_TYP, &g));
    assert_denied(&d, Reason::ApprovalPolicyInvalid, "got k = 0");
    let token = w.cp.sign(JOB_GRANT_TYP, &grant());
    let d = as_job(&w, &generate_req("beta", "research"), token.clone());
    assert_denied(&d, Reason::RecipientNotInJob, "beta/research");
    let d = as_job(&w, &Request::DestroyOrgKey { org: org("beta") }, token);
    assert_denied(&d, Reason::OperationNotPermitted, "got DestroyOrgKey");
}

#[test]
fn audit_events_hold_no_token_signature_or_key_material() {
    let w = world();
    let token = w.cp.sign(IDENTITY_TOKEN_TYP, &identity(&["analyst"]));
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let grant_token = w.cp.sign(JOB_GRANT_TYP, &grant());
    let grant_sig = grant_token.rsplit('.').next().unwrap().to_owned();
    let private = Base64UrlUnpadded::encode_string(&w.cp.pkcs8);
    let decisions = [
        as_user(&w, &unwrap_req("acme", KEY_A), token.clone()),
        as_user(&w, &unwrap_req("beta", KEY_B), token.clone()),
        as_job(&w, &unwrap_req("beta", KEY_B), grant_token.clone()),
        as_job(&w, &unwrap_req("beta", KEY_X), grant_token.clone()),
    ];
    for d in &decisions {
        let json = serde_json::to_string(d.audit()).unwrap();
        for secret in [&token, &signature, &grant_token, &grant_sig, &private] {
            assert!(!json.contains(secret.as_str()), "audit event leaks: {json}");
        }
        // The event round-trips (deny_unknown_fields on both ends of the log).
        let back: coffer_kms::authz::AuditEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, d.audit());
    }
    assert!(!format!("{:?}", Credential::IdentityToken(token.clone())).contains(&signature));
}
