//! Processor generations and the TCB_VERSION layouts they use.
//!
//! A TCB_VERSION is 8 bytes whose meaning depends on the processor generation (SNP firmware ABI,
//! "TCB_VERSION structure"): Milan and Genoa put the boot loader first, Turin adds an FMC
//! (first mutable code) SPL and shifts the others. A v2 report does not say which layout it uses,
//! so the generation is taken from the AMD-signed VEK certificate's issuer. TCBs are compared
//! component by component, never as a 64-bit number.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An AMD EPYC generation with SEV-SNP, each with its own ARK/ASK/ASVK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// 3rd generation EPYC (family 0x19, models 0x00-0x0F).
    Milan,
    /// 4th generation EPYC, including Bergamo and Siena (family 0x19, models 0x10-0x1F and
    /// 0xA0-0xAF).
    Genoa,
    /// 5th generation EPYC (family 0x1A, models 0x00-0x11).
    Turin,
}

impl Generation {
    /// Every generation this crate knows, oldest first.
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    /// The product name AMD uses in certificate names and KDS URLs (`Milan`, `Genoa`, `Turin`).
    pub fn name(self) -> &'static str {
        match self {
            Generation::Milan => "Milan",
            Generation::Genoa => "Genoa",
            Generation::Turin => "Turin",
        }
    }

    /// The generation of a CPUID family/model pair (as carried by v3+ reports), if known.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Generation::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Generation::Genoa),
            (0x1A, 0x00..=0x11) => Some(Generation::Turin),
            _ => None,
        }
    }

    /// Whether this generation's TCB carries an FMC SPL.
    pub fn has_fmc(self) -> bool {
        self == Generation::Turin
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One component of a TCB (a security patch level, SPL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcbComponent {
    /// Firmware "first mutable code" (Turin only).
    Fmc,
    /// PSP boot loader.
    Bl,
    /// PSP operating system (TEE).
    Tee,
    /// SNP firmware.
    Snp,
    /// CPU microcode.
    Ucode,
}

impl TcbComponent {
    /// All components, in the order they are printed.
    pub const ALL: [TcbComponent; 5] = [
        TcbComponent::Fmc,
        TcbComponent::Bl,
        TcbComponent::Tee,
        TcbComponent::Snp,
        TcbComponent::Ucode,
    ];

    /// Short stable name (`fmc`, `bl`, `tee`, `snp`, `ucode`), used in check names.
    pub fn name(self) -> &'static str {
        match self {
            TcbComponent::Fmc => "fmc",
            TcbComponent::Bl => "bl",
            TcbComponent::Tee => "tee",
            TcbComponent::Snp => "snp",
            TcbComponent::Ucode => "ucode",
        }
    }
}

/// A TCB_VERSION as the 8 raw bytes of the report; decode it with [`RawTcb::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawTcb(pub [u8; 8]);

impl RawTcb {
    /// The components under `generation`'s layout.
    pub fn decode(self, generation: Generation) -> Tcb {
        let b = self.0;
        match generation {
            // [0] BOOT_LOADER, [1] TEE, [2..6] reserved, [6] SNP, [7] MICROCODE.
            Generation::Milan | Generation::Genoa => Tcb {
                fmc: None,
                bl: b[0],
                tee: b[1],
                snp: b[6],
                ucode: b[7],
            },
            // [0] FMC, [1] BOOT_LOADER, [2] TEE, [3] SNP, [4..7] reserved, [7] MICROCODE.
            Generation::Turin => Tcb {
                fmc: Some(b[0]),
                bl: b[1],
                tee: b[2],
                snp: b[3],
                ucode: b[7],
            },
        }
    }
}

impl fmt::Display for RawTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A decoded TCB: one security patch level per component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Tcb {
    /// FMC SPL, present on Turin only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bl: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub ucode: u8,
}

impl Tcb {
    /// One component's SPL (`None` for FMC outside Turin).
    pub fn get(&self, component: TcbComponent) -> Option<u8> {
        match component {
            TcbComponent::Fmc => self.fmc,
            TcbComponent::Bl => Some(self.bl),
            TcbComponent::Tee => Some(self.tee),
            TcbComponent::Snp => Some(self.snp),
            TcbComponent::Ucode => Some(self.ucode),
        }
    }
}

impl fmt::Display for Tcb {
    /// `fmc=1 bl=3 tee=2 snp=5 ucode=97` (no `fmc` before Turin).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bl, self.tee, self.snp, self.ucode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milan_and_turin_layouts_differ() {
        // Real values: Milan report (virtee) and Turin report (openanolis), both matching their VCEK.
        let milan = RawTcb([0x03, 0, 0, 0, 0, 0, 0x08, 0x73]).decode(Generation::Milan);
        assert_eq!(milan.to_string(), "bl=3 tee=0 snp=8 ucode=115");
        let turin = RawTcb([0x01, 0x03, 0x02, 0x05, 0, 0, 0, 0x61]).decode(Generation::Turin);
        assert_eq!(turin.to_string(), "fmc=1 bl=3 tee=2 snp=5 ucode=97");
        assert_eq!(turin.get(TcbComponent::Fmc), Some(1));
        assert_eq!(milan.get(TcbComponent::Fmc), None);
    }

    #[test]
    fn cpuid_maps_to_generations() {
        assert_eq!(Generation::from_cpuid(0x19, 0x01), Some(Generation::Milan));
        assert_eq!(Generation::from_cpuid(0x19, 0x11), Some(Generation::Genoa));
        assert_eq!(Generation::from_cpuid(0x19, 0xA0), Some(Generation::Genoa));
        assert_eq!(Generation::from_cpuid(0x1A, 0x02), Some(Generation::Turin));
        assert_eq!(Generation::from_cpuid(0x17, 0x31), None);
        assert_eq!(Generation::from_cpuid(0x19, 0x30), None);
    }
}
