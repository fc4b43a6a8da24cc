//! PE/COFF images: the Authenticode SHA-256 hash the UEFI firmware measures into PCR 4, and the
//! sections systemd-stub measures into PCR 11.
//!
//! The hash follows what the firmware measures, which is what PCRs hold: edk2
//! `SecurityPkg/Library/DxeTpm2MeasureBootLib` / `Tcg2Dxe` `MeasurePeImageAndExtend` (the
//! Microsoft "Windows Authenticode Portable Executable Signature Format" algorithm):
//!
//! 1. the headers up to SizeOfHeaders, skipping the optional header's CheckSum and, when the
//!    image has one, the Certificate Table data directory entry (entry 4);
//! 2. each section's raw data (PointerToRawData, SizeOfRawData), in PointerToRawData order,
//!    skipping empty ones;
//! 3. any bytes after that, up to the file size minus the certificate table size.
//!
//! Checked against `osslsigncode` 2.9 on the test PEs in `testdata/pe/` and against the Debian
//! signature embedded in a real signed kernel (tests). Every offset is bounds-checked; no input
//! panics.

use sha2::{Digest, Sha256};

use crate::reader::{le_u16_at, le_u32_at};

/// The PE specification's limit on the number of sections.
pub const MAX_SECTIONS: usize = 96;
/// The most zero bytes [`PeSection::loaded`] adds beyond a section's raw data (UKI sections
/// have none: objcopy and ukify set VirtualSize to the input size, below the padded raw size).
pub const MAX_ZERO_FILL: usize = 1 << 20;

/// Why bytes are not a PE image this module can hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// A header field lies outside the file.
    #[error("PE image too short for {field}")]
    Truncated {
        /// The header field.
        field: &'static str,
    },
    /// No "MZ" at offset 0.
    #[error("no MZ DOS header")]
    NotMz,
    /// No "PE\0\0" at e_lfanew.
    #[error("no PE signature at e_lfanew")]
    NotPe,
    /// Optional header magic is neither PE32 (0x10b) nor PE32+ (0x20b).
    #[error("optional header magic {magic:#06x} is neither PE32 nor PE32+")]
    OptionalHeaderMagic {
        /// The magic found.
        magic: u16,
    },
    /// More sections than the PE specification allows.
    #[error("{count} sections, more than {MAX_SECTIONS}")]
    TooManySections {
        /// The count found.
        count: u16,
    },
    /// The data directories or section table do not fit where the headers say they are.
    #[error("inconsistent PE headers: {reason}")]
    Headers {
        /// What does not fit.
        reason: &'static str,
    },
    /// A section's raw data lies outside the file.
    #[error("section {index} raw data (offset {offset}, size {size}) lies outside the file")]
    SectionOutOfBounds {
        /// Section index in the table.
        index: usize,
        /// PointerToRawData.
        offset: u32,
        /// SizeOfRawData.
        size: u32,
    },
    /// A section's virtual extent lies outside SizeOfImage.
    #[error(
        "section {index} (virtual address {address:#x}, size {size:#x}) lies outside SizeOfImage"
    )]
    SectionBeyondImage {
        /// Section index in the table.
        index: usize,
        /// VirtualAddress.
        address: u32,
        /// VirtualSize.
        size: u32,
    },
    /// A section's VirtualSize exceeds its raw data by more than [`MAX_ZERO_FILL`].
    #[error("section VirtualSize {virtual_size} exceeds its {raw_size} raw bytes by more than {MAX_ZERO_FILL}")]
    ZeroFill {
        /// VirtualSize.
        virtual_size: u32,
        /// Raw data size.
        raw_size: usize,
    },
    /// The certificate table is larger than what follows the hashed bytes.
    #[error("certificate table size {size} exceeds the bytes after the sections")]
    CertificateTable {
        /// The Certificate Table directory size.
        size: u32,
    },
}

/// One section header and its raw data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection<'a> {
    /// The 8-byte name, NUL-padded.
    pub name: [u8; 8],
    /// VirtualAddress (RVA).
    pub virtual_address: u32,
    /// VirtualSize: the size in memory, which systemd-stub measures.
    pub virtual_size: u32,
    /// PointerToRawData.
    pub raw_offset: u32,
    /// The raw data in the file (SizeOfRawData bytes, padded to FileAlignment).
    pub raw: &'a [u8],
}

impl PeSection<'_> {
    /// The name without its NUL padding.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(8);
        self.name.get(..end).unwrap_or(&self.name)
    }

    /// The section as loaded: VirtualSize bytes, the raw data then zeros (a loader zero-fills
    /// beyond SizeOfRawData). At most [`MAX_ZERO_FILL`] bytes of zeros are added, so a tiny file
    /// cannot ask for gigabytes.
    pub fn loaded(&self) -> Result<Vec<u8>, PeError> {
        let size = usize::try_from(self.virtual_size).unwrap_or(usize::MAX);
        if size.saturating_sub(self.raw.len()) > MAX_ZERO_FILL {
            return Err(PeError::ZeroFill {
                virtual_size: self.virtual_size,
                raw_size: self.raw.len(),
            });
        }
        let mut out = self.raw.get(..size).unwrap_or(self.raw).to_vec();
        out.resize(size, 0);
        Ok(out)
    }
}

struct Headers<'a> {
    checksum_offset: usize,
    /// Offset of the Certificate Table directory entry, if NumberOfRvaAndSizes > 4.
    cert_entry_offset: Option<usize>,
    cert_size: u32,
    size_of_headers: usize,
    sections: Vec<PeSection<'a>>,
}

fn field<T>(value: Option<T>, name: &'static str) -> Result<T, PeError> {
    value.ok_or(PeError::Truncated { field: name })
}

fn parse_headers(pe: &[u8]) -> Result<Headers<'_>, PeError> {
    if pe.get(..2) != Some(b"MZ".as_slice()) {
        return Err(PeError::NotMz);
    }
    let lfanew = field(le_u32_at(pe, 0x3c), "e_lfanew")? as usize;
    let sig_end = lfanew.checked_add(4).ok_or(PeError::NotPe)?;
    if pe.get(lfanew..sig_end) != Some(b"PE\0\0".as_slice()) {
        return Err(PeError::NotPe);
    }
    let coff = sig_end;
    let section_count = field(le_u16_at(pe, coff + 2), "NumberOfSections")?;
    let optional_size = usize::from(field(le_u16_at(pe, coff + 16), "SizeOfOptionalHeader")?);
    if usize::from(section_count) > MAX_SECTIONS {
        return Err(PeError::TooManySections {
            count: section_count,
        });
    }
    let opt = coff + 20;
    let opt_end = opt + optional_size;
    let magic = field(le_u16_at(pe, opt), "optional header Magic")?;
    let directories = match magic {
        0x10b => opt + 96,
        0x20b => opt + 112,
        magic => return Err(PeError::OptionalHeaderMagic { magic }),
    };
    let size_of_image = field(le_u32_at(pe, opt + 56), "SizeOfImage")?;
    let size_of_headers = field(le_u32_at(pe, opt + 60), "SizeOfHeaders")? as usize;
    let checksum_offset = opt + 64;
    let rva_count = field(le_u32_at(pe, directories - 4), "NumberOfRvaAndSizes")?;
    let (cert_entry_offset, cert_size) = if rva_count > 4 {
        let entry = directories + 4 * 8;
        if entry + 8 > opt_end {
            return Err(PeError::Headers {
                reason: "Certificate Table entry outside the optional header",
            });
        }
        let size = field(le_u32_at(pe, entry + 4), "Certificate Table size")?;
        (Some(entry), size)
    } else {
        (None, 0)
    };
    let hashed_header_end = cert_entry_offset.map_or(checksum_offset + 4, |e| e + 8);
    if size_of_headers < hashed_header_end || size_of_headers > pe.len() {
        return Err(PeError::Headers {
            reason: "SizeOfHeaders does not cover the optional header or exceeds the file",
        });
    }

    let mut sections = Vec::with_capacity(usize::from(section_count));
    for index in 0..usize::from(section_count) {
        let header = opt_end + index * 40;
        let name: [u8; 8] = pe
            .get(header..header + 8)
            .and_then(|n| n.try_into().ok())
            .ok_or(PeError::Truncated {
                field: "section header",
            })?;
        let virtual_size = field(le_u32_at(pe, header + 8), "section VirtualSize")?;
        let virtual_address = field(le_u32_at(pe, header + 12), "section VirtualAddress")?;
        let raw_size = field(le_u32_at(pe, header + 16), "section SizeOfRawData")?;
        let raw_offset = field(le_u32_at(pe, header + 20), "section PointerToRawData")?;
        let out_of_bounds = PeError::SectionOutOfBounds {
            index,
            offset: raw_offset,
            size: raw_size,
        };
        let raw = if raw_size == 0 {
            &[][..]
        } else {
            let start = raw_offset as usize;
            let end = start
                .checked_add(raw_size as usize)
                .ok_or(out_of_bounds.clone())?;
            pe.get(start..end).ok_or(out_of_bounds)?
        };
        if u64::from(virtual_address) + u64::from(virtual_size) > u64::from(size_of_image) {
            return Err(PeError::SectionBeyondImage {
                index,
                address: virtual_address,
                size: virtual_size,
            });
        }
        sections.push(PeSection {
            name,
            virtual_address,
            virtual_size,
            raw_offset,
            raw,
        });
    }
    Ok(Headers {
        checksum_offset,
        cert_entry_offset,
        cert_size,
        size_of_headers,
        sections,
    })
}

/// The section table of a PE image, in table order.
pub fn sections(pe: &[u8]) -> Result<Vec<PeSection<'_>>, PeError> {
    Ok(parse_headers(pe)?.sections)
}

/// The Authenticode SHA-256 of a PE image, as the UEFI firmware measures it into PCR 4 for an
/// EV_EFI_BOOT_SERVICES_APPLICATION event.
pub fn authenticode_sha256(pe: &[u8]) -> Result<[u8; 32], PeError> {
    let h = parse_headers(pe)?;
    let headers = |range: std::ops::Range<usize>| {
        pe.get(range).ok_or(PeError::Headers {
            reason: "header ranges out of order",
        })
    };
    let mut hasher = Sha256::new();
    hasher.update(headers(0..h.checksum_offset)?);
    match h.cert_entry_offset {
        Some(entry) => {
            hasher.update(headers(h.checksum_offset + 4..entry)?);
            hasher.update(headers(entry + 8..h.size_of_headers)?);
        }
        None => hasher.update(headers(h.checksum_offset + 4..h.size_of_headers)?),
    }
    let mut hashed = h.size_of_headers as u64;
    let mut sections: Vec<&PeSection<'_>> =
        h.sections.iter().filter(|s| !s.raw.is_empty()).collect();
    sections.sort_by_key(|s| s.raw_offset);
    for section in sections {
        hasher.update(section.raw);
        hashed += section.raw.len() as u64;
    }
    let file_size = pe.len() as u64;
    let cert_size = u64::from(h.cert_size);
    if file_size > hashed {
        if file_size < hashed + cert_size {
            return Err(PeError::CertificateTable { size: h.cert_size });
        }
        let start = usize::try_from(hashed).unwrap_or(usize::MAX);
        let end = usize::try_from(file_size - cert_size).unwrap_or(usize::MAX);
        hasher.update(pe.get(start..end).unwrap_or_default());
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_pe_inputs_are_named() {
        assert_eq!(authenticode_sha256(b""), Err(PeError::NotMz));
        assert_eq!(
            authenticode_sha256(b"MZ"),
            Err(PeError::Truncated { field: "e_lfanew" })
        );
        let mut dos = vec![0u8; 0x40];
        dos[..2].copy_from_slice(b"MZ");
        dos[0x3c..0x40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(authenticode_sha256(&dos), Err(PeError::NotPe));
    }
}
