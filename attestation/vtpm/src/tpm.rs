//! TPM 2.0 structures, parsed by hand (TCG "TPM 2.0 Library, Part 2: Structures", rev. 1.59;
//! section numbers below are from it). All integers are big-endian. Every size prefix is
//! checked against the structure's maximum and against the bytes left before anything is
//! allocated, and every parser consumes its whole input (trailing bytes are an error).
//!
//! Only what quote verification needs is here: TPMS_ATTEST with a TPMS_QUOTE_INFO body,
//! TPML_PCR_SELECTION, and TPMT_SIGNATURE.

use crate::reader::{Reader, Truncated};

/// TPM_GENERATED_VALUE (§6.2): the magic that starts every TPM-generated structure.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE (§6.9): TPMS_ATTEST.type of a quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// TPM_ALG_ID values used here (TCG Algorithm Registry).
pub mod alg {
    /// TPM_ALG_SHA1.
    pub const SHA1: u16 = 0x0004;
    /// TPM_ALG_SHA256.
    pub const SHA256: u16 = 0x000b;
    /// TPM_ALG_SHA384.
    pub const SHA384: u16 = 0x000c;
    /// TPM_ALG_SHA512.
    pub const SHA512: u16 = 0x000d;
    /// TPM_ALG_NULL.
    pub const NULL: u16 = 0x0010;
    /// TPM_ALG_SM3_256.
    pub const SM3_256: u16 = 0x0012;
    /// TPM_ALG_RSASSA (RSASSA-PKCS1-v1_5).
    pub const RSASSA: u16 = 0x0014;
    /// TPM_ALG_RSAPSS.
    pub const RSAPSS: u16 = 0x0016;
    /// TPM_ALG_ECDSA.
    pub const ECDSA: u16 = 0x0018;

    /// Digest size of a hash algorithm, if known.
    pub fn digest_size(alg: u16) -> Option<usize> {
        match alg {
            SHA1 => Some(20),
            SHA256 | SM3_256 => Some(32),
            SHA384 => Some(48),
            SHA512 => Some(64),
            _ => None,
        }
    }
}

/// sizeof(TPMU_HA) with SHA-512: the largest TPM2B_DIGEST.
pub const MAX_DIGEST_SIZE: usize = 64;
/// sizeof(TPMT_HA): the largest TPM2B_DATA (qualifyingData / extraData) and TPM2B_NAME.
pub const MAX_DATA_SIZE: usize = 66;
/// The largest TPML_PCR_SELECTION count accepted (HASH_COUNT is implementation-specific; no
/// TPM has 16 banks).
pub const MAX_PCR_SELECTIONS: usize = 16;
/// The largest TPMS_PCR_SELECTION.sizeofSelect accepted: 4 bytes = 32 PCRs (PC Client TPMs
/// implement 24, i.e. PCR_SELECT_MAX 3).
pub const MAX_PCR_SELECT: usize = 4;
/// MAX_RSA_KEY_BYTES for 4096-bit keys: the largest TPM2B_PUBLIC_KEY_RSA.
pub const MAX_RSA_SIG_SIZE: usize = 512;
/// MAX_ECC_KEY_BYTES for P-521: the largest TPM2B_ECC_PARAMETER.
pub const MAX_ECC_PARAMETER_SIZE: usize = 66;

/// Why bytes are not the TPM structure expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    /// The input ended inside a field.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// A TPM2B size exceeds the structure's maximum.
    #[error("{field} size {size} exceeds the maximum {max}")]
    SizeTooLarge {
        /// The TPM2B field.
        field: &'static str,
        /// The size found.
        size: usize,
        /// The maximum (TPM 2.0 Part 2).
        max: usize,
    },
    /// TPMS_ATTEST.type is not TPM_ST_ATTEST_QUOTE, so the body is not a TPMS_QUOTE_INFO.
    #[error("TPMS_ATTEST.type is {got:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)")]
    NotAQuote {
        /// The type found.
        got: u16,
    },
    /// TPMS_CLOCK_INFO.safe is neither NO (0) nor YES (1).
    #[error("TPMS_CLOCK_INFO.safe is {got}, not a TPMI_YES_NO")]
    NotYesNo {
        /// The byte found.
        got: u8,
    },
    /// A TPMT_SIGNATURE with a scheme this parser does not know.
    #[error("TPMT_SIGNATURE.sigAlg {alg:#06x} is not RSASSA, RSAPSS, ECDSA or NULL")]
    SignatureAlg {
        /// The sigAlg found.
        alg: u16,
    },
    /// Bytes left after a complete structure.
    #[error("{count} trailing bytes after {structure}")]
    TrailingBytes {
        /// The structure parsed.
        structure: &'static str,
        /// How many bytes were left.
        count: usize,
    },
}

fn tpm2b<'a>(r: &mut Reader<'a>, field: &'static str, max: usize) -> Result<&'a [u8], TpmError> {
    let size = usize::from(r.u16_be(field)?);
    if size > max {
        return Err(TpmError::SizeTooLarge { field, size, max });
    }
    Ok(r.take(size, field)?)
}

fn finish(r: &Reader<'_>, structure: &'static str) -> Result<(), TpmError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(TpmError::TrailingBytes {
            structure,
            count: r.remaining(),
        })
    }
}

/// TPMS_PCR_SELECTION (§10.6.2): one bank and a bitmap of its PCRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash algorithm (TPMI_ALG_HASH).
    pub hash: u16,
    /// pcrSelect: bit `i` of byte `j` selects PCR `8 * j + i`.
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// The selected PCR indices, ascending (the order the TPM hashes them in).
    pub fn indices(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (byte_index, byte) in self.select.iter().enumerate() {
            for bit in 0..8usize {
                let index = byte_index.checked_mul(8).and_then(|i| i.checked_add(bit));
                if byte & (1 << bit) != 0 {
                    // Indices above 255 cannot come from a parsed selection (MAX_PCR_SELECT).
                    if let Some(index) = index.and_then(|i| u8::try_from(i).ok()) {
                        out.push(index);
                    }
                }
            }
        }
        out
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, TpmError> {
        let hash = r.u16_be("TPMS_PCR_SELECTION.hash")?;
        let size = usize::from(r.u8("TPMS_PCR_SELECTION.sizeofSelect")?);
        if size > MAX_PCR_SELECT {
            return Err(TpmError::SizeTooLarge {
                field: "TPMS_PCR_SELECTION.sizeofSelect",
                size,
                max: MAX_PCR_SELECT,
            });
        }
        let select = r.take(size, "TPMS_PCR_SELECTION.pcrSelect")?.to_vec();
        Ok(Self { hash, select })
    }
}

/// TPML_PCR_SELECTION (§10.9.7).
pub(crate) fn parse_pcr_selection_list(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, TpmError> {
    let count = r.u32_be("TPML_PCR_SELECTION.count")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > MAX_PCR_SELECTIONS {
        return Err(TpmError::SizeTooLarge {
            field: "TPML_PCR_SELECTION.count",
            size: count,
            max: MAX_PCR_SELECTIONS,
        });
    }
    (0..count).map(|_| PcrSelection::parse(r)).collect()
}

/// TPMS_CLOCK_INFO (§10.11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its clock was last set.
    pub clock: u64,
    /// TPM resets (reboots) since the clock was set.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernate) since the last reset.
    pub restart_count: u32,
    /// Whether the clock value is guaranteed not to have gone backwards.
    pub safe: bool,
}

/// TPMS_QUOTE_INFO (§10.12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The PCRs quoted.
    pub pcr_select: Vec<PcrSelection>,
    /// Digest (with the signing scheme's hash) of the selected PCR values, concatenated in
    /// selection order.
    pub pcr_digest: Vec<u8>,
}

/// TPMS_ATTEST (§10.12.12) whose `attested` member is a TPMS_QUOTE_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// TPM_GENERATED_VALUE for TPM-made structures. Parsed, not checked: the verifier reports it
    /// as its own check.
    pub magic: u32,
    /// TPM_ST_ATTEST_QUOTE (checked by the parser: other bodies are not parsed).
    pub attest_type: u16,
    /// TPM2B_NAME of the signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// TPM2B_DATA: the caller's qualifyingData (the verifier's nonce).
    pub extra_data: Vec<u8>,
    /// TPMS_CLOCK_INFO.
    pub clock_info: ClockInfo,
    /// TPM vendor firmware version.
    pub firmware_version: u64,
    /// The quote body.
    pub quote: QuoteInfo,
}

impl Attest {
    /// Parse a marshalled TPMS_ATTEST (the bytes the TPM signs), consuming all of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader::new(bytes);
        let magic = r.u32_be("TPMS_ATTEST.magic")?;
        let attest_type = r.u16_be("TPMS_ATTEST.type")?;
        if attest_type != TPM_ST_ATTEST_QUOTE {
            return Err(TpmError::NotAQuote { got: attest_type });
        }
        let qualified_signer =
            tpm2b(&mut r, "TPMS_ATTEST.qualifiedSigner", MAX_DATA_SIZE)?.to_vec();
        let extra_data = tpm2b(&mut r, "TPMS_ATTEST.extraData", MAX_DATA_SIZE)?.to_vec();
        let clock = r.u64_be("TPMS_CLOCK_INFO.clock")?;
        let reset_count = r.u32_be("TPMS_CLOCK_INFO.resetCount")?;
        let restart_count = r.u32_be("TPMS_CLOCK_INFO.restartCount")?;
        let safe = match r.u8("TPMS_CLOCK_INFO.safe")? {
            0 => false,
            1 => true,
            got => return Err(TpmError::NotYesNo { got }),
        };
        let firmware_version = r.u64_be("TPMS_ATTEST.firmwareVersion")?;
        let pcr_select = parse_pcr_selection_list(&mut r)?;
        let pcr_digest = tpm2b(&mut r, "TPMS_QUOTE_INFO.pcrDigest", MAX_DIGEST_SIZE)?.to_vec();
        finish(&r, "TPMS_ATTEST")?;
        Ok(Self {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            quote: QuoteInfo {
                pcr_select,
                pcr_digest,
            },
        })
    }

    /// The first two fields of any TPMS_ATTEST (magic, type), if present, even when the rest does
    /// not parse: lets a verifier report them precisely.
    pub fn peek_magic_and_type(bytes: &[u8]) -> Option<(u32, u16)> {
        let mut r = Reader::new(bytes);
        Some((
            r.u32_be("TPMS_ATTEST.magic").ok()?,
            r.u16_be("TPMS_ATTEST.type").ok()?,
        ))
    }
}

/// Parse a TPM2B_ATTEST (§10.12.13): the size-prefixed TPMS_ATTEST, returning the inner bytes
/// (which are what the TPM signs).
pub fn unwrap_tpm2b_attest(bytes: &[u8]) -> Result<&[u8], TpmError> {
    let mut r = Reader::new(bytes);
    // sizeof(TPMS_ATTEST) is implementation-dependent; the whole input bounds it.
    let inner = tpm2b(&mut r, "TPM2B_ATTEST.size", usize::from(u16::MAX))?;
    finish(&r, "TPM2B_ATTEST")?;
    Ok(inner)
}

/// TPMT_SIGNATURE (§11.3.4) for the schemes an AK uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// TPMS_SIGNATURE_RSASSA: RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// The hash algorithm signed with.
        hash: u16,
        /// The signature (TPM2B_PUBLIC_KEY_RSA).
        sig: Vec<u8>,
    },
    /// TPMS_SIGNATURE_RSAPSS.
    RsaPss {
        /// The hash algorithm signed with.
        hash: u16,
        /// The signature (TPM2B_PUBLIC_KEY_RSA).
        sig: Vec<u8>,
    },
    /// TPMS_SIGNATURE_ECDSA.
    Ecdsa {
        /// The hash algorithm signed with.
        hash: u16,
        /// signatureR.
        r: Vec<u8>,
        /// signatureS.
        s: Vec<u8>,
    },
    /// TPM_ALG_NULL: no signature.
    Null,
}

impl Signature {
    /// Parse a marshalled TPMT_SIGNATURE (as `tpm2_quote -s` writes it), consuming all of
    /// `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader::new(bytes);
        let sig_alg = r.u16_be("TPMT_SIGNATURE.sigAlg")?;
        let sig = match sig_alg {
            alg::RSASSA | alg::RSAPSS => {
                let hash = r.u16_be("TPMS_SIGNATURE_RSA.hash")?;
                let sig = tpm2b(&mut r, "TPMS_SIGNATURE_RSA.sig", MAX_RSA_SIG_SIZE)?.to_vec();
                if sig_alg == alg::RSASSA {
                    Self::RsaSsa { hash, sig }
                } else {
                    Self::RsaPss { hash, sig }
                }
            }
            alg::ECDSA => {
                let hash = r.u16_be("TPMS_SIGNATURE_ECC.hash")?;
                let sr = tpm2b(
                    &mut r,
                    "TPMS_SIGNATURE_ECC.signatureR",
                    MAX_ECC_PARAMETER_SIZE,
                )?;
                let ss = tpm2b(
                    &mut r,
                    "TPMS_SIGNATURE_ECC.signatureS",
                    MAX_ECC_PARAMETER_SIZE,
                )?;
                Self::Ecdsa {
                    hash,
                    r: sr.to_vec(),
                    s: ss.to_vec(),
                }
            }
            alg::NULL => Self::Null,
            other => return Err(TpmError::SignatureAlg { alg: other }),
        };
        finish(&r, "TPMT_SIGNATURE")?;
        Ok(sig)
    }

    /// A short description for check reports.
    pub fn describe(&self) -> String {
        match self {
            Self::RsaSsa { hash, .. } => format!("RSASSA with hash {hash:#06x}"),
            Self::RsaPss { hash, .. } => format!("RSAPSS with hash {hash:#06x}"),
            Self::Ecdsa { hash, .. } => format!("ECDSA with hash {hash:#06x}"),
            Self::Null => "TPM_ALG_NULL (no signature)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_bits_map_to_indices() {
        let s = PcrSelection {
            hash: alg::SHA256,
            select: vec![0b0001_0001, 0, 0b1000_0010],
        };
        assert_eq!(s.indices(), vec![0, 4, 17, 23]);
    }

    #[test]
    fn signature_shapes() {
        let mut rsassa = vec![0x00, 0x14, 0x00, 0x0b, 0x00, 0x02, 0xaa, 0xbb];
        assert_eq!(
            Signature::parse(&rsassa).unwrap(),
            Signature::RsaSsa {
                hash: alg::SHA256,
                sig: vec![0xaa, 0xbb]
            }
        );
        rsassa.push(0);
        assert_eq!(
            Signature::parse(&rsassa),
            Err(TpmError::TrailingBytes {
                structure: "TPMT_SIGNATURE",
                count: 1
            })
        );
        assert_eq!(Signature::parse(&[0x00, 0x10]).unwrap(), Signature::Null);
        assert!(matches!(
            Signature::parse(&[0x00, 0x05]),
            Err(TpmError::SignatureAlg { alg: 5 })
        ));
        let ecdsa = [0x00, 0x18, 0x00, 0x0b, 0x00, 0x01, 0x01, 0x00, 0x01, 0x02];
        assert!(matches!(
            Signature::parse(&ecdsa).unwrap(),
            Signature::Ecdsa { .. }
        ));
        // A TPM2B larger than its maximum is refused before reading it.
        let huge = [0x00, 0x14, 0x00, 0x0b, 0xff, 0xff];
        assert!(matches!(
            Signature::parse(&huge),
            Err(TpmError::SizeTooLarge { .. })
        ));
    }

    #[test]
    fn tpm2b_attest_unwraps() {
        assert_eq!(unwrap_tpm2b_attest(&[0, 2, 7, 8]).unwrap(), &[7, 8]);
        assert!(unwrap_tpm2b_attest(&[0, 3, 7, 8]).is_err());
        assert!(unwrap_tpm2b_attest(&[0, 1, 7, 8]).is_err());
    }
}
