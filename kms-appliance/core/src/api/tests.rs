//! Input parsing of the API, without a KMS: routes, credential headers, bodies.

use super::*;

#[test]
fn routes_parse_and_anything_else_is_not_found() {
    assert!(matches!(route("/v1/orgs/acme/keys"), Some((o, Route::Keys)) if o == "acme"));
    assert!(matches!(
        route("/v1/orgs/acme/keys/rotate"),
        Some((_, Route::Rotate))
    ));
    assert!(matches!(
        route("/v1/orgs/acme/data-keys"),
        Some((_, Route::DataKeys))
    ));
    assert!(
        matches!(route("/v1/orgs/acme/data-keys/abc/unwrap"), Some((_, Route::Unwrap(k))) if k == "abc")
    );
    for path in [
        "/",
        "/v1/orgs/acme",
        "/v1/orgs/acme/keys/",
        "/v1/orgs/acme/keys/rotate/now",
        "/v2/orgs/acme/keys",
        "/v1/orgs/acme/data-keys/abc",
    ] {
        assert!(route(path).is_none(), "{path}");
    }
}

#[test]
fn credentials_come_from_exactly_one_header() {
    let mut headers = HeaderMap::new();
    assert_eq!(credential(&headers).unwrap(), Credential::None);
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer abc.def.ghi"),
    );
    assert_eq!(
        credential(&headers).unwrap(),
        Credential::IdentityToken("abc.def.ghi".into())
    );
    headers.insert(JOB_GRANT_HEADER, HeaderValue::from_static("x.y.z"));
    assert_eq!(
        credential(&headers).unwrap_err().code,
        "ambiguous_credentials"
    );
    headers.remove(AUTHORIZATION);
    assert_eq!(
        credential(&headers).unwrap(),
        Credential::JobGrant("x.y.z".into())
    );
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic YWxpY2U6"));
    let e = credential(&basic).unwrap_err();
    assert_eq!(
        (e.code, e.field),
        ("invalid_authorization", Some("authorization"))
    );
    // The rejected credential is not echoed.
    assert!(!e.message.contains("YWxpY2U6"));
}

#[test]
fn bodies_must_be_objects_with_known_fields_only() {
    assert!(body_object(b"", &[]).unwrap().is_empty());
    assert!(body_object(b" {} ", &[]).unwrap().is_empty());
    assert_eq!(body_object(b"[1]", &[]).unwrap_err().code, "invalid_body");
    assert_eq!(body_object(b"{", &[]).unwrap_err().code, "invalid_body");
    let e = body_object(br#"{"workspace":"a","extra":1}"#, &["workspace"]).unwrap_err();
    assert_eq!(e.code, "unknown_field");
    assert!(e.message.contains("extra"), "{}", e.message);
}

#[test]
fn workspaces_follow_the_org_id_rules() {
    assert!(valid_workspace("research"));
    assert!(valid_workspace("a.b_c-9"));
    assert!(!valid_workspace(""));
    assert!(!valid_workspace("a/b"));
    assert!(!valid_workspace(&"x".repeat(65)));
}

#[test]
fn a_plaintext_response_is_json_with_base64_and_no_store() {
    let key = DataKey::generate().unwrap();
    let response = plaintext_response(StatusCode::OK, &key, None, None).unwrap();
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(PLAINTEXT_B64_LEN, 44);
}
