//! The SNP guest context: the SHA-384 chain over PAGE_INFO records that the PSP extends on every
//! SNP_LAUNCH_UPDATE, and the launch digest it ends in.
//!
//! Type-state: a [`GuestContext`] is a digest being computed and has no getter; only
//! [`GuestContext::finish`] turns it into a [`LaunchDigest`], so a half-computed value cannot be
//! compared against a report by mistake.
//!
//! PAGE_INFO layout: AMD SEV-SNP Firmware ABI specification (#56860) §8.17.2, Table 67 "Layout
//! of the PAGE_INFO Structure" (the numbering sev-snp-measure `gctx.py` cites); page-type
//! values from the SNP_LAUNCH_UPDATE PAGE_TYPE field, identical to Linux's
//! `KVM_SEV_SNP_PAGE_TYPE_*`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha384};

use crate::snp::error::{ConfigError, MeasureError};
use crate::snp::PAGE_SIZE;

/// Length of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;

/// PAGE_INFO.LENGTH: the structure is 0x70 bytes.
const PAGE_INFO_LEN: usize = 0x70;
const _: () = assert!(2 * DIGEST_LEN + 2 + 6 + 8 == PAGE_INFO_LEN);

/// GPA recorded for VMSA pages: (u64)-1, page aligned, bits above 51 cleared, as the RMP records
/// it (sev-snp-measure `gctx.py` `VMSA_GPA`).
pub const VMSA_GPA: u64 = 0x0000_FFFF_FFFF_F000;

/// PAGE_INFO.PAGE_TYPE (SNP ABI spec, SNP_LAUNCH_UPDATE page types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// PAGE_TYPE_NORMAL: data page, measured by content.
    Normal = 0x01,
    /// PAGE_TYPE_VMSA: a vCPU save area, measured by content.
    Vmsa = 0x02,
    /// PAGE_TYPE_ZERO: a page the PSP zeroes; contents not hashed.
    Zero = 0x03,
    /// PAGE_TYPE_UNMEASURED: contents not hashed.
    Unmeasured = 0x04,
    /// PAGE_TYPE_SECRETS: the PSP fills it with the guest secrets.
    Secrets = 0x05,
    /// PAGE_TYPE_CPUID: the PSP checks and fills the CPUID table.
    Cpuid = 0x06,
}

/// A finished SEV-SNP launch digest: the value the PSP reports as MEASUREMENT.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaunchDigest([u8; DIGEST_LEN]);

impl LaunchDigest {
    /// Wraps 48 bytes, e.g. a report's MEASUREMENT field.
    pub const fn from_bytes(bytes: [u8; DIGEST_LEN]) -> Self {
        LaunchDigest(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Lower-case hex, 96 characters (what `sev-snp-measure` prints by default).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Standard base64 with padding, 64 characters (`sev-snp-measure --output-format base64`).
    pub fn to_base64(&self) -> String {
        base64_encode(&self.0)
    }

    /// Parses 96 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, ConfigError> {
        let mut bytes = [0u8; DIGEST_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|e| ConfigError::DigestHex {
            text: text.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(LaunchDigest(bytes))
    }
}

impl fmt::Display for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LaunchDigest({})", self.to_hex())
    }
}

impl FromStr for LaunchDigest {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LaunchDigest::from_hex(s)
    }
}

/// RFC 4648 base64 with padding. A launch digest is the only thing encoded, so a few lines here
/// beat a dependency.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| char::from(ALPHABET[(v & 0x3f) as usize]);
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

/// One PAGE_INFO update, as recorded by a traced [`GuestContext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageUpdate {
    /// The page type.
    pub page_type: PageType,
    /// The page's guest-physical address.
    pub gpa: u64,
    /// PAGE_INFO.CONTENTS: SHA-384 of the page, or zeros for types whose content is not hashed.
    pub contents: [u8; DIGEST_LEN],
    /// The digest after this update.
    pub digest_after: LaunchDigest,
}

/// A launch digest being computed. Each `update_*` call is one SNP_LAUNCH_UPDATE per page.
#[derive(Debug, Clone)]
pub struct GuestContext {
    ld: [u8; DIGEST_LEN],
    trace: Option<Vec<PageUpdate>>,
}

impl Default for GuestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestContext {
    /// A fresh context: the digest starts as 48 zero bytes.
    pub fn new() -> Self {
        GuestContext {
            ld: [0; DIGEST_LEN],
            trace: None,
        }
    }

    /// Continues from a digest computed earlier, e.g. the firmware-only digest
    /// (`sev-snp-measure --snp-ovmf-hash`).
    pub fn resume(from: LaunchDigest) -> Self {
        GuestContext {
            ld: from.0,
            trace: None,
        }
    }

    /// Records every update from here on; read them with [`GuestContext::finish_traced`].
    pub fn traced(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: [u8; DIGEST_LEN]) {
        // DIGEST_CUR, CONTENTS, LENGTH, PAGE_TYPE; IMI_PAGE (0x63), VMPL3/2/1_PERMS
        // (0x64, 0x65, 0x66) and a reserved byte (0x67) stay 0; GPA at 0x68.
        let mut info = [0u8; PAGE_INFO_LEN];
        info[0x00..0x30].copy_from_slice(&self.ld);
        info[0x30..0x60].copy_from_slice(&contents);
        info[0x60..0x62].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
        info[0x62] = page_type as u8;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
        if let Some(trace) = &mut self.trace {
            trace.push(PageUpdate {
                page_type,
                gpa,
                contents,
                digest_after: LaunchDigest(self.ld),
            });
        }
    }

    fn page_count(gpa: u64, len: u64) -> Result<u64, MeasureError> {
        if len % PAGE_SIZE as u64 != 0 {
            return Err(MeasureError::RegionNotPageMultiple { gpa, len });
        }
        Ok(len / PAGE_SIZE as u64)
    }

    /// Measures `data` as NORMAL pages starting at `gpa`. `data` must be whole pages.
    pub fn update_normal_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), MeasureError> {
        Self::page_count(gpa, data.len() as u64)?;
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let contents = Sha384::digest(page).into();
            self.update(PageType::Normal, gpa + (i * PAGE_SIZE) as u64, contents);
        }
        Ok(())
    }

    /// Measures one VMSA page at [`VMSA_GPA`].
    pub fn update_vmsa_page(&mut self, page: &[u8; PAGE_SIZE]) {
        self.update(PageType::Vmsa, VMSA_GPA, Sha384::digest(page).into());
    }

    fn update_contentless(
        &mut self,
        page_type: PageType,
        gpa: u64,
        len: u64,
    ) -> Result<(), MeasureError> {
        for i in 0..Self::page_count(gpa, len)? {
            self.update(page_type, gpa + i * PAGE_SIZE as u64, [0; DIGEST_LEN]);
        }
        Ok(())
    }

    /// Measures `len` bytes (whole pages) at `gpa` as ZERO pages.
    pub fn update_zero_pages(&mut self, gpa: u64, len: u64) -> Result<(), MeasureError> {
        self.update_contentless(PageType::Zero, gpa, len)
    }

    /// Measures `len` bytes (whole pages) at `gpa` as UNMEASURED pages.
    pub fn update_unmeasured_pages(&mut self, gpa: u64, len: u64) -> Result<(), MeasureError> {
        self.update_contentless(PageType::Unmeasured, gpa, len)
    }

    /// Measures the SECRETS page at `gpa`.
    pub fn update_secrets_page(&mut self, gpa: u64) {
        self.update(PageType::Secrets, gpa, [0; DIGEST_LEN]);
    }

    /// Measures the CPUID page at `gpa`.
    pub fn update_cpuid_page(&mut self, gpa: u64) {
        self.update(PageType::Cpuid, gpa, [0; DIGEST_LEN]);
    }

    /// Ends the computation.
    pub fn finish(self) -> LaunchDigest {
        LaunchDigest(self.ld)
    }

    /// Ends the computation and hands back the recorded updates (empty unless
    /// [`GuestContext::traced`] was called).
    pub fn finish_traced(self) -> (LaunchDigest, Vec<PageUpdate>) {
        (LaunchDigest(self.ld), self.trace.unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), out);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn a_digest_renders_as_the_reference_prints_it() {
        // sev-snp-measure --output-format base64 for kh_full_EPYC-v4_2 (run by hand).
        let d = LaunchDigest::from_hex(
            "9f2de2f088414efcb08c2f046a41e245f88e8cf302893aea4a742cc2d65c273fb08519131e088aef22f890a101aade6b",
        )
        .unwrap();
        assert_eq!(
            d.to_base64(),
            "ny3i8IhBTvywjC8EakHiRfiOjPMCiTrqSnQswtZcJz+whRkTHgiK7yL4kKEBqt5r"
        );
        assert_eq!(d.to_string().parse::<LaunchDigest>().unwrap(), d);
        assert!(matches!(
            LaunchDigest::from_hex("abcd"),
            Err(ConfigError::DigestHex { .. })
        ));
    }

    #[test]
    fn partial_regions_are_refused() {
        let mut g = GuestContext::new();
        assert_eq!(
            g.update_zero_pages(0x1000, 0x800),
            Err(MeasureError::RegionNotPageMultiple {
                gpa: 0x1000,
                len: 0x800
            })
        );
        assert!(g.update_normal_pages(0, &[0u8; 100]).is_err());
        // Nothing was measured by the refused calls.
        assert_eq!(g.finish(), LaunchDigest::from_bytes([0; DIGEST_LEN]));
    }
}
