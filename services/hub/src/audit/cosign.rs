//! Co-signing by the KMS: the hub asks the deployment's KMS appliance to co-sign each new
//! checkpoint, so that a verifier trusting the KMS's key knows every checkpoint it sees is on
//! one linear history (the KMS signs only consistent extensions of what it signed before; see
//! `coffer_kms::checkpoint`).
//!
//! **Checks, every time:** the KMS endpoint's evidence, over TLS, against the deployment
//! manifest's pins for the kms role (`coffer_mesh::endpoint::check_endpoint`; simulation only if
//! configured); the `audit_signer` claim the evidence vouches for, which must name the KMS key
//! of this log (`<origin>/kms`); the request goes to the TLS key that evidence bound
//! (`request_attested`); the returned signature must verify with that key over exactly the
//! checkpoint sent. Only then is it added to the stored note (`cosigned = 1`).
//!
//! **Sends:** the checkpoint text, a checkpoint request token the hub signs (typ
//! `coffer-checkpoint+jwt`, naming the text's SHA-256, valid two minutes), and the consistency
//! proof from the last checkpoint the KMS co-signed. Co-signing is not itself audited: an
//! entry per co-signature would grow the log and call for the next checkpoint forever.

use base64ct::{Base64, Encoding};
use coffer_kms::authz::CheckpointRequestClaims;
use coffer_kms::checkpoint::{signer_key_name, COSIGN_PATH};
use coffer_mesh::endpoint::request_attested;
use coffer_tlog::merkle::consistency_proof;
use coffer_tlog::note::{Note, TrustedKeys, VerifierKey};
use coffer_tlog::Checkpoint;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::checkpoint::latest_checkpoint;
use crate::config::KmsLink;
use crate::error::ApiError;
use crate::state::Hub;

/// How long a checkpoint request token is valid.
pub const REQUEST_LIFETIME_SECS: u64 = 120;

/// Why a checkpoint was not co-signed.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    /// The hub's own side failed (database, signing).
    #[error("{0}")]
    Hub(#[from] ApiError),
    /// The KMS endpoint could not be reached or did not attest.
    #[error("the KMS endpoint {url} did not attest: {reason}")]
    NotAttested {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The attested KMS states no audit signer for this log, or another one.
    #[error("the KMS states audit signer {got:?}; expected a key named {expected:?}")]
    WrongSigner {
        /// The key name expected.
        expected: String,
        /// What the KMS's evidence vouched for.
        got: Option<String>,
    },
    /// The KMS refused to co-sign (a fork, a truncation, an inconsistent proof: a security
    /// event, since the KMS co-signs only one linear history).
    #[error("the KMS refused to co-sign checkpoint {size}: HTTP {status} {code}: {message}")]
    Refused {
        /// The checkpoint's size.
        size: u64,
        /// The HTTP status.
        status: u16,
        /// The KMS's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The KMS answered, but not with a valid signature over the checkpoint sent.
    #[error("the KMS's answer for checkpoint {size} is not its signature over it: {reason}")]
    BadSignature {
        /// The checkpoint's size.
        size: u64,
        /// What was wrong.
        reason: String,
    },
}

/// What [`cosign_latest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cosigned {
    /// The latest checkpoint (of this size) was already co-signed.
    Already(u64),
    /// It is co-signed now, by the key named.
    Now {
        /// The checkpoint's size.
        size: u64,
        /// The KMS's verifier key.
        kms_key: String,
    },
}

/// Asks the KMS of `link` to co-sign the latest checkpoint (signing it first if needed).
pub async fn cosign_latest(hub: &Hub, link: &KmsLink) -> Result<Cosigned, CosignError> {
    let latest = latest_checkpoint(hub).await?;
    if latest.cosigned {
        return Ok(Cosigned::Already(latest.size));
    }
    let size = latest.size;
    let origin = hub.audit.origin().to_owned();
    let text = Checkpoint::new(&origin, size, latest.root)
        .map_err(|e| ApiError::internal("checkpoint text", e))?
        .to_text();

    // The consistency proof from the last size the KMS co-signed (none for its first).
    let last: Option<i64> = sqlx::query(
        "SELECT MAX(size) AS s FROM audit_checkpoints WHERE cosigned = 1 AND size <= $1",
    )
    .bind(i64::try_from(size).map_err(|e| ApiError::internal("size", e))?)
    .fetch_one(&hub.db)
    .await
    .map_err(ApiError::from)?
    .try_get("s")
    .map_err(ApiError::from)?;
    let proof = match last.and_then(|s| u64::try_from(s).ok()) {
        Some(old) if old > 0 && old < size => hub.audit.with_tree(|tree| {
            consistency_proof(tree, old, size)
                .map_err(|e| ApiError::internal("consistency proof", e))
        })?,
        _ => Vec::new(),
    };

    let now = u64::try_from(crate::db::now()).unwrap_or(0);
    let token = hub
        .keys
        .sign_checkpoint_request(&CheckpointRequestClaims {
            iss: hub.keys.issuer().to_owned(),
            sub: "hub".into(),
            aud: crate::keys::HubKeys::audience(),
            iat: now,
            exp: now + REQUEST_LIFETIME_SECS,
            nbf: None,
            jti: crate::db::new_id("cr-"),
            checkpoint_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
        .map_err(|e| ApiError::internal("sign checkpoint request", e))?;

    // Attest the KMS, learn its audit signer from its evidence, then ask on that TLS key.
    let not_attested = |reason: String| CosignError::NotAttested {
        url: link.endpoint.clone(),
        reason,
    };
    let check = link
        .attest()
        .await
        .map_err(|e| not_attested(e.to_string()))?;
    let expected_name = signer_key_name(&origin);
    let stated = check.claims.get("audit_signer").cloned();
    let kms_key = stated
        .as_deref()
        .and_then(|v| VerifierKey::parse(v).ok())
        .filter(|k| k.name() == expected_name)
        .ok_or_else(|| CosignError::WrongSigner {
            expected: expected_name.clone(),
            got: stated.clone(),
        })?;
    let body = serde_json::json!({
        "token": token,
        "checkpoint": text,
        "proof": proof.iter().map(|h| Base64::encode_string(h)).collect::<Vec<_>>(),
    });
    let (status, answer) = request_attested(
        &link.endpoint,
        &check.tls_spki_sha256,
        hyper::Method::POST,
        COSIGN_PATH,
        body.to_string().into(),
    )
    .await
    .map_err(|e| not_attested(e.to_string()))?;
    if !status.is_success() {
        let parsed: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        return Err(CosignError::Refused {
            size,
            status: status.as_u16(),
            code: parsed["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            message: parsed["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned()),
        });
    }

    // The answer must be the KMS's valid signature over exactly our text.
    let bad = |reason: String| CosignError::BadSignature { size, reason };
    let kms_note = Note::parse(&answer).map_err(|e| bad(format!("not a signed note: {e}")))?;
    if kms_note.text() != text {
        return Err(bad("it signs another text than the checkpoint sent".into()));
    }
    let trusted = TrustedKeys::new([kms_key.clone()]).map_err(|e| bad(e.to_string()))?;
    kms_note
        .verify(&trusted)
        .map_err(|e| bad(format!("does not verify with {kms_key}: {e}")))?;
    let signature = kms_note
        .signatures()
        .iter()
        .find(|s| s.name() == kms_key.name() && s.key_id() == kms_key.key_id())
        .cloned()
        .ok_or_else(|| bad("no signature by the KMS's key".into()))?;

    // Add it to the stored note, through a Writer like every write.
    let mut note = Note::parse(latest.note.as_bytes())
        .map_err(|e| ApiError::internal("stored checkpoint", e))?;
    note.add_signature(signature)
        .map_err(|e| ApiError::internal("adding the KMS signature", e))?;
    let merged = String::from_utf8(
        note.to_bytes()
            .map_err(|e| ApiError::internal("co-signed note", e))?,
    )
    .map_err(|e| ApiError::internal("co-signed note", e))?;
    let mut w = hub.writer().await?;
    sqlx::query("UPDATE audit_checkpoints SET note = $1, cosigned = 1 WHERE size = $2")
        .bind(&merged)
        .bind(i64::try_from(size).map_err(|e| ApiError::internal("size", e))?)
        .execute(w.conn())
        .await
        .map_err(ApiError::from)?;
    w.commit().await?;
    tracing::info!(size, kms_key = %kms_key, "audit checkpoint co-signed by the KMS");
    Ok(Cosigned::Now {
        size,
        kms_key: kms_key.to_string(),
    })
}
