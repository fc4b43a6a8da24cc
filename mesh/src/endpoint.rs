//! The attestation endpoint for people: browsers and scripts cannot take part in the attested
//! handshake, so a node also answers `GET /.well-known/coffer/attestation?nonce=HEX` over plain
//! server-authenticated TLS, with evidence whose REPORT_DATA binds the caller's nonce and the
//! server's TLS public key ([`crate::binding::endpoint_report_data`]). [`check_endpoint`] is the
//! caller's side (`coffer verify endpoint https://HOST:PORT`): it reads the public key from the
//! TLS session it is on, sends a fresh nonce, and verifies the evidence against the deployment.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use coffer_evidence::Evidence;
use coffer_types::Role;
use coffer_verify::Timestamp;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::binding::endpoint_report_data;
use crate::tls;
use crate::{Binding, MeshError, MeshNode, PeerIdentity, Trust};

/// The endpoint's path.
pub const ATTESTATION_PATH: &str = "/.well-known/coffer/attestation";

/// Shortest and longest nonce accepted, in bytes.
pub const NONCE_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// The endpoint's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointAttestation {
    /// The node's deployment.
    pub deployment_id: String,
    /// The node's role.
    pub role: Role,
    /// The caller's nonce, hex, echoed.
    pub nonce: String,
    /// SHA-256 of the server's TLS SubjectPublicKeyInfo, hex (what the evidence binds).
    pub tls_spki_sha256: String,
    /// What the node states about itself, bound into the evidence with the nonce and key (the
    /// KMS: `audit_signer`, its checkpoint-signing verifier key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// The evidence.
    pub evidence: Evidence,
}

/// The answer to one request to the endpoint.
pub async fn answer<B>(node: &MeshNode, request: &Request<B>) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    };
    let error = |status: StatusCode, message: String| {
        json(
            status,
            serde_json::json!({ "error": { "code": status.as_u16(), "message": message } })
                .to_string(),
        )
    };
    if request.uri().path() != ATTESTATION_PATH {
        return error(
            StatusCode::NOT_FOUND,
            format!("only {ATTESTATION_PATH} is served here"),
        );
    }
    if request.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET".into());
    }
    let nonce = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("nonce="))
        .map(hex::decode);
    let nonce = match nonce {
        Some(Ok(nonce)) if NONCE_BYTES.contains(&nonce.len()) => nonce,
        Some(Ok(nonce)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "nonce of {} bytes: between {} and {} bytes are accepted",
                    nonce.len(),
                    NONCE_BYTES.start(),
                    NONCE_BYTES.end()
                ),
            )
        }
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("nonce is not hex: {e}")),
        None => return error(StatusCode::BAD_REQUEST, "missing ?nonce=HEX".into()),
    };
    let spki = node.identity().spki_der();
    let claims = node.claims();
    let evidence = match node
        .own_evidence(endpoint_report_data(&nonce, spki, &claims))
        .await
    {
        Ok(evidence) => evidence,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let body = EndpointAttestation {
        deployment_id: node.trust().deployment().deployment_id.clone(),
        role: node.role(),
        nonce: hex::encode(&nonce),
        tls_spki_sha256: hex::encode(crate::sha256(spki)),
        claims,
        evidence,
    };
    match serde_json::to_string(&body) {
        Ok(text) => json(StatusCode::OK, text),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// More routes on the attestation endpoint's server, for what people (not mesh nodes) must reach
/// over the same server-authenticated TLS: the KMS's recovery kit and share submission. Given
/// the method, path and body (at most [`MAX_EXTENSION_BODY`] bytes); `None` for paths it does not
/// serve. Whoever calls it has proved nothing; it must check what it receives.
pub type Extension = Arc<
    dyn Fn(
            hyper::Method,
            String,
            Bytes,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<Response<Full<Bytes>>>> + Send>,
        > + Send
        + Sync,
>;

/// The largest request body an [`Extension`] receives.
pub const MAX_EXTENSION_BODY: usize = 64 * 1024;

/// Serves the endpoint over TLS (server-authenticated only) on `listener`, forever.
pub async fn serve_endpoint(node: Arc<MeshNode>, listener: TcpListener) -> std::io::Result<()> {
    serve_endpoint_with(node, listener, None).await
}

/// Reads a request body of at most [`MAX_EXTENSION_BODY`] bytes.
async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, String> {
    http_body_util::Limited::new(body, MAX_EXTENSION_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("body: {e} (at most {MAX_EXTENSION_BODY} bytes)"))
}

async fn route(
    node: &MeshNode,
    extension: Option<&Extension>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let Some(extension) = extension.filter(|_| request.uri().path() != ATTESTATION_PATH) else {
        return answer(node, &request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(e) => {
            let mut response = Response::new(Full::new(Bytes::from(
                serde_json::json!({ "error": { "code": 413, "message": e } }).to_string(),
            )));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    match extension(parts.method.clone(), parts.uri.path().to_owned(), body).await {
        Some(response) => response,
        None => answer(node, &Request::from_parts(parts, ())).await,
    }
}

/// As [`serve_endpoint`], with more routes served by `extension`.
pub async fn serve_endpoint_with(
    node: Arc<MeshNode>,
    listener: TcpListener,
    extension: Option<Extension>,
) -> std::io::Result<()> {
    let config =
        tls::server_config_without_client_auth(node.identity()).map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, remote) = crate::accept::next_connection(&listener, "attestation endpoint").await;
        let (acceptor, node, extension) = (acceptor.clone(), node.clone(), extension.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "attestation endpoint: TLS failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let (node, extension) = (node.clone(), extension.clone());
                async move { Ok::<_, Infallible>(route(&node, extension.as_ref(), request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "attestation endpoint connection failed");
            }
        });
    }
}

/// What [`check_endpoint`] found.
#[derive(Debug, Clone)]
pub struct EndpointCheck {
    /// Who the server proved to be.
    pub peer: PeerIdentity,
    /// SHA-256 of the server's TLS public key, hex, as seen on this connection.
    pub tls_spki_sha256: String,
    /// The nonce sent, hex.
    pub nonce: String,
    /// The server's claims, vouched for by its evidence.
    pub claims: BTreeMap<String, String>,
}

/// Connects to `https://host:port`, asks for evidence with a fresh nonce, and verifies it against
/// `trust`: pinned for `expect` (or any role when `None`), same deployment, bound to the nonce
/// and to the TLS key of this very connection.
pub async fn check_endpoint(
    url: &str,
    trust: &Trust,
    expect: Option<Role>,
) -> Result<EndpointCheck, MeshError> {
    check_endpoint_bound(url, trust, expect, Binding::Deployment).await
}

/// As [`check_endpoint`], with the deployment binding chosen ([`Binding::AnyManifest`]: the
/// same deployment id and pinned code, under any manifest of it).
pub async fn check_endpoint_bound(
    url: &str,
    trust: &Trust,
    expect: Option<Role>,
    binding: Binding,
) -> Result<EndpointCheck, MeshError> {
    let (addr, authority) = authority_of(url)?;
    let (tls_stream, spki) = connect_tls(&addr).await?;
    let mut nonce = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|e| MeshError::Tls(format!("no randomness for the nonce: {e:?}")))?;
    // Not yet attested: this one request asks for the evidence that vouches for this key.
    let (status, body) = AttestedConnection::over(tls_stream, authority.clone())
        .await?
        .send(
            hyper::Method::GET,
            &format!("{ATTESTATION_PATH}?nonce={}", hex::encode(nonce)),
            Bytes::new(),
        )
        .await?;
    if !status.is_success() {
        return Err(MeshError::Protocol(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let answer: EndpointAttestation = serde_json::from_slice(&body)
        .map_err(|e| MeshError::Protocol(format!("not an attestation answer: {e}")))?;
    if let Some(expect) = expect {
        if answer.role != expect {
            return Err(MeshError::UnexpectedRole {
                expected: expect.to_string(),
                got: answer.role,
            });
        }
    }
    let ours = &trust.deployment().deployment_id;
    if &answer.deployment_id != ours {
        return Err(MeshError::WrongDeploymentId {
            expected: ours.clone(),
            got: answer.deployment_id,
        });
    }
    let now = Timestamp::now().map_err(|e| MeshError::Protocol(e.to_string()))?;
    let peer = trust.verify_bound(
        answer.role,
        &answer.evidence,
        endpoint_report_data(&nonce, &spki, &answer.claims),
        now,
        binding,
    )?;
    Ok(EndpointCheck {
        peer,
        tls_spki_sha256: hex::encode(crate::sha256(&spki)),
        nonce: hex::encode(nonce),
        claims: answer.claims,
    })
}

/// `host:port` of an `https://HOST[:PORT]` URL (443 by default), and the authority as given.
fn authority_of(url: &str) -> Result<(String, String), MeshError> {
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| MeshError::Protocol(format!("{url:?}: only https:// URLs are attested")))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(MeshError::Protocol(format!(
            "{url:?}: give https://HOST[:PORT] without a path"
        )));
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Ok((addr, authority.to_owned()))
}

/// A TLS connection to `addr` whose certificate is not checked here (the evidence is what
/// authenticates the server), and the server's SubjectPublicKeyInfo.
async fn connect_tls(
    addr: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), MeshError> {
    let tcp = TcpStream::connect(&addr).await?;
    let tls_stream = TlsConnector::from(tls::client_config(None)?)
        .connect(tls::server_name(), tcp)
        .await
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    let spki = {
        let (_, conn) = tls_stream.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| MeshError::Tls("the server presented no certificate".into()))?;
        tls::spki_of(cert)?
    };
    Ok((tls_stream, spki))
}

/// One request to a server whose attestation endpoint was checked ([`check_endpoint`]): the
/// connection is refused unless the server presents the TLS key that evidence bound
/// (`tls_spki_sha256`, hex). How officers hand a share to the restoring KMS they verified.
pub async fn request_attested(
    url: &str,
    tls_spki_sha256: &str,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), MeshError> {
    AttestedConnection::connect(url, tls_spki_sha256)
        .await?
        .send(method, path, body)
        .await
}

/// A keep-alive HTTP/1.1 connection to a server whose attestation endpoint was checked
/// ([`check_endpoint`]): opened only if the server presents the TLS key that evidence bound, and
/// reused for request after request (the KMS's rollback witnesses).
pub struct AttestedConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl std::fmt::Debug for AttestedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedConnection")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl AttestedConnection {
    /// Connects to `url`; refused ([`MeshError::TlsKeyChanged`]) unless the server's
    /// TLS key hashes to `tls_spki_sha256` (hex).
    pub async fn connect(url: &str, tls_spki_sha256: &str) -> Result<Self, MeshError> {
        let (addr, authority) = authority_of(url)?;
        let (tls_stream, spki) = connect_tls(&addr).await?;
        let got = hex::encode(crate::sha256(&spki));
        if got != tls_spki_sha256 {
            // Another key than the attested one: the connection is not to the server checked.
            return Err(MeshError::TlsKeyChanged {
                expected: tls_spki_sha256.to_owned(),
                got,
            });
        }
        Self::over(tls_stream, authority).await
    }

    /// HTTP/1.1 over `tls_stream`, whose key the caller has checked (or is about to check).
    async fn over(
        tls_stream: tokio_rustls::client::TlsStream<TcpStream>,
        authority: String,
    ) -> Result<Self, MeshError> {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Self { sender, authority })
    }

    /// Sends one request and reads the whole answer. An error means the connection is no
    /// longer usable: connect again.
    pub async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), MeshError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Full::new(body))
            .map_err(|e| MeshError::Protocol(e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| MeshError::Io(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}
