//! Local account passwords: argon2id (RFC 9106) with the argon2 crate's defaults (19 MiB,
//! 2 passes, 1 lane: OWASP's minimum), stored as PHC strings. Hashing runs on the blocking pool.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The longest (argon2 takes any length; this bounds the work a request can cause).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Checks a new password's length; names the rule it breaks.
pub fn check_new(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            "weak_password",
            format!("password has {n} characters; at least {MIN_PASSWORD_LEN} are required"),
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            "invalid_password",
            format!("password is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Hashes `password` into a PHC string.
pub async fn hash(password: Zeroizing<String>) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal("password hash", e))
    })
    .await
    .map_err(|e| ApiError::internal("password hash task", e))?
}

/// A PHC string of a password nobody knows: unknown accounts are checked against it so that a
/// failed sign-in takes as long whether or not the account exists.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Gq0y9sQ3C6ZnM5tzsh0mHm3OqkE6cXzy1Y8J3Mkm5tA";

/// Whether `password` matches `phc` (`None`: the account has no password or does not exist;
/// the check runs anyway and fails).
pub async fn verify(password: Zeroizing<String>, phc: Option<String>) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let parsed =
            PasswordHash::new(&phc).map_err(|e| ApiError::internal("stored password hash", e))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && known)
    })
    .await
    .map_err(|e| ApiError::internal("password check task", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_only() {
        let phc = hash(Zeroizing::new("correct horse battery".into()))
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify(
            Zeroizing::new("correct horse battery".into()),
            Some(phc.clone())
        )
        .await
        .unwrap());
        assert!(
            !verify(Zeroizing::new("correct horse battery!".into()), Some(phc))
                .await
                .unwrap()
        );
        assert!(!verify(Zeroizing::new("anything".into()), None)
            .await
            .unwrap());
    }

    #[test]
    fn short_passwords_are_refused_with_the_rule() {
        let err = check_new("short").unwrap_err();
        assert_eq!(err.code, "weak_password");
        assert!(err.message.contains("at least 12"), "{}", err.message);
    }
}
