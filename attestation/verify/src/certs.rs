//! X.509 certificates as AMD issues them: parsing (DER, PEM, PEM bundles), the raw signed bytes,
//! RSASSA-PSS and ECDSA keys, and the VCEK/VLEK extensions.
//!
//! Parsing is strict DER (`x509-cert`); the signature is later checked over the TBS bytes exactly
//! as they appear in the input, never over a re-encoding. AMD's profile is narrow and checked
//! here: ARK, ASK, ASVK, VCEK and VLEK are all signed with RSASSA-PSS, SHA-384, MGF1-SHA-384,
//! a 48-byte salt; ARK/ASK/ASVK keys are RSA (4096 bits); VCEK/VLEK keys are ECDSA P-384.
//!
//! VEK extensions (AMD KDS specification, #57230; OIDs under 1.3.6.1.4.1.3704.1):
//! `.1` structVersion, `.2` productName (IA5String), `.3.1` blSPL, `.3.2` teeSPL, `.3.3` snpSPL,
//! `.3.8` ucodeSPL, `.3.9` fmcSPL (Turin), each a DER INTEGER; `.4` hwID (VCEK only: 64 raw bytes,
//! 8 on Turin, sometimes wrapped in an OCTET STRING); `.5` cspID (VLEK only).

use std::fmt;

use p384::ecdsa::VerifyingKey as P384Key;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::der::asn1::{AnyRef, Ia5StringRef, OctetStringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};

use crate::error::{CertError, ExtensionError};
use crate::tcb::Tcb;
use crate::time::Timestamp;

/// id-RSASSA-PSS (RFC 4055).
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-at-commonName.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// RSASSA-PSS-params { SHA-384, MGF1(SHA-384), salt 48, trailer 1 }, as AMD encodes them (with the
/// DEFAULT trailer field written out).
const PSS_SHA384_PARAMS: &[u8] = &[
    0x30, 0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];
/// The same parameters in canonical DER (trailer field omitted).
const PSS_SHA384_PARAMS_DER: &[u8] = &[
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30,
];

/// A parsed X.509 certificate that keeps its exact DER bytes.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    tbs: Vec<u8>,
    cert: x509_cert::Certificate,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.cert.tbs_certificate.subject.to_string())
            .field("sha256", &hex::encode(self.sha256()))
            .finish()
    }
}

impl Certificate {
    /// Parses one DER certificate (the whole input, nothing after it).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert =
            x509_cert::Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
        let tbs = raw_tbs(der)
            .map_err(|e| CertError::Der(e.to_string()))?
            .to_vec();
        Ok(Self {
            der: der.to_vec(),
            tbs,
            cert,
        })
    }

    /// Parses exactly one PEM certificate (text around the block is ignored, as OpenSSL does).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let mut certs = Self::pem_blocks(pem)?;
        match certs.len() {
            1 => certs.pop().ok_or(CertError::Empty),
            count => Err(CertError::SeveralCertificates { count }),
        }
    }

    /// Parses one certificate given as PEM or DER (PEM if the input contains a BEGIN line).
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, CertError> {
        if looks_like_pem(bytes) {
            Self::from_pem(bytes)
        } else {
            Self::from_der(bytes)
        }
    }

    /// Parses every `CERTIFICATE` block of a PEM bundle, in order (AMD's `cert_chain` is the ASK
    /// then the ARK). Blank lines and text between blocks are ignored; a block that does not
    /// decode is an error. A DER input gives one certificate.
    pub fn from_pem_bundle(bytes: &[u8]) -> Result<Vec<Self>, CertError> {
        if looks_like_pem(bytes) {
            Self::pem_blocks(bytes)
        } else {
            Ok(vec![Self::from_der(bytes)?])
        }
    }

    /// Every PEM block of `bytes`, each of which must be a CERTIFICATE; at least one.
    fn pem_blocks(bytes: &[u8]) -> Result<Vec<Self>, CertError> {
        const BEGIN: &[u8] = b"-----BEGIN ";
        const END: &[u8] = b"-----END ";
        let mut certs = Vec::new();
        let mut rest = bytes;
        while let Some(start) = find(rest, BEGIN) {
            let block = &rest[start..];
            let end_line = find(block, END).ok_or(CertError::PemUnterminated)?;
            // The END line runs to its closing dashes.
            let after_end = &block[end_line + END.len()..];
            let close = find(after_end, b"-----").ok_or(CertError::PemUnterminated)?;
            let block_len = end_line + END.len() + close + 5;
            let (label, der) = x509_cert::der::pem::decode_vec(&block[..block_len])
                .map_err(|e| CertError::Pem(e.to_string()))?;
            if label != "CERTIFICATE" {
                return Err(CertError::PemLabel {
                    label: label.to_owned(),
                });
            }
            certs.push(Self::from_der(&der)?);
            rest = &block[block_len..];
        }
        if certs.is_empty() {
            return Err(CertError::Empty);
        }
        Ok(certs)
    }

    /// The certificate's DER bytes, exactly as given.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER bytes (the usual certificate fingerprint).
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// The subject's common name, if it has one.
    pub fn subject_cn(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.subject)
    }

    /// The issuer's common name, if it has one.
    pub fn issuer_cn(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.issuer)
    }

    /// The subject as an RFC 4514 string.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> Timestamp {
        Timestamp::from_der(self.cert.tbs_certificate.validity.not_before.to_date_time())
    }

    /// End of the validity period (inclusive, RFC 5280).
    pub fn not_after(&self) -> Timestamp {
        Timestamp::from_der(self.cert.tbs_certificate.validity.not_after.to_date_time())
    }

    /// Whether `at` lies within `[notBefore, notAfter]`.
    pub fn valid_at(&self, at: Timestamp) -> bool {
        self.not_before() <= at && at <= self.not_after()
    }

    /// Whether this certificate's issuer name is exactly `issuer`'s subject name.
    pub fn issued_by_name(&self, issuer: &Certificate) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    /// Checks that `issuer` signed this certificate with AMD's RSASSA-PSS profile, over the exact
    /// TBS bytes. The error says what failed, for a check's "got".
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<(), String> {
        let outer = &self.cert.signature_algorithm;
        let inner = &self.cert.tbs_certificate.signature;
        if outer != inner {
            return Err("signatureAlgorithm differs from the TBS signature field".into());
        }
        if outer.oid != RSASSA_PSS {
            return Err(format!(
                "signature algorithm {} is not RSASSA-PSS",
                outer.oid
            ));
        }
        let params = outer
            .parameters
            .as_ref()
            .ok_or("RSASSA-PSS without parameters")?
            .to_der()
            .map_err(|e| format!("RSASSA-PSS parameters: {e}"))?;
        if params != PSS_SHA384_PARAMS && params != PSS_SHA384_PARAMS_DER {
            return Err(format!(
                "RSASSA-PSS parameters are not SHA-384/MGF1-SHA-384/salt 48: {}",
                hex::encode(params)
            ));
        }
        let key = issuer.rsa_public_key()?;
        let signature = self
            .cert
            .signature
            .as_bytes()
            .ok_or("signature BIT STRING has unused bits")?;
        let signature = rsa::pss::Signature::try_from(signature)
            .map_err(|e| format!("signature does not decode: {e}"))?;
        rsa::pss::VerifyingKey::<Sha384>::new(key)
            .verify(&self.tbs, &signature)
            .map_err(|_| {
                format!(
                    "RSASSA-PSS signature does not verify with the key of {}",
                    issuer.subject()
                )
            })
    }

    /// The subject's RSA public key.
    pub(crate) fn rsa_public_key(&self) -> Result<RsaPublicKey, String> {
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| e.to_string())?;
        RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| format!("{} has no usable RSA public key: {e}", self.subject()))
    }

    /// The subject's ECDSA P-384 public key (VCEK/VLEK).
    pub fn p384_public_key(&self) -> Result<P384Key, String> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != EC_PUBLIC_KEY {
            return Err(format!(
                "public key algorithm {} is not id-ecPublicKey",
                spki.algorithm.oid
            ));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve != Some(SECP384R1) {
            return Err("public key curve is not secp384r1 (P-384)".into());
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or("public key BIT STRING has unused bits")?;
        P384Key::from_sec1_bytes(point).map_err(|_| "public key is not a valid P-384 point".into())
    }

    /// The AMD VCEK/VLEK extensions.
    pub fn vek_extensions(&self) -> Result<VekExtensions, ExtensionError> {
        VekExtensions::parse(self)
    }
}

/// The AMD extensions of a VCEK or VLEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VekExtensions {
    /// structVersion (0 Milan/Genoa, 1 Turin), if present.
    pub struct_version: Option<u8>,
    /// productName (e.g. `Milan-B0`, `Genoa`, `Turin`), if present.
    pub product_name: Option<String>,
    /// The TCB the key was derived for (blSPL, teeSPL, snpSPL, ucodeSPL and Turin's fmcSPL).
    pub tcb: Tcb,
    /// hwID: the chip ID (VCEK only); 64 bytes, or 8 on Turin.
    pub hw_id: Option<Vec<u8>>,
    /// cspID: the cloud provider a VLEK was issued to (VLEK only).
    pub csp_id: Option<String>,
}

struct Ext {
    name: &'static str,
    oid: &'static str,
}

const STRUCT_VERSION: Ext = ext("structVersion", "1.3.6.1.4.1.3704.1.1");
const PRODUCT_NAME: Ext = ext("productName", "1.3.6.1.4.1.3704.1.2");
const BL_SPL: Ext = ext("blSPL", "1.3.6.1.4.1.3704.1.3.1");
const TEE_SPL: Ext = ext("teeSPL", "1.3.6.1.4.1.3704.1.3.2");
const SNP_SPL: Ext = ext("snpSPL", "1.3.6.1.4.1.3704.1.3.3");
const UCODE_SPL: Ext = ext("ucodeSPL", "1.3.6.1.4.1.3704.1.3.8");
const FMC_SPL: Ext = ext("fmcSPL", "1.3.6.1.4.1.3704.1.3.9");
const HW_ID: Ext = ext("hwID", "1.3.6.1.4.1.3704.1.4");
const CSP_ID: Ext = ext("cspID", "1.3.6.1.4.1.3704.1.5");

const fn ext(name: &'static str, oid: &'static str) -> Ext {
    Ext { name, oid }
}

impl VekExtensions {
    fn parse(cert: &Certificate) -> Result<Self, ExtensionError> {
        let exts = cert
            .cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default();
        // The value (inner DER) of one extension, refusing duplicates.
        let find = |e: &Ext| -> Result<Option<&[u8]>, ExtensionError> {
            let mut found = exts
                .iter()
                .filter(|x| x.extn_id.to_string() == e.oid)
                .map(|x| x.extn_value.as_bytes());
            let first = found.next();
            if found.next().is_some() {
                return Err(ExtensionError::Duplicate {
                    name: e.name,
                    oid: e.oid,
                });
            }
            Ok(first)
        };
        let malformed = |e: &Ext, reason: String| ExtensionError::Malformed {
            name: e.name,
            reason,
        };
        let spl = |e: &Ext| -> Result<Option<u8>, ExtensionError> {
            find(e)?
                .map(|v| {
                    u8::from_der(v)
                        .map_err(|err| malformed(e, format!("not a 0..255 INTEGER: {err}")))
                })
                .transpose()
        };
        let required = |e: &Ext| -> Result<u8, ExtensionError> {
            spl(e)?.ok_or(ExtensionError::Missing {
                name: e.name,
                oid: e.oid,
            })
        };
        let string = |e: &Ext| -> Result<Option<String>, ExtensionError> {
            find(e)?
                .map(|v| {
                    any_string(v)
                        .ok_or_else(|| malformed(e, "not an IA5/UTF8/Printable string".into()))
                })
                .transpose()
        };
        let struct_version = spl(&STRUCT_VERSION)?;
        let product_name = find(&PRODUCT_NAME)?
            .map(|v| {
                Ia5StringRef::from_der(v)
                    .map(|s| s.as_str().to_owned())
                    .map_err(|err| malformed(&PRODUCT_NAME, format!("not an IA5String: {err}")))
            })
            .transpose()?;
        let tcb = Tcb {
            fmc: spl(&FMC_SPL)?,
            bl: required(&BL_SPL)?,
            tee: required(&TEE_SPL)?,
            snp: required(&SNP_SPL)?,
            ucode: required(&UCODE_SPL)?,
        };
        let hw_id = find(&HW_ID)?
            .map(|v| {
                decode_hw_id(v).ok_or_else(|| {
                    malformed(
                        &HW_ID,
                        format!(
                            "{} bytes, expected 64 or 8 (raw or in an OCTET STRING)",
                            v.len()
                        ),
                    )
                })
            })
            .transpose()?;
        let csp_id = string(&CSP_ID)?;
        Ok(Self {
            struct_version,
            product_name,
            tcb,
            hw_id,
            csp_id,
        })
    }
}

/// hwID is 64 raw bytes (8 on Turin), or the same wrapped in an OCTET STRING.
fn decode_hw_id(value: &[u8]) -> Option<Vec<u8>> {
    if matches!(value.len(), 64 | 8) {
        return Some(value.to_vec());
    }
    let inner = OctetStringRef::from_der(value).ok()?;
    matches!(inner.as_bytes().len(), 64 | 8).then(|| inner.as_bytes().to_vec())
}

/// A DER string of any of the usual string types, as text.
fn any_string(value: &[u8]) -> Option<String> {
    let any = AnyRef::from_der(value).ok()?;
    match any.tag() {
        Tag::Ia5String | Tag::Utf8String | Tag::PrintableString => {
            std::str::from_utf8(any.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .and_then(|atv| atv.value.to_der().ok())
        .and_then(|der| any_string(&der))
}

/// The TBSCertificate TLV exactly as it appears in `der`.
fn raw_tbs(der: &[u8]) -> x509_cert::der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let tbs = reader.sequence(|seq| {
        let tbs = seq.tlv_bytes()?;
        seq.tlv_bytes()?; // signatureAlgorithm
        seq.tlv_bytes()?; // signatureValue
        Ok(tbs)
    })?;
    reader.finish(tbs)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    find(bytes, b"-----BEGIN ").is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILAN_VCEK: &[u8] = include_bytes!("../testdata/trustee/test-vcek.der");
    const TURIN_VCEK: &[u8] = include_bytes!("../testdata/openanolis-trustee/turin-vcek.der");
    const VLEK: &[u8] = include_bytes!("../testdata/trustee/test-vlek.der");

    #[test]
    fn reads_a_milan_vceks_extensions() {
        let cert = Certificate::from_der(MILAN_VCEK).unwrap();
        assert_eq!(cert.subject_cn().as_deref(), Some("SEV-VCEK"));
        assert_eq!(cert.issuer_cn().as_deref(), Some("SEV-Milan"));
        let ext = cert.vek_extensions().unwrap();
        assert_eq!(ext.tcb.to_string(), "bl=3 tee=0 snp=8 ucode=115");
        assert_eq!(ext.product_name.as_deref(), Some("Milan-B0"));
        assert_eq!(ext.hw_id.as_ref().map(Vec::len), Some(64));
        assert_eq!(ext.csp_id, None);
        assert!(cert.p384_public_key().is_ok());
        assert!(cert.rsa_public_key().is_err());
    }

    #[test]
    fn reads_a_turin_vceks_fmc_and_short_hw_id() {
        let ext = Certificate::from_der(TURIN_VCEK)
            .unwrap()
            .vek_extensions()
            .unwrap();
        assert_eq!(ext.tcb.to_string(), "fmc=1 bl=3 tee=2 snp=5 ucode=97");
        assert_eq!(ext.hw_id.as_ref().map(Vec::len), Some(8));
        assert_eq!(ext.struct_version, Some(1));
    }

    #[test]
    fn reads_a_vleks_csp_id() {
        let ext = Certificate::from_der(VLEK)
            .unwrap()
            .vek_extensions()
            .unwrap();
        assert_eq!(ext.csp_id.as_deref(), Some("CN=cc-us-east-2.amazonaws.com"));
        assert_eq!(ext.hw_id, None);
    }

    #[test]
    fn reads_legacy_and_wrapped_hw_ids() {
        for bytes in [
            &include_bytes!("../testdata/trustee/test-vcek-invalid-legacy.der")[..],
            &include_bytes!("../testdata/trustee/test-vcek-invalid-new.der")[..],
        ] {
            let ext = Certificate::from_der(bytes)
                .unwrap()
                .vek_extensions()
                .unwrap();
            assert_eq!(ext.hw_id.as_ref().map(Vec::len), Some(64));
        }
        let legacy = include_bytes!("../testdata/trustee/test-vcek-invalid-legacy.der");
        let ext = Certificate::from_der(legacy)
            .unwrap()
            .vek_extensions()
            .unwrap();
        assert_eq!(ext.tcb.ucode, 0xa9);
    }

    #[test]
    fn pem_bundles_split_in_order_even_with_trailing_blank_lines() {
        let bundle = include_bytes!("../testdata/trustee/az-snp-vtpm_vcek.pem");
        let certs = Certificate::from_pem_bundle(bundle).unwrap();
        let cns: Vec<_> = certs.iter().map(|c| c.subject_cn().unwrap()).collect();
        assert_eq!(cns, ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]);
        assert!(matches!(
            Certificate::from_pem(bundle),
            Err(CertError::SeveralCertificates { count: 3 })
        ));
        let der = certs[0].der().to_vec();
        assert_eq!(Certificate::from_pem_or_der(&der).unwrap(), certs[0]);
    }

    #[test]
    fn bad_pem_is_refused_by_reason() {
        assert_eq!(Certificate::from_pem(b"hello"), Err(CertError::Empty));
        assert_eq!(
            Certificate::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(CertError::PemUnterminated)
        );
        assert!(matches!(
            Certificate::from_pem(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CertError::PemLabel { .. } | CertError::Pem(_))
        ));
        assert!(matches!(
            Certificate::from_der(&MILAN_VCEK[..100]),
            Err(CertError::Der(_))
        ));
        let mut trailing = MILAN_VCEK.to_vec();
        trailing.push(0);
        assert!(matches!(
            Certificate::from_der(&trailing),
            Err(CertError::Der(_))
        ));
    }

    #[test]
    fn the_signed_bytes_are_the_inputs_tbs() {
        let cert = Certificate::from_der(MILAN_VCEK).unwrap();
        let tbs_der = cert.cert.tbs_certificate.to_der().unwrap();
        assert_eq!(cert.tbs, tbs_der);
        // The TBS starts 4 bytes in (outer SEQUENCE header with a 2-byte length).
        assert_eq!(&MILAN_VCEK[4..4 + cert.tbs.len()], &cert.tbs[..]);
    }
}
