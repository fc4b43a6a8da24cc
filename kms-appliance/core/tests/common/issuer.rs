//! A test credential issuer: an Ed25519 control-plane key (ring), its JWKS for
//! [`AuthzConfig`], and identity tokens and job grants it signs.

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_kms::authz::{AuthzConfig, IssuerConfig, IssuerKind, IDENTITY_TOKEN_TYP, JOB_GRANT_TYP};
use coffer_kms::Authorizer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// The control plane's issuer name in these tests.
pub const CP: &str = "https://cp.coffer.test";

/// A control-plane issuer with one Ed25519 key.
pub struct TestIssuer {
    kid: &'static str,
    pkcs8: Vec<u8>,
    jwk: Value,
}

impl TestIssuer {
    /// A fresh key, named `kid`.
    pub fn generate(kid: &'static str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = Base64UrlUnpadded::encode_string(pair.public_key().as_ref());
        Self {
            kid,
            pkcs8: pkcs8.as_ref().to_vec(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}),
        }
    }

    /// An authorizer trusting this issuer as the control plane.
    pub fn authorizer(&self) -> Authorizer {
        let jwks = json!({ "keys": [self.jwk.clone()] });
        Authorizer::new(AuthzConfig::new(vec![IssuerConfig {
            issuer: CP.into(),
            kind: IssuerKind::ControlPlane,
            jwks: serde_json::from_value(jwks).unwrap(),
        }]))
        .unwrap()
    }

    /// Signs `claims` as a JWS of type `typ`.
    pub fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }

    /// An identity token for `user` of `org`/`workspace` with `roles`, valid from now for 10
    /// minutes.
    pub fn identity(&self, user: &str, org: &str, workspace: &str, roles: &[&str]) -> String {
        let now = now();
        self.sign(
            IDENTITY_TOKEN_TYP,
            &json!({"iss": CP, "sub": user, "org": org, "workspace": workspace,
                "roles": roles, "aud": "kms", "iat": now, "exp": now + 600,
                "jti": format!("tok-{user}-{now}")}),
        )
    }

    /// A job grant for `job` of `org` reading `datasets` (`(id, org, key id)`, each with the
    /// policy "one owner of the dataset's org", approved by `owner:<org>`), with results for
    /// `recipients` (`(org, workspace)`), valid from now for an hour.
    pub fn job_grant(
        &self,
        job: &str,
        org: &str,
        datasets: &[(&str, &str, &str)],
        recipients: &[(&str, &str)],
    ) -> String {
        let now = now();
        let datasets: Vec<Value> = datasets
            .iter()
            .map(|(id, org, key_id)| {
                json!({"id": id, "org": org, "key_id": key_id,
                    "policy": {"roles": ["owner"], "k": 1}})
            })
            .collect();
        let approvals: Vec<Value> = datasets
            .iter()
            .map(|d| {
                json!({"user": format!("owner:{}", d["org"].as_str().unwrap()),
                    "org": d["org"], "role": "owner", "at": now - 100})
            })
            .collect();
        let recipients: Vec<Value> = recipients
            .iter()
            .map(|(org, ws)| json!({"org": org, "workspace": ws}))
            .collect();
        self.sign(
            JOB_GRANT_TYP,
            &json!({"iss": CP, "sub": "alice", "aud": "kms", "iat": now, "exp": now + 3600,
                "jti": format!("grant-{job}-{now}"), "job": job, "org": org,
                "datasets": datasets, "recipients": recipients, "approvals": approvals}),
        )
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
