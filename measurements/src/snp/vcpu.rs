//! vCPU identity: the CPUID signature QEMU loads into each vCPU's RDX at reset, and the table of
//! QEMU CPU model names that map to one.
//!
//! In QEMU mode the signature is part of every VMSA page, so the launch digest depends on the
//! `-cpu` model: a verifier must pin it.

use std::fmt;

use crate::snp::error::ConfigError;

/// A CPUID Fn0000_0001_EAX value (family, model, stepping), as a vCPU sees it.
///
/// Encoding: AMD CPUID Specification (#25481), "CPUID Fn0000_0001_EAX Family, Model, Stepping
/// Identifiers": stepping in bits 3:0, base model 7:4, base family 11:8, extended model 19:16,
/// extended family 27:20. Families above 0xF put 0xF in the base field and the rest in the
/// extended field.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuSignature(u32);

impl CpuSignature {
    /// Wraps a raw signature (`sev-snp-measure --vcpu-sig`).
    pub const fn from_raw(raw: u32) -> Self {
        CpuSignature(raw)
    }

    /// Encodes family/model/stepping (`--vcpu-family/--vcpu-model/--vcpu-stepping`), refusing
    /// values the fields cannot hold (the reference silently masks them).
    pub const fn from_family_model_stepping(
        family: u32,
        model: u32,
        stepping: u32,
    ) -> Result<Self, ConfigError> {
        if family > 0xF + 0xFF {
            return Err(ConfigError::VcpuFamily { family });
        }
        if model > 0xFF {
            return Err(ConfigError::VcpuModel { model });
        }
        if stepping > 0xF {
            return Err(ConfigError::VcpuStepping { stepping });
        }
        Ok(Self::encode(family, model, stepping))
    }

    /// The encoding for in-range fields (sev-snp-measure `vcpu_types.cpu_sig`).
    const fn encode(family: u32, model: u32, stepping: u32) -> Self {
        let (family_low, family_high) = if family > 0xF {
            (0xF, family - 0xF)
        } else {
            (family, 0)
        };
        CpuSignature(
            (family_high << 20)
                | ((model >> 4) << 16)
                | (family_low << 8)
                | ((model & 0xF) << 4)
                | stepping,
        )
    }

    /// The signature for a QEMU CPU model name from [`VCPU_TYPES`] (case-sensitive, as QEMU).
    pub fn from_vcpu_type(name: &str) -> Result<Self, ConfigError> {
        VCPU_TYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, sig)| *sig)
            .ok_or_else(|| ConfigError::UnknownVcpuType {
                name: name.to_owned(),
                known: VCPU_TYPES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The raw 32-bit value.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for CpuSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSignature({:#x})", self.0)
    }
}

impl fmt::Display for CpuSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

const EPYC: CpuSignature = CpuSignature::encode(23, 1, 2); // 0x00800F12, Naples
const EPYC_ROME: CpuSignature = CpuSignature::encode(23, 49, 0); // 0x00830F10
const EPYC_MILAN: CpuSignature = CpuSignature::encode(25, 1, 1); // 0x00A00F11
const EPYC_GENOA: CpuSignature = CpuSignature::encode(25, 17, 0); // 0x00A10F10
const EPYC_TURIN: CpuSignature = CpuSignature::encode(26, 0, 0); // 0x00B00F00

/// QEMU CPU model names (`builtin_x86_defs` in QEMU `target/i386/cpu.c`) and their signatures,
/// exactly the table of sev-snp-measure 0.0.13 `vcpu_types.CPU_SIGS`, in its order.
pub const VCPU_TYPES: [(&str, CpuSignature); 16] = [
    ("EPYC", EPYC),
    ("EPYC-v1", EPYC),
    ("EPYC-v2", EPYC),
    ("EPYC-IBPB", EPYC),
    ("EPYC-v3", EPYC),
    ("EPYC-v4", EPYC),
    ("EPYC-Rome", EPYC_ROME),
    ("EPYC-Rome-v1", EPYC_ROME),
    ("EPYC-Rome-v2", EPYC_ROME),
    ("EPYC-Rome-v3", EPYC_ROME),
    ("EPYC-Milan", EPYC_MILAN),
    ("EPYC-Milan-v1", EPYC_MILAN),
    ("EPYC-Milan-v2", EPYC_MILAN),
    ("EPYC-Genoa", EPYC_GENOA),
    ("EPYC-Genoa-v1", EPYC_GENOA),
    ("EPYC-Turin", EPYC_TURIN),
];

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_reference_table() {
        let sig = |n| CpuSignature::from_vcpu_type(n).unwrap().raw();
        assert_eq!(sig("EPYC-v4"), 0x0080_0F12);
        assert_eq!(sig("EPYC-Rome-v3"), 0x0083_0F10);
        assert_eq!(sig("EPYC-Milan"), 0x00A0_0F11);
        assert_eq!(sig("EPYC-Genoa-v1"), 0x00A1_0F10);
        assert_eq!(sig("EPYC-Turin"), 0x00B0_0F00);
    }

    #[test]
    fn unknown_names_and_unencodable_fields_are_refused() {
        assert!(matches!(
            CpuSignature::from_vcpu_type("epyc-v4"),
            Err(ConfigError::UnknownVcpuType { .. })
        ));
        assert_eq!(
            CpuSignature::from_family_model_stepping(271, 0, 0),
            Err(ConfigError::VcpuFamily { family: 271 })
        );
        assert_eq!(
            CpuSignature::from_family_model_stepping(25, 256, 0),
            Err(ConfigError::VcpuModel { model: 256 })
        );
        assert_eq!(
            CpuSignature::from_family_model_stepping(25, 1, 16),
            Err(ConfigError::VcpuStepping { stepping: 16 })
        );
        assert_eq!(
            CpuSignature::from_family_model_stepping(0x1A, 0x02, 1)
                .unwrap()
                .raw(),
            0x00B0_0F21
        );
        assert_eq!(
            CpuSignature::from_family_model_stepping(270, 255, 15)
                .unwrap()
                .raw(),
            0x0FFF_0FFF
        );
    }
}
