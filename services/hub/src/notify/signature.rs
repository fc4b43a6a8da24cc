//! Webhook signatures (the scheme Stripe uses): each delivery carries
//! `X-Coffer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, where
//! `secret` is the webhook's secret exactly as shown at creation (its ASCII bytes, not decoded)
//! and `<body>` is the request body's bytes, unparsed.
//!
//! **How a receiver verifies** (what [`verify_signature`] does):
//! 1. split the header on `,` into `key=value` pairs; take `t` and every `v1` (ignore other
//!    keys, e.g. a future `v2`);
//! 2. compute `HMAC-SHA256(secret, t + "." + raw body)` over the body bytes *as received*
//!    (before any JSON parsing or re-encoding);
//! 3. compare it with each `v1` in constant time; accept if one matches;
//! 4. reject if `t` is more than a few minutes (e.g. 300 s) from the receiver's clock: a
//!    captured delivery cannot be replayed later, because `t` is covered by the MAC;
//! 5. treat `X-Coffer-Delivery` (also the payload's `id`) as an idempotency key: a delivery
//!    can arrive more than once (a retry after a lost answer, or after a hub restart).
//!
//! **Trusts:** nothing in the header until the MAC checks out. **Checks:** the MAC (constant
//! time, through `hmac`'s `verify_slice`) and the timestamp's age.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<secs>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed signature header: {0}")]
    Malformed(String),
    /// The header has no `t=` timestamp.
    #[error("signature header has no timestamp (t=)")]
    MissingTimestamp,
    /// The header has no `v1=` signature.
    #[error("signature header has no v1 signature (v1=)")]
    MissingSignature,
    /// No `v1` signature is the MAC of this body at this timestamp with this secret.
    #[error(
        "no v1 signature matches the body (wrong secret, or the body or timestamp was altered)"
    )]
    Mismatch,
    /// The signature is valid but its timestamp is too far from now (a replay, or a bad clock).
    #[error(
        "signature timestamp {timestamp} is more than {tolerance_secs} s away from now ({now})"
    )]
    Stale {
        /// The header's timestamp.
        timestamp: i64,
        /// The receiver's clock.
        now: i64,
        /// The tolerance it allowed.
        tolerance_secs: i64,
    },
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Result<HmacSha256, SignatureError> {
    // HMAC takes keys of any length: this cannot fail, but is not unwrapped.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|_| SignatureError::Malformed("the secret cannot key HMAC-SHA256".into()))?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// The `X-Coffer-Signature` header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
    let tag = mac(secret, timestamp, body)?.finalize().into_bytes();
    Ok(format!("t={timestamp},v1={}", hex::encode(tag)))
}

/// Checks an `X-Coffer-Signature` `header` for `body` (the raw bytes received) against the
/// webhook's `secret`: one `v1` must be its HMAC (compared in constant time), and `t` must be
/// within `tolerance_secs` of `now` (Unix seconds; 300 is a sensible tolerance).
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| SignatureError::Malformed(format!("{part:?} is not key=value")))?;
        match key {
            "t" => {
                let t = value.parse::<i64>().map_err(|_| {
                    SignatureError::Malformed(format!("timestamp {value:?} is not an integer"))
                })?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed(
                        "more than one timestamp (t=)".into(),
                    ));
                }
            }
            "v1" => signatures.push(hex::decode(value).map_err(|_| {
                SignatureError::Malformed(format!("v1 signature {value:?} is not hex"))
            })?),
            _ => {} // other schemes: not ours to check
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::MissingSignature);
    }
    let expected = mac(secret, timestamp, body)?;
    if !signatures
        .iter()
        .any(|s| expected.clone().verify_slice(s).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now.abs_diff(timestamp) > tolerance {
        return Err(SignatureError::Stale {
            timestamp,
            now,
            tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_secret_body_and_time() {
        let header = sign("s3cret", 1000, b"{\"a\":1}").unwrap();
        assert!(header.starts_with("t=1000,v1="));
        assert_eq!(
            verify_signature("s3cret", &header, b"{\"a\":1}", 1100, 300),
            Ok(())
        );
        assert_eq!(
            verify_signature("other", &header, b"{\"a\":1}", 1100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("s3cret", &header, b"{\"a\":2}", 1100, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature("s3cret", &header, b"{\"a\":1}", 1400, 300),
            Err(SignatureError::Stale {
                timestamp: 1000,
                ..
            })
        ));
        // Moving the timestamp breaks the MAC.
        let moved = header.replace("t=1000", "t=1350");
        assert_eq!(
            verify_signature("s3cret", &moved, b"{\"a\":1}", 1400, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        assert_eq!(
            verify_signature("s", "v1=00", b"", 0, 300),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify_signature("s", "t=5", b"", 0, 300),
            Err(SignatureError::MissingSignature)
        );
        assert!(matches!(
            verify_signature("s", "t=x,v1=00", b"", 0, 300),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            verify_signature("s", "t=5,v1=zz", b"", 0, 300),
            Err(SignatureError::Malformed(_))
        ));
        // A second scheme is ignored; one matching v1 among several is enough.
        let good = sign("s", 5, b"x").unwrap();
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t=5,v0=abc,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify_signature("s", &header, b"x", 5, 300), Ok(()));
    }
}
