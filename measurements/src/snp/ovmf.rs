//! Reading an OVMF image: its GUIDed footer table and the SEV metadata block it points to.
//!
//! Layout sources: edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm` (the GUIDed structure
//! table that ends 32 bytes before the end of the image), edk2
//! `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm` (the "ASEV" block), and QEMU
//! `hw/i386/pc_sysfw_ovmf.c` / `target/i386/sev.c`, which read both at launch. sev-snp-measure
//! `ovmf.py` mirrors them.
//!
//! Everything is bounds-checked: arbitrary bytes give an [`OvmfError`], never a panic.

use std::fmt;

use crate::snp::error::OvmfError;

/// A GUID as stored in firmware: the mixed-endian "bytes_le" form (the first three fields
/// little-endian, the last eight bytes as written).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid([u8; 16]);

impl Guid {
    /// Builds the stored form from the canonical text fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// Wraps the 16 bytes as stored in firmware.
    pub const fn from_bytes_le(bytes: [u8; 16]) -> Self {
        Guid(bytes)
    }

    /// The 16 bytes as stored in firmware.
    pub const fn to_bytes_le(self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// The footer entry that closes the table: `96b582de-1fb2-45f7-baea-a366c55a082d`
/// (edk2 `ResetVectorVtf0.asm`, QEMU `OVMF_TABLE_FOOTER_GUID`).
pub const OVMF_TABLE_FOOTER_GUID: Guid = Guid::from_fields(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);

/// SEV hash table reserved area, data `{u32 base, u32 size}`:
/// `7255371f-3a3b-4b04-927b-1da6efa8d454` (QEMU `SEV_HASH_TABLE_RV_GUID`).
pub const SEV_HASH_TABLE_RV_GUID: Guid = Guid::from_fields(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);

/// SEV-ES reset block, data `u32` AP reset EIP: `00f771de-1a7e-4fcb-890e-68c77e2fb44e`
/// (QEMU `SEV_INFO_BLOCK_GUID` in `target/i386/sev.c`).
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::from_fields(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);

/// OVMF SEV metadata, data `u32` offset of the "ASEV" header counted from the end of the image:
/// `dc886566-984a-4798-a75e-5585a7bf67cc` (QEMU `OVMF_SEV_META_DATA_GUID`).
pub const OVMF_SEV_METADATA_GUID: Guid = Guid::from_fields(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);

/// Size of a footer table entry header: `u16 size` followed by the 16-byte GUID.
const ENTRY_HEADER_LEN: usize = 2 + 16;
/// The table ends this many bytes before the end of the image (the reset vector and padding
/// follow it: edk2 `ResetVectorVtf0.asm`).
const TABLE_END_FROM_IMAGE_END: usize = 32;
/// "ASEV" header: signature, size, version, item count (edk2 `OvmfSevMetadata.asm`).
const METADATA_HEADER_LEN: usize = 16;
/// One section descriptor: `{u32 gpa, u32 size, u32 type}`.
const METADATA_DESC_LEN: usize = 12;

/// Type of an SEV metadata section (edk2 `OvmfSevMetadata.asm`, QEMU `SEV_DESC_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    /// `OVMF_SECTION_TYPE_SNP_SEC_MEM` (1): memory the SEC phase pre-validates.
    SnpSecMem,
    /// `OVMF_SECTION_TYPE_SNP_SECRETS` (2): the page the PSP fills with the guest secrets.
    SnpSecrets,
    /// `OVMF_SECTION_TYPE_CPUID` (3): the page the PSP checks and fills with the CPUID table.
    Cpuid,
    /// `OVMF_SECTION_TYPE_SVSM_CAA` (4): the SVSM calling-area page.
    SvsmCaa,
    /// `OVMF_SECTION_TYPE_KERNEL_HASHES` (0x10): the page that holds the SEV hashes table.
    SnpKernelHashes,
}

impl SectionType {
    /// The type for a raw descriptor value, if it is a known one.
    pub const fn from_raw(value: u32) -> Option<Self> {
        match value {
            1 => Some(SectionType::SnpSecMem),
            2 => Some(SectionType::SnpSecrets),
            3 => Some(SectionType::Cpuid),
            4 => Some(SectionType::SvsmCaa),
            0x10 => Some(SectionType::SnpKernelHashes),
            _ => None,
        }
    }
}

/// One SEV metadata section descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSection {
    /// Guest-physical start address.
    pub gpa: u32,
    /// Length in bytes.
    pub size: u32,
    /// What the section is.
    pub kind: SectionType,
}

/// The reserved area OVMF leaves for QEMU's SEV hashes table (`SEV_HASH_TABLE_RV_GUID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashTableArea {
    /// Guest-physical address of the table; 0 means the firmware does not support it.
    pub base: u32,
    /// Size reserved for it.
    pub size: u32,
}

/// A parsed OVMF image, borrowing the bytes.
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    data: &'a [u8],
    has_footer: bool,
    reset_eip: Option<u32>,
    hash_table: Option<HashTableArea>,
    metadata: Option<Vec<MetadataSection>>,
}

impl<'a> Ovmf<'a> {
    /// Parses the footer table and, if the table points to one, the SEV metadata block.
    ///
    /// A missing footer or a missing metadata entry is not a parse error (query
    /// [`Ovmf::has_footer_table`] and [`Ovmf::metadata`]); a damaged one is.
    pub fn parse(data: &'a [u8]) -> Result<Self, OvmfError> {
        let entries = parse_footer_table(data)?;
        let has_footer = entries.is_some();
        let entries = entries.unwrap_or_default();

        let find = |guid: Guid| entries.iter().find(|(g, _)| *g == guid).map(|(_, d)| *d);

        let reset_eip = match find(SEV_ES_RESET_BLOCK_GUID) {
            Some(d) => Some(read_u32(d, 0).ok_or(OvmfError::FooterEntryTooShort {
                name: "SEV_ES_RESET_BLOCK",
                guid: SEV_ES_RESET_BLOCK_GUID,
                len: d.len(),
                needed: 4,
            })?),
            None => None,
        };
        let hash_table = match find(SEV_HASH_TABLE_RV_GUID) {
            Some(d) => match (read_u32(d, 0), read_u32(d, 4)) {
                (Some(base), Some(size)) => Some(HashTableArea { base, size }),
                _ => {
                    return Err(OvmfError::FooterEntryTooShort {
                        name: "SEV_HASH_TABLE_RV",
                        guid: SEV_HASH_TABLE_RV_GUID,
                        len: d.len(),
                        needed: 8,
                    })
                }
            },
            None => None,
        };
        let metadata = match find(OVMF_SEV_METADATA_GUID) {
            Some(d) => {
                let offset = read_u32(d, 0).ok_or(OvmfError::FooterEntryTooShort {
                    name: "OVMF_SEV_METADATA",
                    guid: OVMF_SEV_METADATA_GUID,
                    len: d.len(),
                    needed: 4,
                })?;
                Some(parse_metadata(data, offset)?)
            }
            None => None,
        };
        Ok(Ovmf {
            data,
            has_footer,
            reset_eip,
            hash_table,
            metadata,
        })
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Whether the image ends with an OVMF GUIDed footer table.
    pub fn has_footer_table(&self) -> bool {
        self.has_footer
    }

    /// The AP reset EIP from the SEV-ES reset block, if the table has one.
    pub fn sev_es_reset_eip(&self) -> Option<u32> {
        self.reset_eip
    }

    /// The SEV hashes table area, if the table has one (its base may be 0: unsupported).
    pub fn hash_table_area(&self) -> Option<HashTableArea> {
        self.hash_table
    }

    /// The SEV metadata sections in table order, if the table points to a metadata block.
    pub fn metadata(&self) -> Option<&[MetadataSection]> {
        self.metadata.as_deref()
    }

    /// Whether the metadata lists a section of this type.
    pub fn has_section(&self, kind: SectionType) -> bool {
        self.metadata()
            .is_some_and(|m| m.iter().any(|s| s.kind == kind))
    }
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_guid(data: &[u8], at: usize) -> Option<Guid> {
    let b = data.get(at..at.checked_add(16)?)?;
    let mut g = [0u8; 16];
    g.copy_from_slice(b);
    Some(Guid(g))
}

/// Entries as (GUID, data), walking back from the footer, or `None` without a footer GUID.
type FooterEntries<'a> = Vec<(Guid, &'a [u8])>;

fn parse_footer_table(data: &[u8]) -> Result<Option<FooterEntries<'_>>, OvmfError> {
    let needed = TABLE_END_FROM_IMAGE_END + ENTRY_HEADER_LEN;
    // `footer` is where the footer entry's header (u16 size, GUID) starts.
    let footer = data.len().checked_sub(needed).ok_or(OvmfError::TooSmall {
        len: data.len(),
        needed,
    })?;
    if read_guid(data, footer + 2) != Some(OVMF_TABLE_FOOTER_GUID) {
        return Ok(None);
    }
    let size = read_u16(data, footer).unwrap_or(0);
    // The footer's size covers the whole table including the footer entry itself.
    let table_len = usize::from(size)
        .checked_sub(ENTRY_HEADER_LEN)
        .filter(|len| *len <= footer)
        .ok_or(OvmfError::FooterTableSize {
            size,
            available: footer,
        })?;
    let table_start = footer - table_len;
    let mut end = footer; // exclusive end of the not yet consumed part of the table
    let mut entries: FooterEntries<'_> = Vec::new();
    // Trailing bytes shorter than an entry header are ignored, as QEMU and sev-snp-measure do.
    while end - table_start >= ENTRY_HEADER_LEN {
        let remaining = end - table_start;
        let header = end - ENTRY_HEADER_LEN;
        let (Some(entry_size), Some(guid)) = (read_u16(data, header), read_guid(data, header + 2))
        else {
            // Unreachable: `header..end` lies inside `data`. Kept as an error, not a panic.
            return Err(OvmfError::FooterTableSize {
                size,
                available: footer,
            });
        };
        let entry_len = usize::from(entry_size);
        if entry_len < ENTRY_HEADER_LEN || entry_len > remaining {
            return Err(OvmfError::FooterEntrySize {
                offset: header,
                size: entry_size,
                remaining,
            });
        }
        if entries.iter().any(|(g, _)| *g == guid) {
            return Err(OvmfError::DuplicateFooterEntry { guid });
        }
        let entry_data = data.get(end - entry_len..header).unwrap_or_default();
        entries.push((guid, entry_data));
        end -= entry_len;
    }
    Ok(Some(entries))
}

fn parse_metadata(data: &[u8], offset_from_end: u32) -> Result<Vec<MetadataSection>, OvmfError> {
    let bad_offset = OvmfError::MetadataOffset {
        offset_from_end,
        len: data.len(),
    };
    let start = usize::try_from(offset_from_end)
        .ok()
        .and_then(|off| data.len().checked_sub(off))
        .ok_or(bad_offset.clone())?;
    let header = data
        .get(start..)
        .filter(|h| h.len() >= METADATA_HEADER_LEN)
        .ok_or(bad_offset)?;
    let signature = [header[0], header[1], header[2], header[3]];
    if &signature != b"ASEV" {
        return Err(OvmfError::MetadataSignature { found: signature });
    }
    let size = read_u32(header, 4).unwrap_or(0);
    let version = read_u32(header, 8).unwrap_or(0);
    let num_items = read_u32(header, 12).unwrap_or(0);
    if version != 1 {
        return Err(OvmfError::MetadataVersion { found: version });
    }
    let size_err = |reason| OvmfError::MetadataSize {
        size,
        num_items,
        reason,
    };
    let block_len = usize::try_from(size).map_err(|_| size_err("size overflows"))?;
    let block = header
        .get(..block_len)
        .ok_or(size_err("the block runs past the end of the image"))?;
    let items_len = usize::try_from(num_items)
        .ok()
        .and_then(|n| n.checked_mul(METADATA_DESC_LEN))
        .and_then(|n| n.checked_add(METADATA_HEADER_LEN))
        .filter(|n| *n <= block.len())
        .ok_or(size_err("the sections do not fit in the block size"))?;
    let items = block
        .get(METADATA_HEADER_LEN..items_len)
        .unwrap_or_default();

    let mut sections = Vec::with_capacity(items.len() / METADATA_DESC_LEN);
    for (index, desc) in items.chunks_exact(METADATA_DESC_LEN).enumerate() {
        let gpa = read_u32(desc, 0).unwrap_or(0);
        let size = read_u32(desc, 4).unwrap_or(0);
        let value = read_u32(desc, 8).unwrap_or(0);
        let kind =
            SectionType::from_raw(value).ok_or(OvmfError::UnknownSectionType { index, value })?;
        sections.push(MetadataSection { gpa, size, kind });
    }
    Ok(sections)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn synthetic(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/testdata/snp-synthetic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn guids_print_in_canonical_form() {
        assert_eq!(
            OVMF_TABLE_FOOTER_GUID.to_string(),
            "96b582de-1fb2-45f7-baea-a366c55a082d"
        );
        assert_eq!(
            OVMF_SEV_METADATA_GUID.to_string(),
            "dc886566-984a-4798-a75e-5585a7bf67cc"
        );
        // bytes_le: the first field is stored little-endian.
        assert_eq!(
            &OVMF_TABLE_FOOTER_GUID.to_bytes_le()[..4],
            &[0xde, 0x82, 0xb5, 0x96]
        );
    }

    #[test]
    fn the_synthetic_firmware_has_the_debian_amdsev_layout() {
        let fw = synthetic("fw_kernel_hashes.bin");
        let ovmf = Ovmf::parse(&fw).unwrap();
        assert!(ovmf.has_footer_table());
        assert_eq!(ovmf.sev_es_reset_eip(), Some(0x80b004));
        assert_eq!(
            ovmf.hash_table_area(),
            Some(HashTableArea {
                base: 0x810c00,
                size: 0x400
            })
        );
        let kinds: Vec<_> = ovmf.metadata().unwrap().iter().map(|s| s.kind).collect();
        use SectionType::*;
        assert_eq!(
            kinds,
            [
                SnpSecMem,
                SnpSecMem,
                SnpSecrets,
                Cpuid,
                SvsmCaa,
                SnpSecMem,
                SnpKernelHashes
            ]
        );
        assert_eq!(
            ovmf.metadata().unwrap()[6],
            MetadataSection {
                gpa: 0x810000,
                size: 0x1000,
                kind: SnpKernelHashes
            }
        );
    }

    #[test]
    fn firmware_without_metadata_parses_with_no_metadata() {
        let fw = synthetic("fw_no_metadata.bin");
        let ovmf = Ovmf::parse(&fw).unwrap();
        assert!(ovmf.has_footer_table());
        assert!(ovmf.metadata().is_none());
        assert_eq!(ovmf.sev_es_reset_eip(), Some(0x808004));
    }

    #[test]
    fn firmware_without_kernel_hashes_has_a_zero_hash_table_base() {
        let fw = synthetic("fw_no_kernel_hashes.bin");
        let ovmf = Ovmf::parse(&fw).unwrap();
        assert!(!ovmf.has_section(SectionType::SnpKernelHashes));
        assert_eq!(ovmf.hash_table_area().map(|a| a.base), Some(0));
    }

    #[test]
    fn tiny_images_are_too_small_and_foreign_images_have_no_footer() {
        assert!(matches!(
            Ovmf::parse(&[0u8; 49]),
            Err(OvmfError::TooSmall { len: 49, .. })
        ));
        let ovmf = Ovmf::parse(&[0u8; 4096]).unwrap();
        assert!(!ovmf.has_footer_table());
        assert!(ovmf.metadata().is_none());
    }

    /// Offset of the footer entry's `u16 size` in an image of `len` bytes.
    fn footer_at(len: usize) -> usize {
        len - TABLE_END_FROM_IMAGE_END - ENTRY_HEADER_LEN
    }

    #[test]
    fn a_footer_size_past_the_image_start_is_an_error() {
        let mut fw = synthetic("fw_kernel_hashes.bin");
        let at = footer_at(fw.len());
        let mut small = fw[fw.len() - 100..].to_vec();
        let sat = footer_at(small.len());
        small[sat..sat + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            Ovmf::parse(&small),
            Err(OvmfError::FooterTableSize { size: 0xffff, .. })
        ));
        fw[at..at + 2].copy_from_slice(&5u16.to_le_bytes());
        assert!(matches!(
            Ovmf::parse(&fw),
            Err(OvmfError::FooterTableSize { size: 5, .. })
        ));
    }

    #[test]
    fn a_duplicated_entry_is_refused() {
        // Build a table: footer + two reset-block entries.
        let mut img = vec![0u8; 4096];
        let entry = |eip: u32| {
            let mut e = eip.to_le_bytes().to_vec();
            e.extend_from_slice(&22u16.to_le_bytes());
            e.extend_from_slice(&SEV_ES_RESET_BLOCK_GUID.to_bytes_le());
            e
        };
        let mut table = entry(1);
        table.extend(entry(2));
        table.extend_from_slice(&((table.len() + ENTRY_HEADER_LEN) as u16).to_le_bytes());
        table.extend_from_slice(&OVMF_TABLE_FOOTER_GUID.to_bytes_le());
        let end = img.len() - TABLE_END_FROM_IMAGE_END;
        img[end - table.len()..end].copy_from_slice(&table);
        assert!(matches!(
            Ovmf::parse(&img),
            Err(OvmfError::DuplicateFooterEntry { guid }) if guid == SEV_ES_RESET_BLOCK_GUID
        ));
    }

    #[test]
    fn metadata_header_damage_is_named() {
        let fw = synthetic("fw_kernel_hashes.bin");
        let asev = fw.windows(4).rposition(|w| w == b"ASEV").unwrap();

        let mut bad = fw.clone();
        bad[asev] = b'X';
        assert!(matches!(
            Ovmf::parse(&bad),
            Err(OvmfError::MetadataSignature { .. })
        ));

        let mut bad = fw.clone();
        bad[asev + 8..asev + 12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Ovmf::parse(&bad).unwrap_err(),
            OvmfError::MetadataVersion { found: 2 }
        );

        let mut bad = fw.clone();
        bad[asev + 12..asev + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Ovmf::parse(&bad),
            Err(OvmfError::MetadataSize { .. })
        ));

        let mut bad = fw.clone();
        bad[asev + 16 + 8..asev + 16 + 12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            Ovmf::parse(&bad).unwrap_err(),
            OvmfError::UnknownSectionType { index: 0, value: 7 }
        );
    }

    /// A small deterministic generator (xorshift64*), so the fuzz loop needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parsing_never_panics_on_truncated_or_mutated_images() {
        let full = synthetic("fw_kernel_hashes.bin");
        // Work on the last 8 KiB, where the footer table and the metadata live, so that
        // mutations hit the interesting bytes.
        let tail = &full[full.len() - 8192..];
        for len in 0..=tail.len() {
            let _ = Ovmf::parse(&tail[tail.len() - len..]);
            let _ = Ovmf::parse(&tail[..len]);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hot = tail.len() - 2048; // metadata block and footer table region
        for _ in 0..20_000 {
            let mut img = tail.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = hot + rng.below(tail.len() - hot);
                img[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
            }
            let _ = Ovmf::parse(&img);
        }
    }
}
