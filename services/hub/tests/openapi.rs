//! The hub's OpenAPI description: served without a token, a well-formed OpenAPI 3.1 document
//! (every reference resolves, every path parameter is declared, operation ids are unique), and
//! exactly the router's routes: every documented operation reaches a handler, and every other
//! method on a documented path is refused with 405.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::TestHub;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The `{name}`s of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// `path` with each parameter replaced by a value no resource has.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "no-such-thing"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_description_is_served_without_a_token_and_is_well_formed_openapi_3() {
    let t = TestHub::new().await;
    let doc = t.ok(200, "GET", "/openapi.json", None, None).await;
    assert_eq!(
        doc,
        serde_json::to_value(coffer_hub::api::openapi()).unwrap(),
        "the served description is the generated one"
    );
    // It parses as an OpenAPI document (the typed model), and says it is OpenAPI 3.
    let typed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(!typed.paths.paths.is_empty());
    assert!(!doc["info"]["title"].as_str().unwrap().is_empty());

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("reference {r:?} is not to a component schema"));
        assert!(
            schemas.contains_key(name),
            "reference {r:?} does not resolve"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let mut ids = BTreeSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "{path}");
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            let what = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{what} has no operationId");
            assert!(
                ids.insert(id.to_owned()),
                "{what}: operationId {id} is used twice"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{what} has no summary (the handler's doc comment)"
            );
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(declared, template_params(path), "{what}: path parameters");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what} documents no success"
            );
            assert!(
                responses.contains_key("500"),
                "{what} does not document 500"
            );
            // Every error answer has the error body.
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}"
                    );
                }
            }
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert!(
                !secured || responses.contains_key("401"),
                "{what} needs a token but does not document 401"
            );
        }
    }
    assert!(operations >= 48, "{operations} operations");
}

#[tokio::test]
async fn every_documented_route_reaches_a_handler_and_no_other_method_does() {
    let t = TestHub::new().await;
    let doc = serde_json::to_value(coffer_hub::api::openapi()).unwrap();
    let public = [
        "POST /v1/auth/login",
        "POST /v1/auth/oidc",
        "GET /.well-known/jwks.json",
        "GET /openapi.json",
    ];
    let mut seen_public = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        for method in METHODS {
            let upper = method.to_uppercase();
            let what = format!("{upper} {path}");
            let (status, body) = t.call(&upper, &url, None, None).await;
            let Some(op) = item.get(method) else {
                assert_eq!(status, 405, "{what} is not documented, yet answered {body}");
                continue;
            };
            assert_ne!(
                body["error"]["message"], "route not found",
                "{what} is documented but not routed"
            );
            assert_ne!(status, 405, "{what} is documented but not routed");
            if op.get("security").is_some() {
                assert_eq!(
                    (status.as_u16(), body["error"]["code"].as_str()),
                    (401, Some("unauthenticated")),
                    "{what} without a token: {body}"
                );
            } else {
                assert!(public.contains(&what.as_str()), "{what} needs no token");
                assert_ne!(status, 401, "{what} without a token: {body}");
                seen_public.insert(what);
            }
        }
    }
    assert_eq!(seen_public.len(), public.len(), "{seen_public:?}");
    let (status, body) = t.call("GET", "/v1/no-such-route", None, None).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (404, &Value::from("not_found"))
    );
}
