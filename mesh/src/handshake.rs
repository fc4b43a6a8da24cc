//! The attested handshake: TLS 1.3, then one exchange of evidence each way, bound to the
//! session, then one verdict each way.
//!
//! ```text
//! client                                   server
//!   |--------- TLS 1.3 handshake (mutual, certificates self-signed) ---------|
//!   |  both: exporter = TLS-Exporter("EXPORTER-coffer-mesh-attestation-v1", 32)
//!   |--- Hello{role, deployment_id, evidence(REPORT_DATA = binding)} ------->|
//!   |<-- Hello{role, deployment_id, evidence(REPORT_DATA = binding)} --------|
//!   |--- Verdict{accepted | reason} ---------------------------------------->|
//!   |<-- Verdict{accepted | reason} -----------------------------------------|
//!   |==================== application data (HTTP/1.1) =======================|
//! ```
//!
//! Both hellos are written before either is read, so the exchange costs one round trip, and the
//! verdicts a second. Frames are a 4-byte big-endian length and a JSON body of at most
//! [`MAX_FRAME`] bytes.

use std::sync::Arc;
use std::time::Duration;

use coffer_evidence::{Evidence, EvidenceProvider};
use coffer_types::Role;
use coffer_verify::Timestamp;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::binding::{session_report_data, Side, EXPORTER_LABEL};
use crate::session::Session;
use crate::tls::{self, TlsIdentity};
use crate::{MeshError, PeerIdentity, Trust};

/// Largest frame accepted.
pub const MAX_FRAME: usize = 256 * 1024;

/// Longest a whole attested handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Protocol version in every hello.
const VERSION: u32 = 1;

/// How many evidence requests a node lets run at once by default. Every handshake and every
/// attestation-endpoint request asks the secure processor for a report before the peer is
/// known, so an unauthenticated flood is cut off here instead of queueing on the device.
pub const MAX_CONCURRENT_ATTESTATIONS: usize = 16;

/// The first frame each side sends (public as the wire format, and for adversarial tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version: 1.
    pub version: u32,
    /// The role the sender claims (its measurement must be pinned for it).
    pub role: Role,
    /// The sender's deployment.
    pub deployment_id: String,
    /// The sender's evidence, REPORT_DATA bound to this session.
    pub evidence: Evidence,
}

/// The second frame each side sends: whether it accepts the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictFrame {
    /// Accepted or not.
    pub accepted: bool,
    /// Why not.
    #[serde(default)]
    pub reason: String,
}

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = VERSION;

/// Everything a node needs to take part in the mesh.
pub struct MeshNode {
    role: Role,
    provider: Arc<dyn EvidenceProvider>,
    trust: Arc<Trust>,
    identity: TlsIdentity,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    attestations: Arc<tokio::sync::Semaphore>,
    attestation_limit: usize,
    /// What the node states about itself on its attestation endpoint, bound into that evidence
    /// ([`crate::binding::endpoint_report_data`]); set by the service when it knows them.
    claims: std::sync::RwLock<std::collections::BTreeMap<String, String>>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("role", &self.role)
            .field("trust", &self.trust)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// An established, attested connection.
pub struct AttestedStream<S> {
    /// The TLS stream, ready for application data.
    pub stream: S,
    /// The session: who the peer is, and when it must end.
    pub session: Session,
}

impl MeshNode {
    /// A node playing `role`, attesting with `provider`, trusting what `trust` says; its TLS key
    /// is generated here.
    pub fn new(
        role: Role,
        provider: Arc<dyn EvidenceProvider>,
        trust: Arc<Trust>,
    ) -> Result<Self, MeshError> {
        let identity = TlsIdentity::generate()?;
        Ok(Self {
            server: tls::server_config(&identity)?,
            client: tls::client_config(Some(&identity))?,
            role,
            provider,
            trust,
            identity,
            attestations: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_ATTESTATIONS)),
            attestation_limit: MAX_CONCURRENT_ATTESTATIONS,
            claims: std::sync::RwLock::new(std::collections::BTreeMap::new()),
        })
    }

    /// Sets the claims the attestation endpoint states and binds into each answer's evidence
    /// (the KMS: its audit-signer key; while restoring, its recovery recipient). Each answer
    /// carries the claims current when it was made, bound to its own nonce.
    pub fn set_claims(&self, claims: std::collections::BTreeMap<String, String>) {
        // A poisoned lock only means a writer panicked; the map is replaced whole.
        *self.claims.write().unwrap_or_else(|p| p.into_inner()) = claims;
    }

    /// The claims set with [`MeshNode::set_claims`] (empty if none).
    pub fn claims(&self) -> std::collections::BTreeMap<String, String> {
        self.claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets at most `limit` evidence requests run at once (at least 1); more are refused with
    /// [`MeshError::Busy`] rather than queued.
    pub fn with_attestation_limit(mut self, limit: usize) -> Self {
        let limit = limit.max(1);
        self.attestations = Arc::new(tokio::sync::Semaphore::new(limit));
        self.attestation_limit = limit;
        self
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This node's trust.
    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// This node's TLS identity.
    pub fn identity(&self) -> &TlsIdentity {
        &self.identity
    }

    /// This node's evidence provider.
    pub fn provider(&self) -> &Arc<dyn EvidenceProvider> {
        &self.provider
    }

    /// Connects to `addr`, expecting a peer of `expect`.
    pub async fn connect(
        &self,
        addr: &str,
        expect: Role,
    ) -> Result<AttestedStream<tokio_rustls::client::TlsStream<TcpStream>>, MeshError> {
        let attempt = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut tls = TlsConnector::from(self.client.clone())
                .connect(tls::server_name(), tcp)
                .await
                .map_err(|e| MeshError::Tls(e.to_string()))?;
            let (_, conn) = tls.get_ref();
            let (exporter, peer_cert) = session_keys(conn)?;
            let peer = self
                .exchange(&mut tls, Side::Client, &exporter, &peer_cert, &[expect])
                .await?;
            Ok(AttestedStream {
                stream: tls,
                session: Session::new(peer, self.trust.clone()),
            })
        };
        timeout(attempt).await
    }

    /// Accepts a connection from a peer whose role is one of `accept`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        accept: &[Role],
    ) -> Result<AttestedStream<tokio_rustls::server::TlsStream<TcpStream>>, MeshError> {
        let attempt = async {
            tcp.set_nodelay(true)?;
            let mut tls = TlsAcceptor::from(self.server.clone())
                .accept(tcp)
                .await
                .map_err(|e| MeshError::Tls(e.to_string()))?;
            let (_, conn) = tls.get_ref();
            let (exporter, peer_cert) = session_keys(conn)?;
            let peer = self
                .exchange(&mut tls, Side::Server, &exporter, &peer_cert, accept)
                .await?;
            Ok(AttestedStream {
                stream: tls,
                session: Session::new(peer, self.trust.clone()),
            })
        };
        timeout(attempt).await
    }

    /// This node's evidence for a session (on a blocking thread: providers talk to devices).
    pub async fn own_evidence(&self, report_data: [u8; 64]) -> Result<Evidence, MeshError> {
        let permit = self
            .attestations
            .clone()
            .try_acquire_owned()
            .map_err(|_| MeshError::Busy(self.attestation_limit))?;
        let provider = self.provider.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            provider.attest(&report_data)
        })
        .await
        .map_err(|e| MeshError::OwnEvidence(e.to_string()))?
        .map_err(|e| MeshError::OwnEvidence(e.to_string()))
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        side: Side,
        exporter: &[u8; 32],
        peer_cert: &CertificateDer<'static>,
        accept: &[Role],
    ) -> Result<PeerIdentity, MeshError> {
        let own = session_report_data(side, self.role, exporter, self.identity.cert_der());
        let evidence = self.own_evidence(own).await?;
        let hello = Hello {
            version: VERSION,
            role: self.role,
            deployment_id: self.trust.deployment().deployment_id.clone(),
            evidence,
        };
        write_frame(stream, &hello).await?;
        let theirs: Hello = read_frame(stream).await?;
        let outcome = self.check_hello(&theirs, side, exporter, peer_cert, accept);
        let verdict = VerdictFrame {
            accepted: outcome.is_ok(),
            reason: outcome
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        write_frame(stream, &verdict).await?;
        let peer_verdict: VerdictFrame = match read_frame(stream).await {
            Ok(v) => v,
            // The peer may close right after refusing us; our own reason comes first.
            Err(e) => return outcome.and(Err(e)),
        };
        let peer = outcome?;
        if !peer_verdict.accepted {
            return Err(MeshError::RefusedByPeer(peer_verdict.reason));
        }
        Ok(peer)
    }

    fn check_hello(
        &self,
        hello: &Hello,
        side: Side,
        exporter: &[u8; 32],
        peer_cert: &CertificateDer<'static>,
        accept: &[Role],
    ) -> Result<PeerIdentity, MeshError> {
        if hello.version != VERSION {
            return Err(MeshError::Protocol(format!(
                "hello version {}, expected {VERSION}",
                hello.version
            )));
        }
        if !accept.contains(&hello.role) {
            return Err(MeshError::UnexpectedRole {
                expected: accept
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                got: hello.role,
            });
        }
        let ours = &self.trust.deployment().deployment_id;
        if &hello.deployment_id != ours {
            return Err(MeshError::WrongDeploymentId {
                expected: ours.clone(),
                got: hello.deployment_id.clone(),
            });
        }
        let expected = session_report_data(side.other(), hello.role, exporter, peer_cert);
        let now = Timestamp::now().map_err(|e| MeshError::Protocol(e.to_string()))?;
        self.trust
            .verify(hello.role, &hello.evidence, expected, now)
    }
}

async fn timeout<T>(
    attempt: impl std::future::Future<Output = Result<T, MeshError>>,
) -> Result<T, MeshError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(
            MeshError::Timeout(HANDSHAKE_TIMEOUT.as_millis() as u64),
        ))
}

/// The session's exporter value and the peer's certificate.
pub fn session_keys<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<([u8; 32], CertificateDer<'static>), MeshError> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err(MeshError::Tls("the session is not TLS 1.3".into()));
    }
    let exporter = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| MeshError::Tls(format!("exporter: {e}")))?;
    let peer_cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| MeshError::Tls("the peer presented no certificate".into()))?
        .clone()
        .into_owned();
    Ok((exporter, peer_cert))
}

/// Writes one frame.
pub async fn write_frame<S: AsyncWrite + Unpin, T: Serialize>(
    stream: &mut S,
    value: &T,
) -> Result<(), MeshError> {
    let body = serde_json::to_vec(value).map_err(|e| MeshError::Protocol(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(MeshError::Protocol(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            body.len()
        )));
    }
    let len = u32::try_from(body.len()).map_err(|e| MeshError::Protocol(e.to_string()))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<S: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    stream: &mut S,
) -> Result<T, MeshError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            MeshError::Protocol(
                "the peer closed the connection during the attested handshake".into(),
            )
        } else {
            MeshError::from(e)
        }
    })?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(MeshError::Protocol(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| MeshError::Protocol(format!("bad frame: {e}")))
}
