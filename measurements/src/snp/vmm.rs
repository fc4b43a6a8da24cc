//! Which hypervisor launches the guest. They differ in the initial vCPU state they hand the PSP
//! (see [`crate::snp::vmsa`]) and in how they add some metadata sections (see [`crate::snp`]).

use std::fmt;

use crate::snp::error::ConfigError;
use crate::snp::vcpu::CpuSignature;

/// The VMM, with what it needs to build the initial vCPU state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// Upstream QEMU/KVM (`sev-snp-measure --vmm-type QEMU`, the default). RDX holds the vCPU's
    /// CPUID signature, so QEMU needs one.
    Qemu(CpuSignature),
    /// Amazon EC2 (`--vmm-type ec2`): RDX is 0x600, other segment attributes, and the CPUID page
    /// is added after all other metadata sections.
    Ec2,
    /// Google Compute Engine (`--vmm-type gce`): RDX is 0x600, another PAT, and SNP_SEC_MEM
    /// sections are UNMEASURED rather than ZERO pages.
    Gce,
}

impl Vmm {
    /// Builds the VMM from sev-snp-measure's `--vmm-type` name (`QEMU`, `ec2`, `gce`, matched
    /// exactly) and the vCPU signature, which only QEMU uses and requires.
    pub fn from_name(name: &str, vcpu: Option<CpuSignature>) -> Result<Self, ConfigError> {
        match name {
            "QEMU" => vcpu.map(Vmm::Qemu).ok_or(ConfigError::MissingVcpuSignature),
            "ec2" => Ok(Vmm::Ec2),
            "gce" => Ok(Vmm::Gce),
            _ => Err(ConfigError::UnknownVmmType {
                name: name.to_owned(),
            }),
        }
    }

    /// sev-snp-measure's name for this VMM type.
    pub const fn name(&self) -> &'static str {
        match self {
            Vmm::Qemu(_) => "QEMU",
            Vmm::Ec2 => "ec2",
            Vmm::Gce => "gce",
        }
    }
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vmm::Qemu(sig) => write!(f, "QEMU (vCPU signature {sig})"),
            other => f.write_str(other.name()),
        }
    }
}
