//! Errors, one enum per concern: reading the firmware image ([`OvmfError`]), computing a launch
//! digest from it ([`MeasureError`]) and turning user-facing names and numbers into inputs
//! ([`ConfigError`]). Each variant names the input or the check that failed.

use crate::snp::ovmf::{Guid, SectionType};

/// The firmware image is not a well-formed OVMF image: its GUIDed footer table or its SEV
/// metadata block is damaged. Parsing never panics; every out-of-range offset lands here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvmfError {
    /// The image is too small to hold the footer table's own entry.
    #[error("firmware image is {len} bytes: too small to hold an OVMF footer table (needs at least {needed})")]
    TooSmall {
        /// Length of the image.
        len: usize,
        /// Smallest length that can hold the footer entry.
        needed: usize,
    },
    /// The footer entry claims a table larger than the bytes before it, or smaller than itself.
    #[error("OVMF footer table size {size} is invalid (the footer entry alone is 18 bytes, {available} bytes precede the footer)")]
    FooterTableSize {
        /// The size the footer entry claims.
        size: u16,
        /// Bytes available in front of the footer entry.
        available: usize,
    },
    /// A table entry's size field is smaller than an entry header or runs past the table start.
    #[error("OVMF footer table entry at image offset {offset:#x} has invalid size {size} (bytes left in the table: {remaining})")]
    FooterEntrySize {
        /// Image offset of the entry's end (where its size and GUID sit).
        offset: usize,
        /// The size the entry claims.
        size: u16,
        /// Table bytes not yet consumed.
        remaining: usize,
    },
    /// The same GUID appears twice. QEMU takes the entry nearest the footer, sev-snp-measure the
    /// farthest one, so the measurement would be ambiguous.
    #[error("OVMF footer table lists GUID {guid} twice (QEMU and sev-snp-measure would pick different entries)")]
    DuplicateFooterEntry {
        /// The repeated GUID.
        guid: Guid,
    },
    /// A known entry carries fewer data bytes than its layout needs.
    #[error("OVMF footer table entry {name} ({guid}) has {len} data bytes, needs {needed}")]
    FooterEntryTooShort {
        /// What the entry is.
        name: &'static str,
        /// Its GUID.
        guid: Guid,
        /// Data bytes present.
        len: usize,
        /// Data bytes needed.
        needed: usize,
    },
    /// The SEV metadata offset points outside the image.
    #[error(
        "SEV metadata offset {offset_from_end:#x} (from the end) lies outside the {len}-byte image"
    )]
    MetadataOffset {
        /// Offset of the "ASEV" header, counted back from the end of the image.
        offset_from_end: u32,
        /// Length of the image.
        len: usize,
    },
    /// The SEV metadata header does not start with "ASEV".
    #[error("SEV metadata signature is {found:02x?}, expected \"ASEV\"")]
    MetadataSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The SEV metadata version is not 1.
    #[error("SEV metadata version is {found}, only version 1 is defined")]
    MetadataVersion {
        /// The version found.
        found: u32,
    },
    /// The SEV metadata's size does not hold its section descriptors, or runs past the image end.
    #[error("SEV metadata block (size {size}, {num_items} sections) does not fit: {reason}")]
    MetadataSize {
        /// The header's size field.
        size: u32,
        /// The header's section count.
        num_items: u32,
        /// Which bound was crossed.
        reason: &'static str,
    },
    /// A section descriptor has a type this calculator does not know. QEMU would measure it as a
    /// ZERO page and sev-snp-measure refuses it; we refuse rather than guess.
    #[error("SEV metadata section {index} has unknown type {value:#x}")]
    UnknownSectionType {
        /// Position of the descriptor in the table.
        index: usize,
        /// The raw type value.
        value: u32,
    },
}

/// A launch digest cannot be computed from these inputs (besides a malformed firmware image).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The firmware image is malformed.
    #[error(transparent)]
    Ovmf(#[from] OvmfError),
    /// The image has no OVMF GUIDed footer table, so it is not an OVMF build (or it is truncated).
    #[error("firmware has no OVMF footer table (GUID 96b582de-1fb2-45f7-baea-a366c55a082d at end-48): not an OVMF image, or truncated")]
    NoFooterTable,
    /// The image has no SEV metadata. QEMU refuses to launch such firmware for SEV-SNP
    /// ("Failed to locate SEV metadata header"), so no launch digest exists for it.
    #[error("firmware has no SEV metadata (OVMF_SEV_METADATA_GUID): QEMU cannot launch it as an SEV-SNP guest; use an AmdSev OVMF build")]
    NoSevMetadata,
    /// The image lacks the SEV-ES reset block that gives the APs' start address.
    #[error("firmware has no SEV-ES reset block (SEV_ES_RESET_BLOCK_GUID entry) to take the AP reset address from")]
    NoResetBlock,
    /// The reset block gives address 0, which cannot start an AP.
    #[error(
        "firmware's SEV-ES reset block gives AP reset address 0, so {vcpus} vCPUs cannot start"
    )]
    ZeroApResetAddress {
        /// Requested vCPU count.
        vcpus: u32,
    },
    /// A kernel was given but the firmware has no SNP_KERNEL_HASHES section to hold its hashes.
    #[error("Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section")]
    NoKernelHashesSection,
    /// A kernel was given but the firmware has no SEV hash table entry (or its base is 0).
    #[error("kernel specified but the firmware has no SEV hash table area (SEV_HASH_TABLE_RV_GUID entry missing or base 0)")]
    NoHashTableArea,
    /// The hash table area is too small for the table, or the table would cross a page boundary.
    #[error("firmware's SEV hash table area (base {base:#x}, size {size:#x}) cannot hold the {table_len}-byte table within one page")]
    HashTableArea {
        /// GPA of the area.
        base: u32,
        /// Size of the area.
        size: u32,
        /// Length of the padded table.
        table_len: usize,
    },
    /// The SNP_KERNEL_HASHES section is not exactly one page.
    #[error("SNP_KERNEL_HASHES section at {gpa:#x} is {size:#x} bytes, expected one 4 KiB page")]
    KernelHashesSectionSize {
        /// GPA of the section.
        gpa: u32,
        /// Its size.
        size: u32,
    },
    /// A metadata section is not page aligned, or (for SECRETS and CPUID) not exactly one page.
    #[error("SEV metadata section {index} ({kind:?}) at {gpa:#x} with size {size:#x} is not page aligned or has a wrong size")]
    SectionLayout {
        /// Position of the descriptor in the table.
        index: usize,
        /// Its type.
        kind: SectionType,
        /// Its GPA.
        gpa: u32,
        /// Its size.
        size: u32,
    },
    /// The firmware length is not a whole number of 4 KiB pages.
    #[error("firmware is {len} bytes, not a multiple of 4096: it cannot be mapped page by page")]
    FirmwareNotPageMultiple {
        /// Length of the image.
        len: usize,
    },
    /// The firmware is larger than the 4 GiB it is mapped below.
    #[error("firmware is {len} bytes, larger than the 4 GiB it must end at")]
    FirmwareTooLarge {
        /// Length of the image.
        len: usize,
    },
    /// A memory region handed to the guest context is not whole pages.
    #[error("region at GPA {gpa:#x} is {len} bytes, not a multiple of 4096")]
    RegionNotPageMultiple {
        /// GPA of the region.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// The vCPU count is 0 or above QEMU's q35 limit.
    #[error("vCPU count {vcpus} is out of range 1..={max}")]
    VcpuCount {
        /// The requested count.
        vcpus: u32,
        /// The largest count accepted.
        max: u32,
    },
}

/// A user-facing name or number does not denote a valid measurement input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The vCPU type is not in sev-snp-measure's table.
    #[error("unknown vCPU type '{name}' (known: {known})")]
    UnknownVcpuType {
        /// The name given.
        name: String,
        /// The accepted names, comma separated.
        known: String,
    },
    /// The CPU family cannot be encoded in a CPUID signature (0..=0x10E).
    #[error("vCPU family {family} cannot be encoded in a CPUID signature (0..=270)")]
    VcpuFamily {
        /// The family given.
        family: u32,
    },
    /// The CPU model cannot be encoded in a CPUID signature (0..=0xFF).
    #[error("vCPU model {model} cannot be encoded in a CPUID signature (0..=255)")]
    VcpuModel {
        /// The model given.
        model: u32,
    },
    /// The CPU stepping cannot be encoded in a CPUID signature (0..=0xF).
    #[error("vCPU stepping {stepping} cannot be encoded in a CPUID signature (0..=15)")]
    VcpuStepping {
        /// The stepping given.
        stepping: u32,
    },
    /// The VMM type is not QEMU, ec2 or gce.
    #[error("unknown VMM type '{name}' (known: QEMU, ec2, gce)")]
    UnknownVmmType {
        /// The name given.
        name: String,
    },
    /// QEMU puts the vCPU's CPUID signature in RDX, so it needs one.
    #[error("VMM type QEMU needs a vCPU type or signature (it is loaded into the VMSA's RDX)")]
    MissingVcpuSignature,
    /// A launch digest is not 96 hex digits.
    #[error("launch digest '{text}' is not 48 bytes of hex: {reason}")]
    DigestHex {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}
