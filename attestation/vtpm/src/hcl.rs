//! The Azure HCL report: the contents of vTPM NV index 0x01400001 on an Azure confidential VM.
//!
//! Microsoft's paravisor (the HCL) requests the hardware report at boot and stores it in the
//! vTPM's NV space together with its runtime claims (a JSON document that carries the vTPM
//! attestation key). The hardware report's `report_data` holds SHA-256 of those claims, so a
//! verified hardware report vouches for the AK, and the AK vouches for the TPM quote.
//!
//! Layout (little-endian u32s; Microsoft, "Confidential VM Guest Attestation Design Detail",
//! checked against real reports in `testdata/azure/`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | signature "HCLA" |
//! | 4 | 4 | version (1 or 2 seen) |
//! | 8 | 4 | report size (not the hardware report size: 1819 / 2438 in the samples; unused) |
//! | 12 | 4 | request type (2) |
//! | 16 | 4 | status |
//! | 20 | 12 | reserved |
//! | 32 | 1184 | hardware report: the raw SEV-SNP ATTESTATION_REPORT (or a TDX TDREPORT, zero-padded) |
//! | 1216 | 20 | IGVM request data: data_size, version (1), report_type (2 SNP, 4 TDX), hash_type (1 SHA-256), claims size N |
//! | 1236 | N | runtime claims JSON (UTF-8) |
//!
//! Bytes after the claims (zero padding up to the NV size, which is 2600 on Azure and at most
//! 2048 on swtpm) are neither covered by the binding nor read. The parser does not assume any NV
//! size.
//!
//! **Not checked here:** the hardware report's own signature, TCB, policy and launch measurement.
//! [`HclReport::snp_report`] hands those 1184 bytes to the SEV-SNP report verifier, which must
//! accept them before anything in this report is trusted.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ak::{AkPublicKey, KeyError};
use crate::check::{CheckId, CheckResult, Verification};
use crate::reader::{Reader, Truncated};

/// "HCLA", the report's first four bytes.
pub const HCL_SIGNATURE: [u8; 4] = *b"HCLA";
/// Offset of the hardware report.
pub const HARDWARE_REPORT_OFFSET: usize = 32;
/// Size of the hardware report slot: one SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI, Table 22).
pub const HARDWARE_REPORT_SIZE: usize = 1184;
/// Offset of the IGVM request data header.
pub const IGVM_REQUEST_DATA_OFFSET: usize = HARDWARE_REPORT_OFFSET + HARDWARE_REPORT_SIZE;
/// Size of the IGVM request data header.
pub const IGVM_REQUEST_DATA_SIZE: usize = 20;
/// Offset of the runtime claims JSON.
pub const CLAIMS_OFFSET: usize = IGVM_REQUEST_DATA_OFFSET + IGVM_REQUEST_DATA_SIZE;
/// The `kid` of the vTPM attestation key in the runtime claims.
pub const AK_KID: &str = "HCLAkPub";

/// Offset of REPORT_DATA in the SEV-SNP ATTESTATION_REPORT.
const SNP_REPORT_DATA_OFFSET: usize = 0x50;
/// Offset of REPORTMACSTRUCT.REPORTDATA in the TDX TDREPORT.
const TDX_REPORT_DATA_OFFSET: usize = 128;
/// IGVM request data `report_type` values.
const REPORT_TYPE_SNP: u32 = 2;
const REPORT_TYPE_TDX: u32 = 4;
/// IGVM request data `hash_type` for SHA-256 (2 and 3 are SHA-384 and SHA-512).
const HASH_TYPE_SHA256: u32 = 1;

/// Why bytes are not an HCL report, or its claims are unusable.
#[derive(Debug, thiserror::Error)]
pub enum HclError {
    /// The report is shorter than a field it must hold.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// The first four bytes are not "HCLA".
    #[error("HCL report signature is {got:02x?}, expected \"HCLA\"")]
    Signature {
        /// The bytes found.
        got: [u8; 4],
    },
    /// The IGVM request data names a hardware report type other than SNP (2) or TDX (4).
    #[error("IGVM request data report_type {got} is neither SNP (2) nor TDX (4)")]
    ReportType {
        /// The value found.
        got: u32,
    },
    /// The IGVM request data version is not 1, the only layout known.
    #[error("IGVM request data version {got} is not 1")]
    RuntimeDataVersion {
        /// The value found.
        got: u32,
    },
    /// The claims hash is not SHA-256. Azure documents SHA-384 (2) and SHA-512 (3) too, but no
    /// report using them has been seen, so where their digest goes is unverified: refused.
    #[error("IGVM request data hash_type {got} is not SHA-256 (1)")]
    HashType {
        /// The value found.
        got: u32,
    },
    /// `data_size` is not the 20-byte header plus the claims size.
    #[error("IGVM request data_size {data_size} is not 20 + claims size {claims_size}")]
    RuntimeDataSize {
        /// The data_size field.
        data_size: u32,
        /// The claims size field.
        claims_size: u32,
    },
    /// The runtime claims are not the expected JSON.
    #[error("runtime claims are not valid JSON of the expected shape: {0}")]
    ClaimsJson(#[source] serde_json::Error),
    /// No JWK with `kid` "HCLAkPub" in the claims.
    #[error("runtime claims hold no JWK with kid \"HCLAkPub\"")]
    NoAk,
    /// More than one JWK with `kid` "HCLAkPub": which one the HCL meant is ambiguous.
    #[error("runtime claims hold {count} JWKs with kid \"HCLAkPub\"")]
    DuplicateAk {
        /// How many.
        count: usize,
    },
    /// The HCLAkPub JWK is not an acceptable RSA key.
    #[error("HCLAkPub JWK: {0}")]
    Ak(#[from] KeyError),
    /// `user-data` is not 128 hex characters.
    #[error("runtime claims user-data is not 64 bytes of hex")]
    UserData,
}

/// The kind of hardware report in the HCL report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareReportType {
    /// A 1184-byte SEV-SNP ATTESTATION_REPORT.
    Snp,
    /// A 1024-byte TDX TDREPORT, zero-padded to 1184.
    Tdx,
}

/// The 32-byte HCL header. Informational: nothing in it is covered by the hardware report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HclHeader {
    /// Header version (1 in the 2023 SNP sample, 2 in newer reports).
    pub version: u32,
    /// The "report size" field (in practice the used length of the NV data).
    pub report_size: u32,
    /// Request type (2).
    pub request_type: u32,
    /// Status (0).
    pub status: u32,
}

/// A parsed HCL report. Parsing checks structure only; [`HclReport::check_binding`] checks the
/// claims against `report_data`, and [`HclReport::ak_public_key`] extracts the AK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    header: HclHeader,
    hardware_report: Box<[u8; HARDWARE_REPORT_SIZE]>,
    report_type: HardwareReportType,
    claims_json: Vec<u8>,
}

impl HclReport {
    /// Parse the contents of NV index 0x01400001 (any length that holds the claims).
    pub fn parse(bytes: &[u8]) -> Result<Self, HclError> {
        let mut r = Reader::new(bytes);
        let signature: [u8; 4] = r.array("HCL header signature")?;
        if signature != HCL_SIGNATURE {
            return Err(HclError::Signature { got: signature });
        }
        let header = HclHeader {
            version: r.u32_le("HCL header version")?,
            report_size: r.u32_le("HCL header report_size")?,
            request_type: r.u32_le("HCL header request_type")?,
            status: r.u32_le("HCL header status")?,
        };
        r.take(12, "HCL header reserved")?;
        let hardware_report: [u8; HARDWARE_REPORT_SIZE] = r.array("hardware report")?;

        let data_size = r.u32_le("IGVM request data data_size")?;
        let version = r.u32_le("IGVM request data version")?;
        let report_type = r.u32_le("IGVM request data report_type")?;
        let hash_type = r.u32_le("IGVM request data hash_type")?;
        let claims_size = r.u32_le("IGVM request data claims size")?;
        if version != 1 {
            return Err(HclError::RuntimeDataVersion { got: version });
        }
        let report_type = match report_type {
            REPORT_TYPE_SNP => HardwareReportType::Snp,
            REPORT_TYPE_TDX => HardwareReportType::Tdx,
            got => return Err(HclError::ReportType { got }),
        };
        if hash_type != HASH_TYPE_SHA256 {
            return Err(HclError::HashType { got: hash_type });
        }
        if u64::from(data_size) != u64::from(claims_size) + IGVM_REQUEST_DATA_SIZE as u64 {
            return Err(HclError::RuntimeDataSize {
                data_size,
                claims_size,
            });
        }
        let claims_len = usize::try_from(claims_size).unwrap_or(usize::MAX);
        let claims_json = r.take(claims_len, "runtime claims")?.to_vec();
        Ok(Self {
            header,
            hardware_report: Box::new(hardware_report),
            report_type,
            claims_json,
        })
    }

    /// The HCL header.
    pub fn header(&self) -> &HclHeader {
        &self.header
    }

    /// Which hardware report this is.
    pub fn report_type(&self) -> HardwareReportType {
        self.report_type
    }

    /// The raw 1184-byte hardware report slot, whatever its type.
    pub fn hardware_report(&self) -> &[u8; HARDWARE_REPORT_SIZE] {
        &self.hardware_report
    }

    /// The raw SEV-SNP ATTESTATION_REPORT, for the SNP report verifier; `None` for TDX.
    pub fn snp_report(&self) -> Option<&[u8; HARDWARE_REPORT_SIZE]> {
        (self.report_type == HardwareReportType::Snp).then_some(&*self.hardware_report)
    }

    /// The hardware report's 64-byte report data (SNP REPORT_DATA at 0x50, TDX
    /// REPORTMACSTRUCT.REPORTDATA at 128).
    pub fn report_data(&self) -> [u8; 64] {
        let offset = match self.report_type {
            HardwareReportType::Snp => SNP_REPORT_DATA_OFFSET,
            HardwareReportType::Tdx => TDX_REPORT_DATA_OFFSET,
        };
        let mut out = [0u8; 64];
        if let Some(src) = self.hardware_report.get(offset..offset + 64) {
            out.copy_from_slice(src);
        }
        out
    }

    /// The runtime claims exactly as stored (the bytes the binding hashes).
    pub fn claims_json(&self) -> &[u8] {
        &self.claims_json
    }

    /// SHA-256 of the runtime claims.
    pub fn claims_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.claims_json).into()
    }

    /// Check that the hardware report binds the claims: `report_data[0..32]` =
    /// SHA-256(claims) ([`CheckId::HclClaimsHash`]) and `report_data[32..64]` = 0
    /// ([`CheckId::HclReportDataTail`]). Meaningful only once the hardware report itself is
    /// verified.
    pub fn check_binding(&self) -> Verification {
        let report_data = self.report_data();
        let (head, tail) = report_data.split_at(32);
        let want = self.claims_sha256();
        let mut v = Verification::default();
        v.push(CheckResult::check(
            CheckId::HclClaimsHash,
            head == want,
            || (hex::encode(want), hex::encode(head)),
        ));
        v.push(CheckResult::check(
            CheckId::HclReportDataTail,
            tail.iter().all(|b| *b == 0),
            || ("32 zero bytes".into(), hex::encode(tail)),
        ));
        v
    }

    /// The runtime claims, parsed.
    pub fn claims(&self) -> Result<RuntimeClaims, HclError> {
        RuntimeClaims::parse(&self.claims_json)
    }

    /// The vTPM attestation key from the claims' `HCLAkPub` JWK.
    pub fn ak_public_key(&self) -> Result<AkPublicKey, HclError> {
        Ok(AkPublicKey::from_jwk(self.claims()?.ak_jwk()?)?)
    }
}

/// The HCL runtime claims. Unknown members are ignored (not `deny_unknown_fields`): Microsoft
/// adds members over time, and the binding covers the bytes whatever they say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeClaims {
    /// JWKs: `HCLAkPub` (the vTPM AK) and, in newer reports, `HCLEkPub` (the vTPM EK).
    pub keys: Vec<Jwk>,
    /// The VM configuration the HCL vouches for.
    #[serde(rename = "vm-configuration", default)]
    pub vm_configuration: Option<VmConfiguration>,
    /// Hex of the 64 bytes last written to NV index 0x01400002 (absent in older reports).
    #[serde(rename = "user-data", default)]
    pub user_data: Option<String>,
}

impl RuntimeClaims {
    /// Parse claims JSON.
    pub fn parse(json: &[u8]) -> Result<Self, HclError> {
        serde_json::from_slice(json).map_err(HclError::ClaimsJson)
    }

    /// The single JWK with `kid` "HCLAkPub".
    pub fn ak_jwk(&self) -> Result<&Jwk, HclError> {
        let mut found = self
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(AK_KID));
        let first = found.next().ok_or(HclError::NoAk)?;
        let more = found.count();
        if more > 0 {
            return Err(HclError::DuplicateAk { count: more + 1 });
        }
        Ok(first)
    }

    /// `user-data` decoded: the 64 bytes written to NV 0x01400002 before the report was
    /// refreshed (a verifier can bind its own freshness value through it). `None` if absent.
    pub fn user_data_bytes(&self) -> Result<Option<[u8; 64]>, HclError> {
        let Some(text) = &self.user_data else {
            return Ok(None);
        };
        let mut out = [0u8; 64];
        hex::decode_to_slice(text, &mut out).map_err(|_| HclError::UserData)?;
        Ok(Some(out))
    }
}

/// One JSON Web Key (RFC 7517) from the runtime claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    /// Key id: `HCLAkPub` or `HCLEkPub`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Key type (`RSA`).
    pub kty: String,
    /// Declared key operations (informational; the 2023 SNP sample says `encrypt` for the AK).
    #[serde(default)]
    pub key_ops: Vec<String>,
    /// RSA modulus, base64url.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default)]
    pub e: Option<String>,
}

/// The `vm-configuration` claims (all optional: they vary between report versions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmConfiguration {
    /// Serial console enabled.
    #[serde(rename = "console-enabled", default)]
    pub console_enabled: Option<bool>,
    /// UEFI Secure Boot enabled. Decides the expected PCR 4 (see [`crate::predict`]).
    #[serde(rename = "secure-boot", default)]
    pub secure_boot: Option<bool>,
    /// vTPM enabled.
    #[serde(rename = "tpm-enabled", default)]
    pub tpm_enabled: Option<bool>,
    /// vTPM state persisted across boots.
    #[serde(rename = "tpm-persisted", default)]
    pub tpm_persisted: Option<bool>,
    /// Thumbprint of the root certificate (newer reports).
    #[serde(rename = "root-cert-thumbprint", default)]
    pub root_cert_thumbprint: Option<String>,
    /// The Azure VM unique id.
    #[serde(rename = "vmUniqueId", default)]
    pub vm_unique_id: Option<String>,
    /// Time the report was made, Unix seconds (older reports only).
    #[serde(rename = "current-time", default)]
    pub current_time: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_and_missing_aks_are_refused() {
        let one = r#"{"kid":"HCLAkPub","kty":"RSA","n":"AQAB","e":"AQAB"}"#;
        let two = format!(r#"{{"keys":[{one},{one}]}}"#);
        let claims = RuntimeClaims::parse(two.as_bytes()).unwrap();
        assert!(matches!(
            claims.ak_jwk(),
            Err(HclError::DuplicateAk { count: 2 })
        ));
        let none = RuntimeClaims::parse(br#"{"keys":[]}"#).unwrap();
        assert!(matches!(none.ak_jwk(), Err(HclError::NoAk)));
        assert!(matches!(
            RuntimeClaims::parse(b"{"),
            Err(HclError::ClaimsJson(_))
        ));
    }

    #[test]
    fn user_data_must_be_64_bytes_of_hex() {
        let mut claims = RuntimeClaims::parse(br#"{"keys":[]}"#).unwrap();
        assert_eq!(claims.user_data_bytes().unwrap(), None);
        claims.user_data = Some("ab".repeat(64));
        assert_eq!(claims.user_data_bytes().unwrap(), Some([0xab; 64]));
        claims.user_data = Some("ab".into());
        assert!(matches!(claims.user_data_bytes(), Err(HclError::UserData)));
    }
}
