//! The initial VMSA (vCPU save area) pages, one per vCPU, that the VMM hands the PSP at
//! SNP_LAUNCH_FINISH and that the launch digest covers.
//!
//! Layout: AMD64 APM Vol. 2, Appendix B, Table B-4 "VMSA Layout, State Save Area for SEV-ES",
//! as Linux `struct sev_es_save_area` (`arch/x86/include/asm/svm.h`) names it. Values: the
//! reset state KVM/QEMU give a vCPU (`kvm_set_cr*`, `x86_cpu_reset_hold`), as sev-snp-measure
//! `vmsa.py` writes them; EC2 and GCE values come from that file too. Fields not listed stay 0.

use crate::snp::vmm::Vmm;
use crate::snp::PAGE_SIZE;

/// The VMSA's SEV_FEATURES field (offset 0x3B0 in APM Vol. 2 Table B-4): which SEV-SNP features
/// the guest runs with (`sev-snp-measure --guest-features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestFeatures(u64);

impl GuestFeatures {
    /// Bit 0, SNPActive: the guest runs under SEV-SNP. Always set for SNP.
    pub const SNP_ACTIVE: u64 = 1 << 0;
    /// Bit 5, DebugSwap: 0x21 (SNPActive | DebugSwap) is what older AMD host kernels set with
    /// `kvm_amd.debug_swap=1`; upstream QEMU >= 9.1 with KVM_SEV_INIT2 gives 0x1.
    pub const DEBUG_SWAP: u64 = 1 << 5;

    /// Wraps the raw 64-bit field.
    pub const fn from_bits(bits: u64) -> Self {
        GuestFeatures(bits)
    }

    /// The raw 64-bit field.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl Default for GuestFeatures {
    /// 0x1 (SNPActive only), sev-snp-measure's default and upstream QEMU/KVM's value.
    fn default() -> Self {
        GuestFeatures(Self::SNP_ACTIVE)
    }
}

/// EIP of the bootstrap processor at reset: the x86 reset vector 0xFFFFFFF0.
pub const BSP_EIP: u32 = 0xFFFF_FFF0;

// Offsets in the save area (APM Vol. 2 Table B-4 / Linux `struct sev_es_save_area`).
const ES: usize = 0x000;
const CS: usize = 0x010;
const SS: usize = 0x020;
const DS: usize = 0x030;
const FS: usize = 0x040;
const GS: usize = 0x050;
const GDTR: usize = 0x060;
const LDTR: usize = 0x070;
const IDTR: usize = 0x080;
const TR: usize = 0x090;
const EFER: usize = 0x0D0;
const CR4: usize = 0x148;
const CR0: usize = 0x158;
const DR7: usize = 0x160;
const DR6: usize = 0x168;
const RFLAGS: usize = 0x170;
const RIP: usize = 0x178;
const G_PAT: usize = 0x268;
const RDX: usize = 0x310;
const SEV_FEATURES: usize = 0x3B0;
const XCR0: usize = 0x3E8;
const MXCSR: usize = 0x408;
const X87_FCW: usize = 0x410;

/// The registers that differ between VMMs.
struct VmmRegs {
    cs_attrib: u16,
    ss_attrib: u16,
    tr_attrib: u16,
    g_pat: u64,
    rdx: u64,
    mxcsr: u32,
    fcw: u16,
}

impl VmmRegs {
    fn for_vmm(vmm: &Vmm, eip: u32) -> Self {
        // PAT MSR reset value (APM Vol. 2 §A.3).
        const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
        match vmm {
            Vmm::Qemu(sig) => VmmRegs {
                cs_attrib: 0x9b,
                ss_attrib: 0x93,
                tr_attrib: 0x8b,
                g_pat: DEFAULT_PAT,
                // QEMU loads the CPUID(1).EAX signature into RDX at reset (x86 convention).
                rdx: u64::from(sig.raw()),
                // With KVM_SEV_INIT2 QEMU/KVM set the FPU reset values (sev-snp-measure ae95e59).
                mxcsr: 0x1f80,
                fcw: 0x37f,
            },
            Vmm::Ec2 => VmmRegs {
                // EC2 starts the BSP with a non-accessed code segment.
                cs_attrib: if eip == BSP_EIP { 0x9a } else { 0x9b },
                ss_attrib: 0x92,
                tr_attrib: 0x83,
                g_pat: DEFAULT_PAT,
                // 0x600 since sev-snp-measure commit 4a02bf0 (Amazon, 2026-04-28); the `sev`
                // crate 8.0.0 still uses 0 and so computes other EC2 digests.
                rdx: 0x600,
                mxcsr: 0,
                fcw: 0,
            },
            Vmm::Gce => VmmRegs {
                cs_attrib: 0x9b,
                ss_attrib: 0x93,
                tr_attrib: 0x8b,
                // The GCE hypervisor overwrites the default PAT.
                g_pat: 0x0007_0106,
                rdx: 0x600,
                mxcsr: 0,
                fcw: 0,
            },
        }
    }
}

struct Page(Box<[u8; PAGE_SIZE]>);

impl Page {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
    /// A `struct vmcb_seg`: u16 selector, u16 attrib, u32 limit, u64 base.
    fn seg(&mut self, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.put(at, &selector.to_le_bytes());
        self.put(at + 2, &attrib.to_le_bytes());
        self.put(at + 4, &limit.to_le_bytes());
        self.put(at + 8, &base.to_le_bytes());
    }
}

/// The VMSA page of a vCPU that starts at `eip` (real mode, CS.base = eip & 0xFFFF0000,
/// RIP = eip & 0xFFFF).
pub fn vmsa_page(eip: u32, features: GuestFeatures, vmm: &Vmm) -> Box<[u8; PAGE_SIZE]> {
    let r = VmmRegs::for_vmm(vmm, eip);
    let mut p = Page(Box::new([0u8; PAGE_SIZE]));
    p.seg(ES, 0, 0x93, 0xffff, 0);
    p.seg(
        CS,
        0xf000,
        r.cs_attrib,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    p.seg(SS, 0, r.ss_attrib, 0xffff, 0);
    p.seg(DS, 0, 0x93, 0xffff, 0);
    p.seg(FS, 0, 0x93, 0xffff, 0);
    p.seg(GS, 0, 0x93, 0xffff, 0);
    p.seg(GDTR, 0, 0, 0xffff, 0);
    p.seg(LDTR, 0, 0x82, 0xffff, 0);
    p.seg(IDTR, 0, 0, 0xffff, 0);
    p.seg(TR, 0, r.tr_attrib, 0xffff, 0);
    p.u64(EFER, 0x1000); // EFER.SVME: KVM sets it for SEV-ES guests
    p.u64(CR4, 0x40); // CR4.MCE: KVM sets it
    p.u64(CR0, 0x10); // CR0.ET: reset value
    p.u64(DR7, 0x400); // reset value
    p.u64(DR6, 0xffff_0ff0); // reset value
    p.u64(RFLAGS, 0x2); // reset value (bit 1 is always set)
    p.u64(RIP, u64::from(eip & 0xffff));
    p.u64(G_PAT, r.g_pat);
    p.u64(RDX, r.rdx);
    p.u64(SEV_FEATURES, features.bits());
    p.u64(XCR0, 0x1); // x87 state enabled
    p.put(MXCSR, &r.mxcsr.to_le_bytes());
    p.put(X87_FCW, &r.fcw.to_le_bytes());
    p.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::snp::vcpu::CpuSignature;

    fn synthetic(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/testdata/snp-synthetic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn bsp_and_ap_pages_match_the_reference_byte_for_byte() {
        let vmm = Vmm::Qemu(CpuSignature::from_vcpu_type("EPYC-v4").unwrap());
        let features = GuestFeatures::default();
        let bsp = vmsa_page(BSP_EIP, features, &vmm);
        let ap = vmsa_page(0x80b004, features, &vmm);
        assert_eq!(&bsp[..], &synthetic("vmsa_bsp_epyc-v4_feat1_qemu.bin")[..]);
        assert_eq!(&ap[..], &synthetic("vmsa_ap_epyc-v4_feat1_qemu.bin")[..]);
    }

    #[test]
    fn ec2_marks_only_the_bsp_code_segment_non_accessed() {
        let f = GuestFeatures::default();
        let bsp = vmsa_page(BSP_EIP, f, &Vmm::Ec2);
        let ap = vmsa_page(0x80b004, f, &Vmm::Ec2);
        assert_eq!(bsp[CS + 2], 0x9a);
        assert_eq!(ap[CS + 2], 0x9b);
        assert_eq!(bsp[RDX..RDX + 2], [0x00, 0x06]);
        assert_eq!(bsp[MXCSR..MXCSR + 4], [0; 4]);
    }
}
