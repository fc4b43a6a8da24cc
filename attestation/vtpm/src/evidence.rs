//! Azure vTPM evidence as one document: the JSON that the `az-snp-vtpm` attester of Confidential
//! Containers' Trustee sends, versions 1 and 2. Accepting it as it is lets `coffer verify azure`
//! check evidence from existing Azure CVMs and lets our own attester speak a known format.
//!
//! - version 1: `{"quote": {"signature": [u8], "message": [u8], "pcrs": [[u8; 32]]},
//!   "report": [u8] (the HCL report), "vcek": "PEM"}`
//! - version 2: `{"version": 2, "tpm_quote": {"signature": hex, "message": hex, "pcrs": [hex]},
//!   "hcl_report": base64url, "vcek": base64url DER}`
//!
//! `message` is the TPMS_ATTEST the AK signed; `signature` the raw RSASSA-PKCS1-v1_5/SHA-256
//! signature (the Azure AK's scheme).

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use serde::Deserialize;

use crate::quote::Quote;
use crate::tpm::{alg, Signature};

/// Evidence parsed from the document, not yet verified.
#[derive(Debug, Clone)]
pub struct AzureEvidence {
    /// The HCL report (vTPM NV 0x01400001).
    pub hcl_report: Vec<u8>,
    /// The VCEK, DER or PEM bytes.
    pub vcek: Vec<u8>,
    /// The quote by the vTPM AK.
    pub quote: Quote,
}

/// Why an evidence document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Neither version's shape.
    #[error("not Trustee az-snp-vtpm evidence (version 1 or 2): {0}")]
    Shape(String),
    /// A field's encoding is wrong.
    #[error("evidence field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    V2 {
        version: u32,
        tpm_quote: HexQuote,
        hcl_report: String,
        vcek: String,
    },
    V1 {
        quote: ByteQuote,
        report: Vec<u8>,
        vcek: String,
    },
}

#[derive(Deserialize)]
struct HexQuote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

#[derive(Deserialize)]
struct ByteQuote {
    signature: Vec<u8>,
    message: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

/// Reads a Trustee `az-snp-vtpm` evidence document.
pub fn parse_trustee_json(bytes: &[u8]) -> Result<AzureEvidence, EvidenceError> {
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| EvidenceError::Shape(e.to_string()))?;
    match document {
        Document::V2 {
            version,
            tpm_quote,
            hcl_report,
            vcek,
        } => {
            if version != 2 {
                return Err(EvidenceError::Field {
                    field: "version",
                    reason: format!("{version} is not 2"),
                });
            }
            let pcrs = tpm_quote
                .pcrs
                .iter()
                .map(|p| pcr(&hex_field("tpm_quote.pcrs", p)?))
                .collect::<Result<_, _>>()?;
            Ok(AzureEvidence {
                hcl_report: base64url_field("hcl_report", &hcl_report)?,
                vcek: base64url_field("vcek", &vcek)?,
                quote: quote(
                    hex_field("tpm_quote.signature", &tpm_quote.signature)?,
                    hex_field("tpm_quote.message", &tpm_quote.message)?,
                    pcrs,
                ),
            })
        }
        Document::V1 {
            quote: q,
            report,
            vcek,
        } => {
            let pcrs = q.pcrs.iter().map(|p| pcr(p)).collect::<Result<_, _>>()?;
            Ok(AzureEvidence {
                hcl_report: report,
                vcek: vcek.into_bytes(),
                quote: quote(q.signature, q.message, pcrs),
            })
        }
    }
}

/// Writes evidence as a Trustee `az-snp-vtpm` version 2 document (the shape
/// [`parse_trustee_json`] reads back): quote fields hex, HCL report and VCEK base64url without
/// padding. A PEM VCEK is written as its DER, as Trustee does. Only an RSASSA/SHA-256 quote
/// signature fits the format (it carries the raw signature, not a TPMT_SIGNATURE).
pub fn to_trustee_json_v2(evidence: &AzureEvidence) -> Result<String, EvidenceError> {
    let signature = match evidence.quote.signature() {
        Signature::RsaSsa {
            hash: alg::SHA256,
            sig,
        } => sig,
        other => {
            return Err(EvidenceError::Field {
                field: "tpm_quote.signature",
                reason: format!(
                    "{} cannot be written: the format holds an RSASSA/SHA-256 signature",
                    other.describe()
                ),
            })
        }
    };
    let vcek = pem_to_der(&evidence.vcek)?;
    let pcrs: Vec<String> = evidence
        .quote
        .pcr_values()
        .iter()
        .map(hex::encode)
        .collect();
    Ok(serde_json::json!({
        "version": 2,
        "tpm_quote": {
            "signature": hex::encode(signature),
            "message": hex::encode(evidence.quote.attest_bytes()),
            "pcrs": pcrs,
        },
        "hcl_report": Base64UrlUnpadded::encode_string(&evidence.hcl_report),
        "vcek": Base64UrlUnpadded::encode_string(&vcek),
    })
    .to_string())
}

/// The DER inside a PEM document; other bytes (DER already) unchanged.
fn pem_to_der(bytes: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(bytes.to_vec());
    };
    if !text.trim_start().starts_with("-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Base64::decode_vec(&body).map_err(|e| EvidenceError::Field {
        field: "vcek",
        reason: format!("PEM body is not base64: {e}"),
    })
}

fn quote(signature: Vec<u8>, message: Vec<u8>, pcrs: Vec<[u8; 32]>) -> Quote {
    let signature = Signature::RsaSsa {
        hash: alg::SHA256,
        sig: signature,
    };
    Quote::from_parts(signature, message, pcrs)
}

fn pcr(bytes: &[u8]) -> Result<[u8; 32], EvidenceError> {
    bytes.try_into().map_err(|_| EvidenceError::Field {
        field: "pcrs",
        reason: format!("a sha256 PCR value has {} bytes, not 32", bytes.len()),
    })
}

fn hex_field(field: &'static str, text: &str) -> Result<Vec<u8>, EvidenceError> {
    hex::decode(text).map_err(|e| EvidenceError::Field {
        field,
        reason: e.to_string(),
    })
}

fn base64url_field(field: &'static str, text: &str) -> Result<Vec<u8>, EvidenceError> {
    Base64UrlUnpadded::decode_vec(text.trim_end_matches('=')).map_err(|e| EvidenceError::Field {
        field,
        reason: e.to_string(),
    })
}
