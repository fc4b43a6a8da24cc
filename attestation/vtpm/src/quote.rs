//! TPM2 quotes: containers, and verification against an AK, a nonce and PCR pins.
//!
//! A quote is three things: the TPMS_ATTEST the TPM signed, the AK's signature over it, and the
//! PCR values the attester read separately (`TPM2_PCR_Read`). The values are unauthenticated
//! until SHA-256 over them, in selection order, equals the signed pcrDigest
//! ([`CheckId::QuotePcrDigest`]).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::ak::AkPublicKey;
use crate::check::{CheckId, CheckResult, Verification};
use crate::pins::PcrPins;
use crate::reader::{Reader, Truncated};
use crate::tpm::{
    alg, unwrap_tpm2b_attest, Attest, Signature, TpmError, MAX_PCR_SELECT, MAX_PCR_SELECTIONS,
    MAX_RSA_SIG_SIZE, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE,
};

/// The largest TPMS_ATTEST accepted in a container (a quote's is ~120-200 bytes).
pub const MAX_ATTEST_SIZE: usize = 4096;
/// The most PCR values a quote can select (16 banks of 32 PCRs).
pub const MAX_PCR_VALUES: usize = MAX_PCR_SELECTIONS * MAX_PCR_SELECT * 8;

/// Why bytes are not a quote container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The input ended inside a field.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// A TPM structure in the container is malformed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// A length or count field is larger than any real quote needs.
    #[error("{field} is {value}, more than the maximum {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The maximum accepted.
        max: usize,
    },
    /// Bytes left after the container.
    #[error("{count} trailing bytes after the quote")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// A quote to verify: signature, signed TPMS_ATTEST bytes, and the sha256 PCR values in
/// selection order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    signature: Signature,
    attest: Vec<u8>,
    pcr_values: Vec<[u8; 32]>,
}

fn bounded_len(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<usize, QuoteError> {
    let value = r.u64_le(field)?;
    match usize::try_from(value) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(QuoteError::TooLarge { field, value, max }),
    }
}

impl Quote {
    /// Parse the layout of `az-cvm-vtpm`'s `Quote` (bincode: u64-LE length + raw RSA signature,
    /// u64-LE length + TPMS_ATTEST, u64-LE count + count 32-byte sha256 PCR values), as in
    /// `testdata/azure/quote.bin`. The raw signature is taken as RSASSA-PKCS1-v1_5/SHA-256, the
    /// scheme of the Azure AK (az-cvm-vtpm quotes with the key's own scheme).
    pub fn parse_az_cvm_vtpm(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader::new(bytes);
        let sig_len = bounded_len(&mut r, "signature length", MAX_RSA_SIG_SIZE)?;
        let sig = r.take(sig_len, "signature")?.to_vec();
        let attest_len = bounded_len(&mut r, "TPMS_ATTEST length", MAX_ATTEST_SIZE)?;
        let attest = r.take(attest_len, "TPMS_ATTEST")?.to_vec();
        let count = bounded_len(&mut r, "PCR count", MAX_PCR_VALUES)?;
        let mut pcr_values = Vec::with_capacity(count.min(r.remaining() / 32));
        for _ in 0..count {
            pcr_values.push(r.array::<32>("PCR value")?);
        }
        if !r.is_empty() {
            return Err(QuoteError::TrailingBytes {
                count: r.remaining(),
            });
        }
        Ok(Self {
            signature: Signature::RsaSsa {
                hash: alg::SHA256,
                sig,
            },
            attest,
            pcr_values,
        })
    }

    /// From a marshalled TPMT_SIGNATURE and TPM2B_ATTEST (the TPM2_Quote response parameters),
    /// plus the sha256 PCR values in selection order.
    pub fn from_tpm2(
        tpmt_signature: &[u8],
        tpm2b_attest: &[u8],
        pcr_values: Vec<[u8; 32]>,
    ) -> Result<Self, QuoteError> {
        let attest = unwrap_tpm2b_attest(tpm2b_attest)?;
        Self::from_tpm2_tools(tpmt_signature, attest, pcr_values)
    }

    /// From `tpm2_quote -s` (a TPMT_SIGNATURE) and `-m` (the bare TPMS_ATTEST) outputs, plus
    /// the sha256 PCR values in selection order.
    pub fn from_tpm2_tools(
        tpmt_signature: &[u8],
        tpms_attest: &[u8],
        pcr_values: Vec<[u8; 32]>,
    ) -> Result<Self, QuoteError> {
        if tpms_attest.len() > MAX_ATTEST_SIZE {
            return Err(QuoteError::TooLarge {
                field: "TPMS_ATTEST length",
                value: tpms_attest.len() as u64,
                max: MAX_ATTEST_SIZE,
            });
        }
        Ok(Self {
            signature: Signature::parse(tpmt_signature)?,
            attest: tpms_attest.to_vec(),
            pcr_values,
        })
    }

    /// From already separated parts.
    pub fn from_parts(
        signature: Signature,
        tpms_attest: Vec<u8>,
        pcr_values: Vec<[u8; 32]>,
    ) -> Self {
        Self {
            signature,
            attest: tpms_attest,
            pcr_values,
        }
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The signed TPMS_ATTEST bytes.
    pub fn attest_bytes(&self) -> &[u8] {
        &self.attest
    }

    /// The TPMS_ATTEST, parsed (unverified until [`verify_quote`] passes).
    pub fn attest(&self) -> Result<Attest, TpmError> {
        Attest::parse(&self.attest)
    }

    /// The supplied PCR values, in selection order (unauthenticated until [`verify_quote`]
    /// passes).
    pub fn pcr_values(&self) -> &[[u8; 32]] {
        &self.pcr_values
    }

    /// PCR index to supplied value, following the quote's sha256 selections. Values are
    /// authenticated only if [`verify_quote`] passed; `None` if the attest does not parse.
    pub fn pcrs(&self) -> Option<BTreeMap<u8, [u8; 32]>> {
        let attest = self.attest().ok()?;
        Some(pair_pcrs(&attest, &self.pcr_values).0)
    }
}

/// Pair selected indices with supplied values. Returns the map, and a problem description if
/// the selection is not sha256-only, repeats a PCR, or disagrees with the number of values.
fn pair_pcrs(attest: &Attest, values: &[[u8; 32]]) -> (BTreeMap<u8, [u8; 32]>, Option<String>) {
    let mut problem = None;
    let mut indices = Vec::new();
    for selection in &attest.quote.pcr_select {
        let selected = selection.indices();
        if selection.hash != alg::SHA256 && !selected.is_empty() {
            problem = Some(format!("a selection in bank {:#06x}", selection.hash));
        }
        indices.extend(selected);
    }
    let mut map = BTreeMap::new();
    for (index, value) in indices.iter().zip(values) {
        if map.insert(*index, *value).is_some() {
            problem = Some(format!("PCR {index} selected twice"));
        }
    }
    if indices.len() != values.len() {
        problem = Some(format!(
            "{} PCRs selected, {} values supplied",
            indices.len(),
            values.len()
        ));
    }
    (map, problem)
}

/// Verify a quote: signature with `ak`, TPM-generated quote structure, `nonce` in extraData,
/// PCR selection and digest against the supplied values, then every pin. All checks run and
/// are reported; pass only if [`Verification::passed`]. The nonce must be the verifier's own,
/// fresh and non-empty.
pub fn verify_quote(ak: &AkPublicKey, quote: &Quote, nonce: &[u8], pins: &PcrPins) -> Verification {
    verify_quote_inner(Some(ak), quote, nonce, Some(pins))
}

/// [`verify_quote`] with the AK possibly missing (the end-to-end Azure path, when the claims
/// hold no usable AK): the signature check then fails and every other check still runs.
/// Without `pins` (authenticity only) no PCR is judged.
pub(crate) fn verify_quote_inner(
    ak: Option<&AkPublicKey>,
    quote: &Quote,
    nonce: &[u8],
    pins: Option<&PcrPins>,
) -> Verification {
    let mut v = Verification::default();

    v.push(match (&quote.signature, ak) {
        (_, None) => CheckResult::fail(
            CheckId::QuoteSignature,
            "a signature by the AK",
            "not evaluated: no AK (see hcl.claims.ak_pub)",
        ),
        (
            Signature::RsaSsa {
                hash: alg::SHA256,
                sig,
            },
            Some(ak),
        ) => match ak.verify_rsassa_sha256(&quote.attest, sig) {
            Ok(()) => CheckResult::pass(CheckId::QuoteSignature),
            Err(e) => CheckResult::fail(
                CheckId::QuoteSignature,
                "an RSASSA-PKCS1-v1_5/SHA-256 signature by the AK",
                e.to_string(),
            ),
        },
        (other, Some(_)) => CheckResult::fail(
            CheckId::QuoteSignature,
            "RSASSA with SHA-256 (0x000b)",
            other.describe(),
        ),
    });

    let peeked = Attest::peek_magic_and_type(&quote.attest);
    v.push(match peeked {
        Some((TPM_GENERATED_VALUE, _)) => CheckResult::pass(CheckId::QuoteMagic),
        Some((magic, _)) => CheckResult::fail(
            CheckId::QuoteMagic,
            format!("{TPM_GENERATED_VALUE:#010x}"),
            format!("{magic:#010x}"),
        ),
        None => CheckResult::fail(CheckId::QuoteMagic, "TPMS_ATTEST", "fewer than 6 bytes"),
    });
    v.push(match peeked {
        Some((_, TPM_ST_ATTEST_QUOTE)) => CheckResult::pass(CheckId::QuoteType),
        Some((_, ty)) => CheckResult::fail(
            CheckId::QuoteType,
            format!("{TPM_ST_ATTEST_QUOTE:#06x}"),
            format!("{ty:#06x}"),
        ),
        None => CheckResult::fail(CheckId::QuoteType, "TPMS_ATTEST", "fewer than 6 bytes"),
    });

    let attest = quote.attest();
    v.push(match &attest {
        Ok(_) => CheckResult::pass(CheckId::QuoteAttestParse),
        Err(e) => CheckResult::fail(
            CheckId::QuoteAttestParse,
            "a TPMS_ATTEST with a TPMS_QUOTE_INFO",
            e.to_string(),
        ),
    });

    let Ok(attest) = attest else {
        const NOT_EVALUATED: &str = "not evaluated: TPMS_ATTEST does not parse";
        for id in [
            CheckId::QuoteNonce,
            CheckId::QuotePcrSelection,
            CheckId::QuotePcrDigest,
        ] {
            v.push(CheckResult::fail(id, "a parsed quote", NOT_EVALUATED));
        }
        if let Some(pins) = pins {
            v.extend(pins.check(&BTreeMap::new()));
        }
        return v;
    };

    v.push(if nonce.is_empty() {
        CheckResult::fail(
            CheckId::QuoteNonce,
            "a non-empty nonce from the verifier",
            "the verifier passed an empty nonce",
        )
    } else {
        CheckResult::check(CheckId::QuoteNonce, attest.extra_data == nonce, || {
            (hex::encode(nonce), hex::encode(&attest.extra_data))
        })
    });

    let (pcrs, problem) = pair_pcrs(&attest, &quote.pcr_values);
    v.push(match problem {
        None => CheckResult::pass(CheckId::QuotePcrSelection),
        Some(problem) => CheckResult::fail(
            CheckId::QuotePcrSelection,
            "sha256-bank PCRs only, each once, one supplied value per selected PCR",
            problem,
        ),
    });

    let mut hasher = Sha256::new();
    for value in &quote.pcr_values {
        hasher.update(value);
    }
    let computed: [u8; 32] = hasher.finalize().into();
    v.push(CheckResult::check(
        CheckId::QuotePcrDigest,
        attest.quote.pcr_digest == computed,
        || {
            (
                hex::encode(&attest.quote.pcr_digest),
                format!(
                    "{} (SHA-256 of the supplied PCR values)",
                    hex::encode(computed)
                ),
            )
        },
    ));

    if let Some(pins) = pins {
        v.extend(pins.check(&pcrs));
    }
    v
}
