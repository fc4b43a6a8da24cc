//! The AMD SEV-SNP launch digest for QEMU measured direct boot.
//!
//! The PSP extends a SHA-384 chain (the guest context, [`gctx`]) once per page the VMM adds
//! with SNP_LAUNCH_UPDATE. For QEMU with OVMF (`-bios`, `sev-snp-guest,kernel-hashes=on`) the
//! pages come in this order, which is what QEMU `target/i386/sev.c` queues and KVM submits:
//!
//! 1. every 4 KiB page of the firmware image as a NORMAL page, the image ending at 4 GiB;
//! 2. each SEV metadata section in table order ([`ovmf`]): SNP_SEC_MEM as ZERO pages
//!    (UNMEASURED on GCE), SNP_SECRETS as a SECRETS page, CPUID as a CPUID page (on EC2 after
//!    all other sections), SVSM_CAA as ZERO pages, and SNP_KERNEL_HASHES as the NORMAL page
//!    holding the SEV hashes table ([`hashes`]) when a kernel is given, ZERO pages otherwise;
//! 3. one VMSA page per vCPU ([`vmsa`]): the bootstrap processor's, then the APs'.
//!
//! ```no_run
//! use coffer_measurements::snp::{CpuSignature, SnpLaunch, Vmm};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (firmware, kernel, initrd) = (vec![0u8; 0], vec![0u8; 0], vec![0u8; 0]);
//! let vcpu = CpuSignature::from_vcpu_type("EPYC-Milan")?;
//! let digest = SnpLaunch::new(&firmware, 4, Vmm::Qemu(vcpu))
//!     .direct_boot(&kernel, Some(&initrd), Some("console=ttyS0"))
//!     .measure()?;
//! println!("{digest}"); // 96 hex digits, as `sev-snp-measure` prints
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod gctx;
pub mod hashes;
pub mod ovmf;
pub mod vcpu;
pub mod vmm;
pub mod vmsa;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, MeasureError, OvmfError};
pub use gctx::{GuestContext, LaunchDigest, PageType, PageUpdate};
pub use hashes::SevHashes;
pub use ovmf::{MetadataSection, Ovmf, SectionType};
pub use vcpu::{CpuSignature, VCPU_TYPES};
pub use vmm::Vmm;
pub use vmsa::GuestFeatures;

/// The page size every SNP_LAUNCH_UPDATE works in.
pub const PAGE_SIZE: usize = 4096;

/// The most vCPUs accepted: QEMU's q35 machine limit (`max_cpus = 4096`), and SEV-SNP guests
/// run only on q35.
pub const MAX_VCPUS: u32 = 4096;

/// The firmware image is mapped so that it ends at 4 GiB (the x86 reset vector sits just below).
const FIRMWARE_END: u64 = 1 << 32;

/// One SEV-SNP launch to measure: firmware, vCPUs, VMM and optional direct-boot blobs.
///
/// A builder: [`SnpLaunch::new`] takes what every launch needs, the other methods add the
/// optional parts, and [`SnpLaunch::measure`] computes the digest.
#[derive(Debug, Clone)]
pub struct SnpLaunch<'a> {
    firmware: &'a [u8],
    vcpus: u32,
    vmm: Vmm,
    features: GuestFeatures,
    hashes: Option<SevHashes>,
    firmware_digest: Option<LaunchDigest>,
}

impl<'a> SnpLaunch<'a> {
    /// A launch of `firmware` (an OVMF image with SEV metadata) with `vcpus` vCPUs, guest
    /// features 0x1 and no kernel.
    pub fn new(firmware: &'a [u8], vcpus: u32, vmm: Vmm) -> Self {
        SnpLaunch {
            firmware,
            vcpus,
            vmm,
            features: GuestFeatures::default(),
            hashes: None,
            firmware_digest: None,
        }
    }

    /// Sets the VMSA SEV_FEATURES value (default 0x1).
    pub fn guest_features(mut self, features: GuestFeatures) -> Self {
        self.features = features;
        self
    }

    /// Boots `kernel` directly (`-kernel`, `-initrd`, `-append`), binding it into the digest
    /// through the SEV hashes table.
    pub fn direct_boot(
        mut self,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: Option<&str>,
    ) -> Self {
        self.hashes = Some(SevHashes::new(kernel, initrd, cmdline));
        self
    }

    /// Boots a kernel directly, given the hashes QEMU will put in the SEV hashes table.
    pub fn direct_boot_hashes(mut self, hashes: SevHashes) -> Self {
        self.hashes = Some(hashes);
        self
    }

    /// Starts from the digest of the firmware pages computed earlier by [`firmware_digest`]
    /// (`sev-snp-measure --snp-ovmf-hash`) instead of hashing the firmware again. The image is
    /// still read for its metadata and reset address.
    pub fn precomputed_firmware_digest(mut self, digest: LaunchDigest) -> Self {
        self.firmware_digest = Some(digest);
        self
    }

    /// Computes the launch digest.
    pub fn measure(&self) -> Result<LaunchDigest, MeasureError> {
        let ctx = self.start()?;
        Ok(self.run(ctx)?.finish())
    }

    /// Computes the launch digest and returns every PAGE_INFO update that led to it, to find
    /// where two computations part.
    pub fn measure_traced(&self) -> Result<(LaunchDigest, Vec<PageUpdate>), MeasureError> {
        let ctx = self.start()?.traced();
        Ok(self.run(ctx)?.finish_traced())
    }

    fn start(&self) -> Result<GuestContext, MeasureError> {
        Ok(match self.firmware_digest {
            Some(digest) => GuestContext::resume(digest),
            None => GuestContext::new(),
        })
    }

    fn run(&self, mut ctx: GuestContext) -> Result<GuestContext, MeasureError> {
        let ovmf = Ovmf::parse(self.firmware)?;
        if !ovmf.has_footer_table() {
            return Err(MeasureError::NoFooterTable);
        }
        let sections = ovmf.metadata().ok_or(MeasureError::NoSevMetadata)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(MeasureError::VcpuCount {
                vcpus: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        let ap_eip = ovmf.sev_es_reset_eip().ok_or(MeasureError::NoResetBlock)?;
        if ap_eip == 0 && self.vcpus > 1 {
            return Err(MeasureError::ZeroApResetAddress { vcpus: self.vcpus });
        }
        let hashes_page = self.hashes_page(&ovmf)?;
        check_sections(sections, hashes_page.is_some())?;

        // (1) The firmware, unless a digest of it was given.
        if self.firmware_digest.is_none() {
            ctx.update_normal_pages(firmware_gpa(self.firmware)?, self.firmware)?;
        }

        // (2) The metadata sections, in table order (QEMU `snp_populate_metadata_pages`).
        for s in sections {
            let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
            match s.kind {
                SectionType::SnpSecMem if self.vmm == Vmm::Gce => {
                    ctx.update_unmeasured_pages(gpa, size)?
                }
                SectionType::SnpSecMem | SectionType::SvsmCaa => {
                    ctx.update_zero_pages(gpa, size)?
                }
                SectionType::SnpSecrets => ctx.update_secrets_page(gpa),
                SectionType::Cpuid if self.vmm == Vmm::Ec2 => {} // added last, below
                SectionType::Cpuid => ctx.update_cpuid_page(gpa),
                SectionType::SnpKernelHashes => match &hashes_page {
                    Some(page) => ctx.update_normal_pages(gpa, &page[..])?,
                    None => ctx.update_zero_pages(gpa, size)?,
                },
            }
        }
        // EC2 adds the CPUID page after every other section (sev-snp-measure `guest.py`).
        if self.vmm == Vmm::Ec2 {
            for s in sections.iter().filter(|s| s.kind == SectionType::Cpuid) {
                ctx.update_cpuid_page(u64::from(s.gpa));
            }
        }

        // (3) The VMSAs: the BSP starts at the reset vector, the APs at OVMF's AP reset address.
        let bsp = vmsa::vmsa_page(vmsa::BSP_EIP, self.features, &self.vmm);
        ctx.update_vmsa_page(&bsp);
        if self.vcpus > 1 {
            let ap = vmsa::vmsa_page(ap_eip, self.features, &self.vmm);
            for _ in 1..self.vcpus {
                ctx.update_vmsa_page(&ap);
            }
        }
        Ok(ctx)
    }

    /// The page QEMU measures for the SNP_KERNEL_HASHES section when a kernel is given, with
    /// QEMU's checks on the hash table area (`sev_add_kernel_loader_hashes`).
    fn hashes_page(&self, ovmf: &Ovmf<'_>) -> Result<Option<Box<[u8; PAGE_SIZE]>>, MeasureError> {
        let Some(hashes) = &self.hashes else {
            return Ok(None);
        };
        if !ovmf.has_section(SectionType::SnpKernelHashes) {
            return Err(MeasureError::NoKernelHashesSection);
        }
        let area = ovmf
            .hash_table_area()
            .filter(|a| a.base != 0)
            .ok_or(MeasureError::NoHashTableArea)?;
        let bad_area = MeasureError::HashTableArea {
            base: area.base,
            size: area.size,
            table_len: hashes::PADDED_TABLE_LEN,
        };
        if (area.size as usize) < hashes::PADDED_TABLE_LEN {
            return Err(bad_area);
        }
        // The table sits at the base's offset in its page (QEMU `kernel_hashes_offset`).
        let offset = (area.base as usize) & (PAGE_SIZE - 1);
        let page = hashes.page(offset).ok_or(bad_area)?;
        Ok(Some(Box::new(page)))
    }
}

/// Where the firmware starts: it ends at 4 GiB and must be whole pages.
fn firmware_gpa(firmware: &[u8]) -> Result<u64, MeasureError> {
    let len = firmware.len();
    if len % PAGE_SIZE != 0 {
        return Err(MeasureError::FirmwareNotPageMultiple { len });
    }
    FIRMWARE_END
        .checked_sub(len as u64)
        .ok_or(MeasureError::FirmwareTooLarge { len })
}

/// Checks every section's layout before anything is hashed. SECRETS and CPUID must be exactly
/// one page: QEMU adds `size` bytes, sev-snp-measure one page, so other sizes are ambiguous.
fn check_sections(sections: &[MetadataSection], with_kernel: bool) -> Result<(), MeasureError> {
    let page = PAGE_SIZE as u32;
    for (index, s) in sections.iter().enumerate() {
        let aligned = s.gpa % page == 0 && s.size % page == 0;
        let ok = match s.kind {
            SectionType::SnpSecrets | SectionType::Cpuid => aligned && s.size == page,
            SectionType::SnpKernelHashes if with_kernel => {
                if s.size != page {
                    return Err(MeasureError::KernelHashesSectionSize {
                        gpa: s.gpa,
                        size: s.size,
                    });
                }
                aligned
            }
            _ => aligned,
        };
        if !ok {
            return Err(MeasureError::SectionLayout {
                index,
                kind: s.kind,
                gpa: s.gpa,
                size: s.size,
            });
        }
    }
    Ok(())
}

/// The digest after the firmware pages alone (`sev-snp-measure --mode snp:ovmf-hash`), to pass
/// to [`SnpLaunch::precomputed_firmware_digest`] later.
pub fn firmware_digest(firmware: &[u8]) -> Result<LaunchDigest, MeasureError> {
    let mut ctx = GuestContext::new();
    ctx.update_normal_pages(firmware_gpa(firmware)?, firmware)?;
    Ok(ctx.finish())
}
