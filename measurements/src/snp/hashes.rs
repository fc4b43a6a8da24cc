//! The SEV hashes table: how QEMU measured direct boot binds the kernel, the initrd and the
//! command line into the launch digest.
//!
//! QEMU (`target/i386/sev.c`, `SevHashTable` and `sev_add_kernel_loader_hashes`) writes a table
//! of SHA-256 hashes into the page OVMF reserves for it (`SEV_HASH_TABLE_RV_GUID`); OVMF's
//! `BlobVerifierLibSevHashes` later checks the blobs it loads against that table. The page is
//! measured as one NORMAL page, so the launch digest covers the three hashes.
//!
//! Layout (packed, little-endian, GUIDs in stored byte order):
//!
//! ```text
//! header  guid 9438d606-4f22-4cc9-b479-a793d411fd21, u16 len = 168
//! cmdline guid 97d02dd8-bd20-4c94-aa78-e7714d36ab2a, u16 len = 50, sha256
//! initrd  guid 44baf731-3a2f-4bd7-9af1-41e29169781d, u16 len = 50, sha256
//! kernel  guid 4de79437-abd2-427f-b835-d5b172d2045b, u16 len = 50, sha256
//! zero padding to a multiple of 16 (QEMU's `PaddedSevHashTable`) -> 176 bytes
//! ```

use sha2::{Digest, Sha256};

use crate::snp::ovmf::Guid;
use crate::snp::PAGE_SIZE;

const HEADER_GUID: Guid = Guid::from_fields(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
const CMDLINE_GUID: Guid = Guid::from_fields(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
const INITRD_GUID: Guid = Guid::from_fields(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
const KERNEL_GUID: Guid = Guid::from_fields(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// One table entry: GUID, u16 length, SHA-256.
const ENTRY_LEN: usize = 16 + 2 + 32;
/// The unpadded table: header GUID, u16 length, three entries (168 bytes).
const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// The table as QEMU copies it into the page: padded to 16 bytes (176 bytes).
pub const PADDED_TABLE_LEN: usize = TABLE_LEN.next_multiple_of(16);

const _: () = assert!(TABLE_LEN == 168 && PADDED_TABLE_LEN == 176);

/// The three SHA-256 hashes QEMU puts in the SEV hashes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashes {
    kernel: [u8; 32],
    initrd: [u8; 32],
    cmdline: [u8; 32],
}

impl SevHashes {
    /// Hashes the blobs as QEMU does for `-kernel`, `-initrd` and `-append`.
    ///
    /// - kernel: SHA-256 of the whole file (setup and protected-mode parts; QEMU does not patch
    ///   the setup header when SEV is on, so this is the file as given);
    /// - initrd: SHA-256 of the file, or of nothing without `-initrd`;
    /// - cmdline: SHA-256 of the UTF-8 text plus its trailing NUL; without `-append` the
    ///   command line is empty, so `None` and `Some("")` both hash the single byte `\0`.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut c = Sha256::new();
        c.update(cmdline.unwrap_or("").as_bytes());
        c.update([0u8]);
        SevHashes {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or_default()).into(),
            cmdline: c.finalize().into(),
        }
    }

    /// Takes hashes computed elsewhere (for example pinned in a policy, or streamed from
    /// large files).
    pub const fn from_sha256(kernel: [u8; 32], initrd: [u8; 32], cmdline: [u8; 32]) -> Self {
        SevHashes {
            kernel,
            initrd,
            cmdline,
        }
    }

    /// SHA-256 of the kernel.
    pub const fn kernel(&self) -> &[u8; 32] {
        &self.kernel
    }

    /// SHA-256 of the initrd (of nothing when there is none).
    pub const fn initrd(&self) -> &[u8; 32] {
        &self.initrd
    }

    /// SHA-256 of the command line with its trailing NUL.
    pub const fn cmdline(&self) -> &[u8; 32] {
        &self.cmdline
    }

    /// The padded table, 176 bytes, as QEMU copies it into guest memory.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            t[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&HEADER_GUID.to_bytes_le());
        put(&(TABLE_LEN as u16).to_le_bytes());
        for (guid, hash) in [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ] {
            put(&guid.to_bytes_le());
            put(&(ENTRY_LEN as u16).to_le_bytes());
            put(hash);
        }
        t
    }

    /// The 4 KiB page that holds the table at `offset_in_page` and zeros elsewhere, or `None`
    /// when the table would not fit in the page.
    pub fn page(&self, offset_in_page: usize) -> Option<[u8; PAGE_SIZE]> {
        let end = offset_in_page
            .checked_add(PADDED_TABLE_LEN)
            .filter(|e| *e <= PAGE_SIZE)?;
        let mut page = [0u8; PAGE_SIZE];
        page[offset_in_page..end].copy_from_slice(&self.table());
        Some(page)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn no_append_and_empty_append_both_hash_a_single_nul() {
        let a = SevHashes::new(b"k", None, None);
        let b = SevHashes::new(b"k", None, Some(""));
        assert_eq!(a, b);
        assert_eq!(
            hex::encode(a.cmdline()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex::encode(a.initrd()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_table_fits_only_inside_the_page() {
        let h = SevHashes::new(b"k", None, None);
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN).is_some());
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN + 1).is_none());
        assert!(h.page(usize::MAX).is_none());
        let page = h.page(0xc00).unwrap();
        assert_eq!(&page[0xc00..0xc00 + PADDED_TABLE_LEN], &h.table());
        assert!(page[..0xc00].iter().all(|b| *b == 0));
    }
}
