//! Real SEV-SNP evidence and sealing keys, from the guest kernel's two interfaces.
//!
//! **Backends** ([`detect`] picks one):
//! - [`ConfigfsTsmProvider`]: configfs-tsm (Linux ≥ 6.7), `/sys/kernel/config/tsm/report`. One
//!   fresh report directory per request: write `inblob` (and `privlevel`), read `outblob` (the
//!   report) and `auxblob` (the host's certificate table), check `generation` so a concurrent
//!   writer cannot hand us a report for someone else's REPORT_DATA, remove the directory on every
//!   path.
//! - [`SevGuestProvider`]: `/dev/sev-guest` (Debian's 6.1 kernel, so our images), through the
//!   `sev` crate: `SNP_GET_EXT_REPORT`, whose certificate table carries the VCEK chain the host
//!   provisioned, and `SNP_GET_DERIVED_KEY` for sealing keys.
//!
//! **Trusts:** the guest kernel, and the AMD secure processor behind it. **Does not trust:** the
//! certificate table, which the *host* writes: [`parse_cert_table`] bounds-checks every entry and
//! never panics. Nothing here checks a signature; verifiers do (`coffer-verify`). We never fetch
//! certificates from AMD KDS on this path: the host must provision them (`snphost import`).
//!
//! **Known hazard (`sev` 8.0.0, `/dev/sev-guest` only):** `Firmware::get_ext_report` walks the
//! host's table with raw pointers and does not bounds-check offsets or lengths, so a hostile host
//! can make it read past its buffer before we see the result. We cannot fix that without `unsafe`
//! (forbidden here); [`SevGuestProvider`] caps what it accepts from the crate (entry count, sizes,
//! duplicates) so an oversized read is refused rather than shipped, and the configfs backend,
//! which hands us the raw table, is preferred wherever it exists.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Evidence, EvidenceError, EvidenceProvider, Platform, REPORT_DATA_LEN};

/// The SEV guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// configfs-tsm's report directory.
pub const CONFIGFS_TSM_REPORT: &str = "/sys/kernel/config/tsm/report";
/// The configfs-tsm `provider` of the SEV-SNP guest driver (its module name).
pub const TSM_PROVIDER: &str = "sev_guest";
/// Bytes of an SEV-SNP attestation report (SNP ABI, ATTESTATION_REPORT: 0x4A0).
pub const REPORT_LEN: usize = 0x4A0;
/// Largest certificate table accepted: configfs-tsm's blob limit (`TSM_OUTBLOB_MAX`, 32 KiB);
/// the kernel's own buffer (`SEV_FW_BLOB_MAX_SIZE`) is 16 KiB, and a VCEK chain is about 5 KiB.
pub const MAX_CERT_TABLE_LEN: usize = 32 * 1024;
/// Most entries accepted in a certificate table (AMD's tables carry three or four). Bounds the
/// work a host can make us do.
pub const MAX_CERT_ENTRIES: usize = 8;
/// The VMPL our reports and keys are requested at: appliances run at VMPL 0 (no SVSM).
pub const VMPL: u32 = 0;

/// Largest `outblob` read (configfs-tsm's `TSM_OUTBLOB_MAX`).
const MAX_OUTBLOB_LEN: usize = 32 * 1024;
/// Attempts at a configfs report before a concurrent writer is reported as an error.
const CONFIGFS_ATTEMPTS: usize = 3;
/// Names tried when a report directory name is taken (a stale directory of a dead process).
const DIR_NAME_ATTEMPTS: usize = 16;
/// Offset of REPORT_DATA in the report.
const REPORT_DATA_OFFSET: usize = 0x50;
/// Offset of the signer info word (SIGNING_KEY in bits 4:2) in the report.
const SIGNER_INFO_OFFSET: usize = 0x48;
/// HKDF-SHA-256 salt for sealing keys (domain separation; bump the version if the derivation
/// ever changes, since sealed data depends on it).
const SEAL_SALT: &[u8] = b"coffer-evidence snp sealing salt v1";
/// HKDF info prefix for sealing keys.
const SEAL_INFO: &[u8] = b"coffer-evidence snp sealing key v1";

// ---------------------------------------------------------------------------------------------
// Certificate table (GHCB extended guest request)
// ---------------------------------------------------------------------------------------------

/// A GUID as the certificate table carries it: 16 bytes, in the order the text form is written
/// (RFC 4122 byte order, as `uuid_parse` produces; *not* the mixed-endian EFI_GUID layout).
pub type Guid = [u8; 16];

/// VCEK: `63da758d-e664-4564-adc5-f4b93be8accd`.
pub const VCEK_GUID: Guid = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// VLEK: `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
pub const VLEK_GUID: Guid = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
/// ASK (also carries the ASVK beside a VLEK): `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const ASK_GUID: Guid = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// ARK: `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const ARK_GUID: Guid = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];

/// Bytes of one table entry: GUID (16), offset (u32 LE), length (u32 LE).
const ENTRY_LEN: usize = 24;

/// What a certificate-table entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// Versioned Chip Endorsement Key certificate.
    Vcek,
    /// Versioned Loaded Endorsement Key certificate (cloud hosts).
    Vlek,
    /// AMD SEV Signing Key (or ASVK) certificate.
    Ask,
    /// AMD Root Key certificate.
    Ark,
    /// Anything else (a CRL, a vendor extension): kept, bounds-checked, not used.
    Other(Guid),
}

impl CertKind {
    /// The kind a table GUID names.
    pub fn from_guid(guid: &Guid) -> Self {
        match *guid {
            VCEK_GUID => CertKind::Vcek,
            VLEK_GUID => CertKind::Vlek,
            ASK_GUID => CertKind::Ask,
            ARK_GUID => CertKind::Ark,
            other => CertKind::Other(other),
        }
    }

    /// The GUID of this kind.
    pub fn guid(&self) -> Guid {
        match self {
            CertKind::Vcek => VCEK_GUID,
            CertKind::Vlek => VLEK_GUID,
            CertKind::Ask => ASK_GUID,
            CertKind::Ark => ARK_GUID,
            CertKind::Other(guid) => *guid,
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CertKind::Vcek => "VCEK",
            CertKind::Vlek => "VLEK",
            CertKind::Ask => "ASK",
            CertKind::Ark => "ARK",
            CertKind::Other(_) => "unknown GUID",
        };
        write!(f, "{name} {}", guid_text(&self.guid()))
    }
}

/// The text form of a table GUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn guid_text(guid: &Guid) -> String {
    let h = hex::encode(guid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses the text form of a GUID into table byte order.
pub fn parse_guid(text: &str) -> Option<Guid> {
    let digits: String = text.chars().filter(|&c| c != '-').collect();
    if digits.len() != 32 || text.len() != 36 {
        return None;
    }
    hex::decode(digits).ok()?.try_into().ok()
}

/// One certificate from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// What the entry's GUID says it is.
    pub kind: CertKind,
    /// The certificate's bytes (DER for AMD's kinds).
    pub data: Vec<u8>,
}

/// Why a certificate table was refused. Entries are counted from 0 in table order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// The blob is larger than any table the kernel passes on.
    #[error("the certificate table is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More entries than any real table has.
    #[error("the certificate table has more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// The blob ends inside an entry's header.
    #[error("entry {index} is truncated: {available} of its {ENTRY_LEN} header bytes are present")]
    TruncatedEntry {
        /// The entry.
        index: usize,
        /// Header bytes present.
        available: usize,
    },
    /// The blob ends on an entry boundary without the all-zero terminator.
    #[error("the certificate table has no all-zero terminator after its {entries} entries")]
    Unterminated {
        /// Entries read before the end.
        entries: usize,
    },
    /// An entry with the zero GUID (the terminator) whose offset or length is not zero.
    #[error(
        "entry {index} has the zero GUID but offset {offset} and length {length}: not a terminator"
    )]
    BadTerminator {
        /// The entry.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// An entry of length zero.
    #[error("entry {index} ({kind}) has length 0")]
    EmptyCertificate {
        /// The entry.
        index: usize,
        /// What it claims to be.
        kind: CertKind,
    },
    /// An entry whose bytes lie (partly) outside the blob.
    #[error(
        "entry {index} ({kind}) names bytes {offset}..{end} but the table is {table_len} bytes"
    )]
    OutOfBounds {
        /// The entry.
        index: usize,
        /// What it claims to be.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// Offset + length (computed without overflow).
        end: u64,
        /// Bytes in the blob.
        table_len: usize,
    },
    /// An entry whose bytes overlap the entry headers themselves.
    #[error("entry {index} ({kind}) at offset {offset} overlaps the table's headers, which end at {headers_end}")]
    OverlapsHeaders {
        /// The entry.
        index: usize,
        /// What it claims to be.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// End of the headers, terminator included.
        headers_end: usize,
    },
    /// Two entries whose bytes overlap.
    #[error("entry {index} ({kind}) overlaps entry {other} ({other_kind})")]
    Overlap {
        /// The later entry.
        index: usize,
        /// What it claims to be.
        kind: CertKind,
        /// The earlier entry it overlaps.
        other: usize,
        /// What that one claims to be.
        other_kind: CertKind,
    },
    /// Two entries of the same kind: which one signs would be ambiguous.
    #[error("entry {index} is a second {kind} (the first is entry {first})")]
    Duplicate {
        /// The later entry.
        index: usize,
        /// The kind.
        kind: CertKind,
        /// The first entry of that kind.
        first: usize,
    },
}

/// Parses a GHCB extended-report certificate table: entries of {GUID, offset u32 LE, length
/// u32 LE} ending with an all-zero entry, offsets counted from the start of `blob`.
///
/// Refuses (with the entry named) anything a well-behaved host would not produce: a missing
/// terminator, truncation, bytes outside the blob or over the headers, overlapping or duplicate
/// entries, empty entries, more than [`MAX_CERT_ENTRIES`] entries or [`MAX_CERT_TABLE_LEN`]
/// bytes. Never panics, whatever `blob` holds.
pub fn parse_cert_table(blob: &[u8]) -> Result<Vec<CertEntry>, CertTableError> {
    if blob.len() > MAX_CERT_TABLE_LEN {
        return Err(CertTableError::TooLarge {
            len: blob.len(),
            max: MAX_CERT_TABLE_LEN,
        });
    }
    // Pass 1: the headers, up to and including the terminator.
    let mut headers: Vec<(CertKind, u32, u32)> = Vec::new();
    let mut index = 0usize;
    loop {
        let start = index * ENTRY_LEN;
        let Some(rest) = blob.get(start..) else {
            return Err(CertTableError::Unterminated { entries: index });
        };
        if rest.is_empty() {
            return Err(CertTableError::Unterminated { entries: index });
        }
        let Some(header) = rest.get(..ENTRY_LEN) else {
            return Err(CertTableError::TruncatedEntry {
                index,
                available: rest.len(),
            });
        };
        let (guid, numbers) = header.split_at(16);
        let (offset, length) = numbers.split_at(4);
        let guid: Guid = guid.try_into().unwrap_or([0; 16]);
        let offset = u32::from_le_bytes(offset.try_into().unwrap_or([0; 4]));
        let length = u32::from_le_bytes(length.try_into().unwrap_or([0; 4]));
        if guid == [0; 16] {
            if offset != 0 || length != 0 {
                return Err(CertTableError::BadTerminator {
                    index,
                    offset,
                    length,
                });
            }
            break;
        }
        if index == MAX_CERT_ENTRIES {
            return Err(CertTableError::TooManyEntries {
                max: MAX_CERT_ENTRIES,
            });
        }
        headers.push((CertKind::from_guid(&guid), offset, length));
        index += 1;
    }
    let headers_end = (headers.len() + 1) * ENTRY_LEN;

    // Pass 2: each entry's bytes.
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(headers.len());
    let mut entries = Vec::with_capacity(headers.len());
    for (index, &(kind, offset, length)) in headers.iter().enumerate() {
        if length == 0 {
            return Err(CertTableError::EmptyCertificate { index, kind });
        }
        let end = u64::from(offset) + u64::from(length);
        if end > blob.len() as u64 {
            return Err(CertTableError::OutOfBounds {
                index,
                kind,
                offset,
                end,
                table_len: blob.len(),
            });
        }
        // In bounds of a blob of at most MAX_CERT_TABLE_LEN bytes: these fit in usize.
        let (start, end) = (offset as usize, end as usize);
        if start < headers_end {
            return Err(CertTableError::OverlapsHeaders {
                index,
                kind,
                offset,
                headers_end,
            });
        }
        if let Some(first) = entries
            .iter()
            .position(|e: &CertEntry| e.kind == kind && !matches!(kind, CertKind::Other(_)))
        {
            return Err(CertTableError::Duplicate { index, kind, first });
        }
        if let Some(other) = ranges.iter().position(|&(s, e)| start < e && s < end) {
            return Err(CertTableError::Overlap {
                index,
                kind,
                other,
                other_kind: headers.get(other).map_or(kind, |h| h.0),
            });
        }
        ranges.push((start, end));
        entries.push(CertEntry {
            kind,
            data: blob.get(start..end).unwrap_or_default().to_vec(),
        });
    }
    Ok(entries)
}

/// The certificates that go with one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VekChain {
    /// The VCEK or VLEK that signed the report, DER.
    pub vek: Vec<u8>,
    /// The ASK or ASVK, DER, if the host provided it.
    pub ask: Option<Vec<u8>>,
    /// The ARK, DER, if the host provided it.
    pub ark: Option<Vec<u8>>,
}

/// Why the certificate table does not go with the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The report is not [`REPORT_LEN`] bytes.
    #[error("the report is {len} bytes, expected {REPORT_LEN}")]
    ReportLength {
        /// Bytes received.
        len: usize,
    },
    /// SIGNING_KEY names no key a certificate could be for (7 = unsigned, 2-6 reserved).
    #[error("the report's SIGNING_KEY is {0}: neither VCEK (0) nor VLEK (1)")]
    SigningKey(u32),
    /// The host provided no certificate table at all.
    #[error(
        "the host provided no certificate table with the extended report: the {0} must be \
         provisioned on the host (`snphost import`, which fills the extended-report certificate \
         table); Coffer never fetches certificates from AMD KDS while attesting"
    )]
    NoTable(CertKind),
    /// The table lacks the key that signed the report.
    #[error(
        "the host's certificate table has no {0}, the key that signed this report: provision it \
         on the host (`snphost import`, which fills the extended-report certificate table); \
         Coffer never fetches certificates from AMD KDS while attesting"
    )]
    MissingVek(CertKind),
}

/// Picks the VEK that signed `report` (SIGNING_KEY: VCEK or VLEK) and its ASK/ARK out of the
/// host's certificate table (`None`: the host provided none). Checks no signature.
pub fn chain_for_report(
    report: &[u8],
    table: Option<Vec<CertEntry>>,
) -> Result<VekChain, ChainError> {
    if report.len() != REPORT_LEN {
        return Err(ChainError::ReportLength { len: report.len() });
    }
    let word = report
        .get(SIGNER_INFO_OFFSET..SIGNER_INFO_OFFSET + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    let wanted = match (word >> 2) & 7 {
        0 => CertKind::Vcek,
        1 => CertKind::Vlek,
        other => return Err(ChainError::SigningKey(other)),
    };
    let Some(table) = table else {
        return Err(ChainError::NoTable(wanted));
    };
    let mut vek = None;
    let mut ask = None;
    let mut ark = None;
    for entry in table {
        match entry.kind {
            kind if kind == wanted => vek = Some(entry.data),
            CertKind::Ask => ask = Some(entry.data),
            CertKind::Ark => ark = Some(entry.data),
            _ => {}
        }
    }
    let vek = vek.ok_or(ChainError::MissingVek(wanted))?;
    Ok(VekChain { vek, ask, ark })
}

/// Checks that the report echoes the REPORT_DATA asked for (a report for another request, e.g.
/// a concurrent writer's, is a protocol error, not evidence).
fn check_report_data(
    report: &[u8],
    report_data: &[u8; REPORT_DATA_LEN],
) -> Result<(), EvidenceError> {
    let got = report.get(REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + REPORT_DATA_LEN);
    if got != Some(report_data.as_slice()) {
        return Err(EvidenceError::Protocol(format!(
            "the report's REPORT_DATA is not the one asked for: expected {}, got {}",
            hex::encode(report_data),
            got.map_or_else(|| "nothing".to_string(), hex::encode)
        )));
    }
    Ok(())
}

fn evidence(
    report: Vec<u8>,
    report_data: &[u8; REPORT_DATA_LEN],
    table: Option<Vec<CertEntry>>,
    source: &str,
) -> Result<Evidence, EvidenceError> {
    if report.len() != REPORT_LEN {
        return Err(EvidenceError::Protocol(format!(
            "{source}: the report is {} bytes, expected {REPORT_LEN}",
            report.len()
        )));
    }
    check_report_data(&report, report_data)?;
    let chain = chain_for_report(&report, table).map_err(|e| EvidenceError::Device {
        path: source.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Evidence::Snp {
        report,
        vek: chain.vek,
        ask: chain.ask,
        ark: chain.ark,
    })
}

// ---------------------------------------------------------------------------------------------
// Sealing keys
// ---------------------------------------------------------------------------------------------

/// Mixes `context` into a key the secure processor derived: HKDF-SHA-256 with IKM = `derived`,
/// salt `"coffer-evidence snp sealing salt v1"`, info = `"coffer-evidence snp sealing key v1"` ‖
/// len(context) (8, little-endian) ‖ context. Pure; the same inputs always give the same key.
pub fn seal_from_derived(derived: &[u8; 32], context: &[u8]) -> Zeroizing<[u8; 32]> {
    let hkdf = Hkdf::<Sha256>::new(Some(SEAL_SALT), derived);
    let context_len = (context.len() as u64).to_le_bytes();
    let info: [&[u8]; 3] = [SEAL_INFO, &context_len, context];
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA-256's 255 * 32-byte limit: expand cannot fail.
    let _ = hkdf.expand_multi_info(&info, out.as_mut());
    out
}

/// A sealing key through `SNP_GET_DERIVED_KEY` on [`SEV_GUEST_DEVICE`] (needs SNP hardware),
/// with `context` mixed in by [`seal_from_derived`].
///
/// The request (MSG_KEY_REQ, message version 1, which every SNP firmware accepts):
/// - root key: the VCEK (ROOT_KEY_SELECT = 0): chip-unique, so another machine cannot unseal;
/// - GUEST_FIELD_SELECT = MEASUREMENT | GUEST_POLICY: another image, or the same image launched
///   under a weaker policy (debug, migration agent), gets another key;
/// - VMPL 0, GUEST_SVN 0 (we launch without an ID block, so there is no SVN to bind);
/// - **TCB_VERSION is not selected.** Mixing it in would change the key whenever the host
///   updates the SEV firmware or microcode, so sealed state would be lost on routine patching,
///   which the guest neither controls nor sees coming. A minimum TCB is instead enforced where
///   it protects secrets: verifiers refuse reports below the policy's TCB floor before releasing
///   anything to a guest. The price: state sealed on this chip stays readable by this image
///   after a TCB *rollback*; re-sealing under a TCB-bound key would need a migration step we do
///   not have. (How a given firmware treats the unselected field should be confirmed on
///   hardware.)
///
/// The 32 derived bytes come back from the `sev` crate as a plain array; we move them into
/// [`Zeroizing`] at once (the crate's own copy in its response buffer is not wiped).
pub fn device_sealing_key(context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
    use sev::firmware::guest::{DerivedKey, Firmware, GuestFieldSelect};

    let mut fields = GuestFieldSelect::default();
    fields.set_measurement(true);
    fields.set_guest_policy(true);
    let request = DerivedKey::new(false, fields, VMPL, 0, 0, None);
    let mut firmware = Firmware::open().map_err(|e| EvidenceError::Device {
        path: SEV_GUEST_DEVICE.to_string(),
        reason: e.to_string(),
    })?;
    let derived = Zeroizing::new(
        firmware
            .get_derived_key(Some(1), request)
            .map_err(|e| EvidenceError::Refused(format!("SNP_GET_DERIVED_KEY: {e}")))?,
    );
    Ok(seal_from_derived(&derived, context))
}

// ---------------------------------------------------------------------------------------------
// /dev/sev-guest backend
// ---------------------------------------------------------------------------------------------

/// Evidence and sealing keys through `/dev/sev-guest` (needs SNP hardware; compiles and is
/// documented everywhere, runs only in an SNP guest).
#[derive(Debug, Default)]
pub struct SevGuestProvider;

impl SevGuestProvider {
    /// The provider for [`SEV_GUEST_DEVICE`].
    pub fn new() -> Self {
        Self
    }
}

/// Takes the table the `sev` crate parsed and applies what [`parse_cert_table`] would have
/// checked that can still be checked (count, sizes, duplicates, empty entries). See the module
/// doc for why this is after the fact.
fn entries_from_sev(
    entries: Vec<sev::firmware::host::CertTableEntry>,
) -> Result<Vec<CertEntry>, CertTableError> {
    if entries.len() > MAX_CERT_ENTRIES {
        return Err(CertTableError::TooManyEntries {
            max: MAX_CERT_ENTRIES,
        });
    }
    let total: usize = entries.iter().map(|e| e.data().len()).sum();
    if total > MAX_CERT_TABLE_LEN {
        return Err(CertTableError::TooLarge {
            len: total,
            max: MAX_CERT_TABLE_LEN,
        });
    }
    let mut out: Vec<CertEntry> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        // Our GUID table, not the crate's: these are the values verified against AMD's sources.
        let kind = CertKind::from_guid(&parse_guid(&entry.guid_string()).unwrap_or([0xff; 16]));
        if entry.data().is_empty() {
            return Err(CertTableError::EmptyCertificate { index, kind });
        }
        if !matches!(kind, CertKind::Other(_)) {
            if let Some(first) = out.iter().position(|e| e.kind == kind) {
                return Err(CertTableError::Duplicate { index, kind, first });
            }
        }
        out.push(CertEntry {
            kind,
            data: entry.data,
        });
    }
    Ok(out)
}

impl EvidenceProvider for SevGuestProvider {
    fn platform(&self) -> Platform {
        Platform::QemuSnp
    }

    /// `SNP_GET_EXT_REPORT` at VMPL 0 (message version 1).
    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError> {
        let mut firmware =
            sev::firmware::guest::Firmware::open().map_err(|e| EvidenceError::Device {
                path: SEV_GUEST_DEVICE.to_string(),
                reason: e.to_string(),
            })?;
        let (report, certs) = firmware
            .get_ext_report(Some(1), Some(*report_data), Some(VMPL))
            .map_err(|e| EvidenceError::Refused(format!("SNP_GET_EXT_REPORT: {e}")))?;
        let table = certs
            .map(entries_from_sev)
            .transpose()
            .map_err(|e| EvidenceError::Protocol(format!("{SEV_GUEST_DEVICE}: {e}")))?;
        evidence(report, report_data, table, SEV_GUEST_DEVICE)
    }

    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        device_sealing_key(context)
    }
}

// ---------------------------------------------------------------------------------------------
// configfs-tsm backend
// ---------------------------------------------------------------------------------------------

/// The file operations of the configfs backend, apart so tests can play the kernel's side of
/// configfs (attributes appearing on `mkdir`, `generation` counting writes) in a plain
/// directory.
trait ReportFs: Send + Sync + fmt::Debug {
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reads at most `limit + 1` bytes, so the caller can tell "too large".
    fn read(&self, file: &Path, limit: usize) -> io::Result<Vec<u8>>;
    /// One `write` of `bytes` to an existing attribute.
    fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()>;
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
}

/// configfs itself.
#[derive(Debug)]
struct Configfs;

impl ReportFs for Configfs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    fn read(&self, file: &Path, limit: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(file)?
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
        // No O_CREAT/O_TRUNC: the attribute exists; configfs commits a binary attribute on close.
        let mut attribute = std::fs::OpenOptions::new().write(true).open(file)?;
        attribute.write_all(bytes)?;
        attribute.flush()
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }
}

/// Process-wide counter for report directory names.
static NEXT_REPORT: AtomicU64 = AtomicU64::new(0);

/// What one configfs attempt produced.
enum Attempt {
    Done {
        outblob: Vec<u8>,
        auxblob: Option<Vec<u8>>,
    },
    /// Someone else wrote to our directory between our writes and our reads.
    Conflict { expected: u64, got: u64 },
}

/// Evidence through configfs-tsm (Linux ≥ 6.7); sealing keys through [`SEV_GUEST_DEVICE`],
/// since configfs-tsm derives no keys.
#[derive(Debug)]
pub struct ConfigfsTsmProvider {
    root: PathBuf,
    privlevel: Option<u32>,
    fs: Box<dyn ReportFs>,
}

impl ConfigfsTsmProvider {
    /// A provider creating its report directories under `root` (normally
    /// [`CONFIGFS_TSM_REPORT`]). It writes `privlevel` [`VMPL`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            privlevel: Some(VMPL),
            fs: Box::new(Configfs),
        }
    }

    /// Asks for reports at `privlevel` (the VMPL), or leaves the kernel's default (`None`).
    pub fn with_privlevel(mut self, privlevel: Option<u32>) -> Self {
        self.privlevel = privlevel;
        self
    }

    fn device_error(path: &Path, what: &str, e: impl fmt::Display) -> EvidenceError {
        EvidenceError::Device {
            path: path.display().to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Creates a report directory with a name no other request uses.
    fn create_report_dir(&self) -> Result<PathBuf, EvidenceError> {
        let mut last = None;
        for _ in 0..DIR_NAME_ATTEMPTS {
            let n = NEXT_REPORT.fetch_add(1, Ordering::Relaxed);
            let dir = self.root.join(format!("coffer-{}-{n}", std::process::id()));
            match self.fs.create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(Self::device_error(
                        &dir,
                        "cannot create a report directory",
                        e,
                    ))
                }
            }
        }
        Err(Self::device_error(
            &self.root,
            "cannot create a report directory",
            last.map_or_else(
                || "every name tried is taken".to_string(),
                |e| e.to_string(),
            ),
        ))
    }

    fn read_text(&self, file: &Path) -> Result<String, EvidenceError> {
        let bytes = self
            .fs
            .read(file, 64)
            .map_err(|e| Self::device_error(file, "cannot read", e))?;
        if bytes.len() > 64 {
            return Err(Self::device_error(
                file,
                "unexpected content",
                "longer than 64 bytes",
            ));
        }
        String::from_utf8(bytes)
            .map(|s| s.trim().to_string())
            .map_err(|e| Self::device_error(file, "not text", e))
    }

    fn read_generation(&self, dir: &Path) -> Result<u64, EvidenceError> {
        let file = dir.join("generation");
        let text = self.read_text(&file)?;
        text.parse().map_err(|e| {
            Self::device_error(&file, &format!("generation {text:?} is not a number"), e)
        })
    }

    fn write(&self, file: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
        self.fs
            .write(file, bytes)
            .map_err(|e| Self::device_error(file, "cannot write", e))
    }

    /// One request in `dir`: check the provider, write the inputs, read the outputs, and check
    /// that `generation` moved by exactly our writes.
    fn request(
        &self,
        dir: &Path,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<Attempt, EvidenceError> {
        let provider_file = dir.join("provider");
        let provider = self.read_text(&provider_file)?;
        if provider != TSM_PROVIDER {
            return Err(Self::device_error(
                &provider_file,
                "not an SEV-SNP guest",
                format!("the provider is {provider:?}, expected {TSM_PROVIDER:?}"),
            ));
        }
        let before = self.read_generation(dir)?;
        let mut writes = 0u64;
        if let Some(level) = self.privlevel {
            self.write(&dir.join("privlevel"), format!("{level}\n").as_bytes())?;
            writes += 1;
        }
        self.write(&dir.join("inblob"), report_data)?;
        writes += 1;

        let outblob_file = dir.join("outblob");
        let outblob = self
            .fs
            .read(&outblob_file, MAX_OUTBLOB_LEN)
            .map_err(|e| Self::device_error(&outblob_file, "cannot read the report", e))?;
        if outblob.len() > MAX_OUTBLOB_LEN {
            return Err(Self::device_error(
                &outblob_file,
                "the report is too large",
                format!("more than {MAX_OUTBLOB_LEN} bytes"),
            ));
        }
        let auxblob_file = dir.join("auxblob");
        let auxblob = match self.fs.read(&auxblob_file, MAX_CERT_TABLE_LEN) {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(bytes),
            // Absent (no certificates, or a kernel without auxblob): the caller says what to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Self::device_error(
                    &auxblob_file,
                    "cannot read the certificate table",
                    e,
                ))
            }
        };

        let after = self.read_generation(dir)?;
        let expected = before.saturating_add(writes);
        if after != expected {
            return Ok(Attempt::Conflict {
                expected,
                got: after,
            });
        }
        Ok(Attempt::Done { outblob, auxblob })
    }

    /// One attempt in a fresh directory, which is removed whatever happens.
    fn attempt(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Attempt, EvidenceError> {
        let dir = self.create_report_dir()?;
        let outcome = self.request(&dir, report_data);
        let removed = self.fs.remove_dir(&dir);
        match (outcome, removed) {
            (Ok(attempt), Ok(())) => Ok(attempt),
            (Ok(_), Err(e)) => Err(Self::device_error(
                &dir,
                "cannot remove the report directory",
                e,
            )),
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(e)) => Err(EvidenceError::Device {
                path: dir.display().to_string(),
                reason: format!("{error}; then could not remove the report directory: {e}"),
            }),
        }
    }

    /// The raw report (`outblob`) and certificate table (`auxblob`, if any) for `report_data`,
    /// retried in a fresh directory if another writer interfered.
    pub fn raw_report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), EvidenceError> {
        let mut conflict = (0, 0);
        for _ in 0..CONFIGFS_ATTEMPTS {
            match self.attempt(report_data)? {
                Attempt::Done { outblob, auxblob } => return Ok((outblob, auxblob)),
                Attempt::Conflict { expected, got } => conflict = (expected, got),
            }
        }
        Err(EvidenceError::Device {
            path: self.root.display().to_string(),
            reason: format!(
                "another writer changed the report request {CONFIGFS_ATTEMPTS} times: generation \
                 {} after our writes, expected {}",
                conflict.1, conflict.0
            ),
        })
    }
}

impl EvidenceProvider for ConfigfsTsmProvider {
    fn platform(&self) -> Platform {
        Platform::QemuSnp
    }

    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError> {
        let (report, auxblob) = self.raw_report(report_data)?;
        let source = format!("{}/<report>/auxblob", self.root.display());
        let table = auxblob
            .map(|blob| parse_cert_table(&blob))
            .transpose()
            .map_err(|e| EvidenceError::Protocol(format!("{source}: {e}")))?;
        evidence(report, report_data, table, &source)
    }

    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        device_sealing_key(context)
    }
}

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

/// The provider for this guest's SEV-SNP device, if it has one: configfs-tsm when its report
/// directory exists (it hands us the raw certificate table to check), else `/dev/sev-guest`.
///
/// configfs-tsm alone does not mean SNP: the directory exists on any kernel built with
/// `CONFIG_TSM_REPORTS` (TDX guests, plain VMs). The SNP guest driver also creates
/// [`SEV_GUEST_DEVICE`], so both must exist for the configfs backend; a wrong `provider` is still
/// refused at request time.
pub fn detect() -> Option<Box<dyn EvidenceProvider>> {
    let device = Path::new(SEV_GUEST_DEVICE).exists();
    if device && Path::new(CONFIGFS_TSM_REPORT).is_dir() {
        return Some(Box::new(ConfigfsTsmProvider::new(CONFIGFS_TSM_REPORT)));
    }
    if device {
        return Some(Box::new(SevGuestProvider::new()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    // ---- certificate table -----------------------------------------------------------------

    /// A well-formed table: headers, terminator, then each certificate in order.
    fn table(certs: &[(Guid, &[u8])]) -> Vec<u8> {
        let mut offset = (certs.len() + 1) * ENTRY_LEN;
        let mut headers = Vec::new();
        let mut data = Vec::new();
        for (guid, cert) in certs {
            headers.extend_from_slice(guid);
            headers.extend_from_slice(&(offset as u32).to_le_bytes());
            headers.extend_from_slice(&(cert.len() as u32).to_le_bytes());
            data.extend_from_slice(cert);
            offset += cert.len();
        }
        headers.extend_from_slice(&[0; ENTRY_LEN]);
        headers.extend_from_slice(&data);
        headers
    }

    /// A table from raw headers (no terminator added), padded with `0xAA` to `len` bytes.
    fn raw(headers: &[(Guid, u32, u32)], len: usize) -> Vec<u8> {
        let mut blob = Vec::new();
        for (guid, offset, length) in headers {
            blob.extend_from_slice(guid);
            blob.extend_from_slice(&offset.to_le_bytes());
            blob.extend_from_slice(&length.to_le_bytes());
        }
        blob.resize(len.max(blob.len()), 0xAA);
        blob
    }

    const ZERO: Guid = [0; 16];
    const CRL: Guid = [
        0x92, 0xf8, 0x1b, 0xc3, 0x58, 0x11, 0x4d, 0x3d, 0x97, 0xff, 0xd1, 0x9f, 0x88, 0xdc, 0x67,
        0xea,
    ];

    #[test]
    fn guids_are_the_ghcb_values_in_text_byte_order() {
        // Verified against AMD's sev-guest tool (lib/cert-table.c, uuid_parse), go-sev-guest
        // abi/abi.go and the sev crate 8.0.0 (CertType); see the report of this change.
        for (guid, text) in [
            (VCEK_GUID, "63da758d-e664-4564-adc5-f4b93be8accd"),
            (VLEK_GUID, "a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
            (ASK_GUID, "4ab7b379-bbac-4fe4-a02f-05aef327c782"),
            (ARK_GUID, "c0b406a4-a803-4952-9743-3fb6014cd0ae"),
        ] {
            assert_eq!(guid_text(&guid), text);
            assert_eq!(parse_guid(text), Some(guid));
        }
        assert_eq!(parse_guid("63da758de6644564adc5f4b93be8accd"), None);
        assert_eq!(parse_guid("not-a-guid"), None);
    }

    #[test]
    fn a_well_formed_table_parses_in_order() {
        let blob = table(&[
            (VCEK_GUID, b"vcek-der"),
            (ASK_GUID, b"ask-der"),
            (ARK_GUID, b"ark-der"),
            (CRL, b"crl"),
        ]);
        let entries = parse_cert_table(&blob).unwrap();
        let got: Vec<(CertKind, &[u8])> = entries
            .iter()
            .map(|e| (e.kind, e.data.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (CertKind::Vcek, b"vcek-der".as_slice()),
                (CertKind::Ask, b"ask-der".as_slice()),
                (CertKind::Ark, b"ark-der".as_slice()),
                (CertKind::Other(CRL), b"crl".as_slice()),
            ]
        );
        assert_eq!(parse_cert_table(&table(&[])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_tables_are_refused_naming_the_entry() {
        use CertTableError as E;
        let h = ENTRY_LEN as u32;
        let cases: Vec<(&str, Vec<u8>, CertTableError)> = vec![
            ("empty blob", vec![], E::Unterminated { entries: 0 }),
            (
                "truncated header",
                table(&[(VCEK_GUID, b"v")])[..30].to_vec(),
                E::TruncatedEntry {
                    index: 1,
                    available: 6,
                },
            ),
            (
                "unterminated",
                raw(&[(VCEK_GUID, 2 * h, 1), (ASK_GUID, 2 * h, 1)], 0),
                E::Unterminated { entries: 2 },
            ),
            (
                "terminator with a length",
                raw(&[(VCEK_GUID, 2 * h, 1), (ZERO, 0, 5)], 100),
                E::BadTerminator {
                    index: 1,
                    offset: 0,
                    length: 5,
                },
            ),
            (
                "out of bounds",
                raw(&[(VCEK_GUID, 2 * h, 60), (ZERO, 0, 0)], 100),
                E::OutOfBounds {
                    index: 0,
                    kind: CertKind::Vcek,
                    offset: 2 * h,
                    end: 108,
                    table_len: 100,
                },
            ),
            (
                "offset + length overflows u32",
                raw(&[(ARK_GUID, u32::MAX - 3, 8), (ZERO, 0, 0)], 100),
                E::OutOfBounds {
                    index: 0,
                    kind: CertKind::Ark,
                    offset: u32::MAX - 3,
                    end: u64::from(u32::MAX) + 5,
                    table_len: 100,
                },
            ),
            (
                "overlapping certificates",
                raw(
                    &[
                        (VCEK_GUID, 3 * h, 20),
                        (ASK_GUID, 3 * h + 10, 20),
                        (ZERO, 0, 0),
                    ],
                    200,
                ),
                E::Overlap {
                    index: 1,
                    kind: CertKind::Ask,
                    other: 0,
                    other_kind: CertKind::Vcek,
                },
            ),
            (
                "certificate over the headers",
                raw(&[(ARK_GUID, 0, 40), (ZERO, 0, 0)], 100),
                E::OverlapsHeaders {
                    index: 0,
                    kind: CertKind::Ark,
                    offset: 0,
                    headers_end: 48,
                },
            ),
            (
                "empty certificate",
                raw(&[(ASK_GUID, 2 * h, 0), (ZERO, 0, 0)], 100),
                E::EmptyCertificate {
                    index: 0,
                    kind: CertKind::Ask,
                },
            ),
            (
                "two VCEKs",
                raw(
                    &[
                        (VCEK_GUID, 3 * h, 4),
                        (VCEK_GUID, 3 * h + 4, 4),
                        (ZERO, 0, 0),
                    ],
                    100,
                ),
                E::Duplicate {
                    index: 1,
                    kind: CertKind::Vcek,
                    first: 0,
                },
            ),
            (
                "too many entries",
                raw(&vec![(CRL, 0, 1); MAX_CERT_ENTRIES + 1], 0),
                E::TooManyEntries {
                    max: MAX_CERT_ENTRIES,
                },
            ),
            (
                "too large",
                vec![0; MAX_CERT_TABLE_LEN + 1],
                E::TooLarge {
                    len: MAX_CERT_TABLE_LEN + 1,
                    max: MAX_CERT_TABLE_LEN,
                },
            ),
        ];
        for (name, blob, expected) in cases {
            assert_eq!(parse_cert_table(&blob), Err(expected), "{name}");
        }
    }

    #[test]
    fn table_errors_name_the_entry_and_its_guid() {
        let blob = raw(&[(VCEK_GUID, 48, 60), (ZERO, 0, 0)], 100);
        let message = parse_cert_table(&blob).unwrap_err().to_string();
        assert_eq!(
            message,
            "entry 0 (VCEK 63da758d-e664-4564-adc5-f4b93be8accd) names bytes 48..108 but the \
             table is 100 bytes"
        );
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes() {
        // A cheap deterministic sweep (the fuzz target is the thorough version).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let mut blob = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                blob.push(if state % 3 == 0 { 0 } else { state as u8 });
            }
            let _ = parse_cert_table(&blob);
        }
    }

    // ---- report / chain --------------------------------------------------------------------

    fn report(report_data: &[u8; 64], signing_key: u32) -> Vec<u8> {
        let mut report = vec![0u8; REPORT_LEN];
        report[0] = 3; // version
        report[SIGNER_INFO_OFFSET..SIGNER_INFO_OFFSET + 4]
            .copy_from_slice(&(signing_key << 2).to_le_bytes());
        report[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64].copy_from_slice(report_data);
        report
    }

    fn entries(certs: &[(Guid, &[u8])]) -> Vec<CertEntry> {
        parse_cert_table(&table(certs)).unwrap()
    }

    #[test]
    fn the_chain_follows_the_reports_signing_key() {
        let rd = [7u8; 64];
        let full = entries(&[
            (VCEK_GUID, b"vcek"),
            (VLEK_GUID, b"vlek"),
            (ASK_GUID, b"ask"),
            (ARK_GUID, b"ark"),
        ]);
        let vcek = chain_for_report(&report(&rd, 0), Some(full.clone())).unwrap();
        assert_eq!(
            vcek,
            VekChain {
                vek: b"vcek".to_vec(),
                ask: Some(b"ask".to_vec()),
                ark: Some(b"ark".to_vec()),
            }
        );
        let vlek = chain_for_report(&report(&rd, 1), Some(full)).unwrap();
        assert_eq!(vlek.vek, b"vlek");
        let vek_only = chain_for_report(&report(&rd, 0), Some(entries(&[(VCEK_GUID, b"v")])));
        assert_eq!(
            vek_only.unwrap(),
            VekChain {
                vek: b"v".to_vec(),
                ask: None,
                ark: None
            }
        );
        assert_eq!(
            chain_for_report(&report(&rd, 7), Some(vec![])),
            Err(ChainError::SigningKey(7))
        );
        assert_eq!(
            chain_for_report(&[0; 10], None),
            Err(ChainError::ReportLength { len: 10 })
        );
    }

    #[test]
    fn a_missing_vcek_says_to_provision_it_on_the_host() {
        let rd = [1u8; 64];
        let none = chain_for_report(&report(&rd, 0), None).unwrap_err();
        assert_eq!(none, ChainError::NoTable(CertKind::Vcek));
        let absent = chain_for_report(
            &report(&rd, 0),
            Some(entries(&[(ASK_GUID, b"a"), (ARK_GUID, b"r")])),
        )
        .unwrap_err();
        assert_eq!(absent, ChainError::MissingVek(CertKind::Vcek));
        for error in [none, absent] {
            let message = error.to_string();
            assert!(message.contains("VCEK"), "{message}");
            assert!(message.contains("provision"), "{message}");
            assert!(message.contains("snphost import"), "{message}");
            assert!(message.contains("never fetches"), "{message}");
        }
    }

    #[test]
    fn a_report_for_other_report_data_is_refused() {
        let error = evidence(report(&[2; 64], 0), &[3; 64], None, "x").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("REPORT_DATA is not the one asked for"),
            "{error}"
        );
    }

    // ---- sealing keys ----------------------------------------------------------------------

    #[test]
    fn sealing_keys_depend_on_the_context_and_the_derived_key() {
        let derived = [9u8; 32];
        let a = seal_from_derived(&derived, b"kms/state");
        assert_eq!(*a, *seal_from_derived(&derived, b"kms/state"));
        assert_ne!(*a, *seal_from_derived(&derived, b"kms/other"));
        assert_ne!(*a, *seal_from_derived(&derived, b""));
        assert_ne!(*a, *seal_from_derived(&[8u8; 32], b"kms/state"));
        assert_ne!(*a, derived, "the derived key itself is never handed out");
    }

    // ---- configfs-tsm ----------------------------------------------------------------------

    /// Plays the kernel's side of configfs-tsm on a plain directory: `mkdir` makes the
    /// attributes appear, every write bumps `generation`, writing `inblob` produces `outblob`,
    /// and `rmdir` makes the attributes vanish (recording what `inblob` held).
    #[derive(Debug)]
    struct FakeKernel {
        provider: String,
        auxblob: Option<Vec<u8>>,
        /// Extra generation bumps to make after the next `inblob` writes (another writer).
        interfere: Mutex<u32>,
        /// `inblob` of each removed directory, by directory.
        inblobs: Mutex<HashMap<PathBuf, Vec<u8>>>,
        created: Mutex<Vec<PathBuf>>,
    }

    impl FakeKernel {
        fn new(auxblob: Option<Vec<u8>>) -> Self {
            Self {
                provider: TSM_PROVIDER.to_string(),
                auxblob,
                interfere: Mutex::new(0),
                inblobs: Mutex::new(HashMap::new()),
                created: Mutex::new(Vec::new()),
            }
        }

        fn bump(dir: &Path) -> io::Result<()> {
            let file = dir.join("generation");
            let n: u64 = std::fs::read_to_string(&file)?.trim().parse().unwrap();
            std::fs::write(file, format!("{}\n", n + 1))
        }
    }

    impl ReportFs for std::sync::Arc<FakeKernel> {
        fn create_dir(&self, dir: &Path) -> io::Result<()> {
            std::fs::create_dir(dir)?;
            self.created.lock().unwrap().push(dir.to_path_buf());
            std::fs::write(dir.join("provider"), format!("{}\n", self.provider))?;
            std::fs::write(dir.join("generation"), "0\n")?;
            std::fs::write(dir.join("privlevel_floor"), "0\n")?;
            for attribute in ["inblob", "outblob", "privlevel"] {
                std::fs::write(dir.join(attribute), b"")?;
            }
            if let Some(aux) = &self.auxblob {
                std::fs::write(dir.join("auxblob"), aux)?;
            }
            Ok(())
        }

        fn read(&self, file: &Path, limit: usize) -> io::Result<Vec<u8>> {
            Configfs.read(file, limit)
        }

        fn write(&self, file: &Path, bytes: &[u8]) -> io::Result<()> {
            std::fs::write(file, bytes)?;
            let dir = file.parent().unwrap();
            FakeKernel::bump(dir)?;
            if file.file_name() == Some("inblob".as_ref()) {
                let rd: [u8; 64] = bytes.try_into().unwrap();
                std::fs::write(dir.join("outblob"), report(&rd, 0))?;
                let mut interfere = self.interfere.lock().unwrap();
                if *interfere > 0 {
                    *interfere -= 1;
                    FakeKernel::bump(dir)?;
                }
            }
            Ok(())
        }

        fn remove_dir(&self, dir: &Path) -> io::Result<()> {
            let inblob = std::fs::read(dir.join("inblob"))?;
            self.inblobs
                .lock()
                .unwrap()
                .insert(dir.to_path_buf(), inblob);
            for entry in std::fs::read_dir(dir)? {
                std::fs::remove_file(entry?.path())?;
            }
            std::fs::remove_dir(dir)
        }
    }

    fn provider(root: &Path, kernel: &std::sync::Arc<FakeKernel>) -> ConfigfsTsmProvider {
        ConfigfsTsmProvider {
            root: root.to_path_buf(),
            privlevel: Some(VMPL),
            fs: Box::new(kernel.clone()),
        }
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn configfs_attest_writes_exactly_the_report_data_and_removes_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let aux = table(&[(VCEK_GUID, b"vcek"), (ASK_GUID, b"ask"), (ARK_GUID, b"ark")]);
        let kernel = std::sync::Arc::new(FakeKernel::new(Some(aux)));
        let rd: [u8; 64] = std::array::from_fn(|i| i as u8);

        let evidence = provider(root.path(), &kernel).attest(&rd).unwrap();

        assert_eq!(
            evidence,
            Evidence::Snp {
                report: report(&rd, 0),
                vek: b"vcek".to_vec(),
                ask: Some(b"ask".to_vec()),
                ark: Some(b"ark".to_vec()),
            }
        );
        let inblobs = kernel.inblobs.lock().unwrap();
        assert_eq!(inblobs.len(), 1);
        assert_eq!(inblobs.values().next().unwrap(), &rd.to_vec());
        assert!(
            is_empty(root.path()),
            "the report directory was left behind"
        );
    }

    #[test]
    fn configfs_retries_in_a_fresh_directory_when_another_writer_interferes() {
        let root = tempfile::tempdir().unwrap();
        let aux = table(&[(VCEK_GUID, b"vcek")]);
        let kernel = std::sync::Arc::new(FakeKernel::new(Some(aux)));
        *kernel.interfere.lock().unwrap() = 1;
        let rd = [5u8; 64];

        provider(root.path(), &kernel).attest(&rd).unwrap();

        let created = kernel.created.lock().unwrap();
        assert_eq!(created.len(), 2, "{created:?}");
        assert_ne!(created[0], created[1]);
        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_gives_up_on_a_persistent_writer_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let kernel = std::sync::Arc::new(FakeKernel::new(None));
        *kernel.interfere.lock().unwrap() = 100;

        let error = provider(root.path(), &kernel).attest(&[0; 64]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("another writer"), "{message}");
        assert!(
            message.contains("generation 3 after our writes, expected 2"),
            "{message}"
        );
        assert_eq!(kernel.created.lock().unwrap().len(), CONFIGFS_ATTEMPTS);
        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_refuses_another_provider_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let mut fake = FakeKernel::new(None);
        fake.provider = "tdx_guest".into();
        let kernel = std::sync::Arc::new(fake);

        let error = provider(root.path(), &kernel).attest(&[0; 64]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("provider"), "{message}");
        assert!(message.contains("\"tdx_guest\""), "{message}");
        assert!(message.contains("\"sev_guest\""), "{message}");
        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_without_a_certificate_table_asks_for_the_vcek_on_the_host() {
        let root = tempfile::tempdir().unwrap();
        let kernel = std::sync::Arc::new(FakeKernel::new(None));

        let error = provider(root.path(), &kernel).attest(&[0; 64]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("snphost import"), "{message}");
        assert!(message.contains("VCEK"), "{message}");
        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_refuses_a_malformed_certificate_table_naming_the_entry() {
        let root = tempfile::tempdir().unwrap();
        let aux = raw(&[(VCEK_GUID, 48, 4000), (ZERO, 0, 0)], 100);
        let kernel = std::sync::Arc::new(FakeKernel::new(Some(aux)));

        let error = provider(root.path(), &kernel).attest(&[0; 64]).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("auxblob"), "{message}");
        assert!(message.contains("entry 0 (VCEK"), "{message}");
        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_without_privlevel_writes_only_inblob() {
        let root = tempfile::tempdir().unwrap();
        let kernel = std::sync::Arc::new(FakeKernel::new(Some(table(&[(VCEK_GUID, b"v")]))));
        let provider = provider(root.path(), &kernel).with_privlevel(None);

        provider.attest(&[4; 64]).unwrap();

        assert!(is_empty(root.path()));
    }

    #[test]
    fn configfs_with_a_missing_root_names_it() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("tsm/report");
        let error = ConfigfsTsmProvider::new(&missing)
            .attest(&[0; 64])
            .unwrap_err();
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }
}
