//! TLS for the mesh: TLS 1.3 only, ring, ephemeral self-signed certificates, and certificate
//! verifiers that check the handshake signatures but defer the *identity* question to
//! attestation.
//!
//! There is no CA in the mesh: a VM's identity is its launch measurement, proven by evidence
//! bound to the session ([`crate::binding`]). The certificate's only job is to carry the key the
//! handshake signature proves possession of, and that key is hashed into the evidence.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::MeshError;

/// The name clients put in SNI and servers put in their certificate. Not checked: identity comes
/// from attestation.
pub const MESH_SERVER_NAME: &str = "coffer-mesh";

/// A node's TLS key pair and self-signed certificate, generated at start-up and never stored.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spki_sha256", &hex::encode(crate::sha256(&self.spki)))
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it.
    pub fn generate() -> Result<Self, MeshError> {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![MESH_SERVER_NAME.to_owned()])
                .map_err(|e| MeshError::Tls(format!("generating the session key: {e}")))?;
        Ok(Self {
            spki: key_pair.public_key_der(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The public key, as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &'static str) -> impl Fn(rustls::Error) -> MeshError {
    move |e| MeshError::Tls(format!("{what}: {e}"))
}

/// A server config: TLS 1.3, a client certificate required (for mesh ports; see
/// [`server_config_without_client_auth`] for the endpoint browsers use).
pub fn server_config(identity: &TlsIdentity) -> Result<Arc<ServerConfig>, MeshError> {
    let provider = provider();
    let config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("server protocol versions"))?
        .with_client_cert_verifier(Arc::new(AttestationDeferred { provider }))
        .with_single_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_error("server certificate"))?;
    Ok(Arc::new(config))
}

/// A server config without client authentication, for the attestation endpoint.
pub fn server_config_without_client_auth(
    identity: &TlsIdentity,
) -> Result<Arc<ServerConfig>, MeshError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("server protocol versions"))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_error("server certificate"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config: TLS 1.3, presenting `identity`, or no certificate when `None` (the
/// attestation endpoint's callers).
pub fn client_config(identity: Option<&TlsIdentity>) -> Result<Arc<ClientConfig>, MeshError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("client protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestationDeferred { provider }));
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(vec![identity.cert.clone()], identity.key())
            .map_err(tls_error("client certificate"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server name clients send.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(MESH_SERVER_NAME)
            .unwrap_or_else(|_| unreachable_name()),
    )
}

#[allow(clippy::panic)] // MESH_SERVER_NAME is a constant valid DNS name; tested below.
fn unreachable_name() -> rustls::pki_types::DnsName<'static> {
    panic!("{MESH_SERVER_NAME} is not a DNS name")
}

/// Accepts any certificate as *identity* (attestation decides who the peer is) but verifies the
/// handshake signatures with the certificate's key, so the peer proves it holds that key.
#[derive(Debug)]
struct AttestationDeferred {
    provider: Arc<CryptoProvider>,
}

impl AttestationDeferred {
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for AttestationDeferred {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for AttestationDeferred {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, MeshError> {
    use x509_cert::der::{Decode, Encode};
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| MeshError::Tls(format!("peer certificate: {e}")))?;
    parsed
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| MeshError::Tls(format!("peer public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_valid_and_identities_differ() {
        let _ = server_name();
        let a = TlsIdentity::generate().unwrap();
        let b = TlsIdentity::generate().unwrap();
        assert_ne!(a.spki_der(), b.spki_der());
        assert_eq!(spki_of(a.cert_der()).unwrap(), a.spki_der());
    }
}
