//! Offline prediction of PCRs 4, 9 and 11 (sha256 bank) for a UKI booted directly by the UEFI
//! firmware, with systemd-stub 252 (Debian 12) and a Linux 6.1 EFI-stub kernel.
//!
//! Verified bit-exact against QEMU/OVMF/swtpm boots (`testdata/pcr-qemu/`, tests) and, for PCR
//! 11, against `systemd-measure calculate` 252. Other stub versions measure differently (newer
//! ones measure `.sbat`, `.uname`, `.ucode`, profiles): pin the stub, and re-check against a
//! live boot when it changes.
//!
//! - **PCR 4** (firmware, TCG PC Client PFP): EV_EFI_ACTION "Calling EFI Application from Boot
//!   Option", EV_SEPARATOR, one "Returning from ..." + "Calling ..." pair per boot option that
//!   failed before the UKI's, the UKI's Authenticode hash, then (Secure Boot off only) the
//!   embedded kernel's Authenticode hash: stub 252 loads `.linux` with LoadImage, and with
//!   Secure Boot on its security-arch override bypasses the firmware's measurement.
//! - **PCR 9** (Linux EFI stub, EV_EVENT_TAG): SHA-256 of the UTF-16LE command line with its
//!   terminating NUL (LoadOptions, which stub 252 fills from `.cmdline`), then SHA-256 of the
//!   initrd (`.initrd`, as no credentials/sysexts/addons are appended).
//! - **PCR 11** (systemd-stub, EV_IPL): for each present section in the order `.linux .osrel
//!   .cmdline .initrd .splash .dtb .pcrpkey`, SHA-256 of the ASCII name with its NUL, then
//!   SHA-256 of the section's VirtualSize bytes; then each systemd-pcrphase boot phase string.
//!
//! **Boot-order retries.** A failed earlier boot option adds a Returning/Calling pair to PCR 4
//! (QEMU's default CD-ROM does). The prediction takes the number of retries as an explicit input
//! ([`FirmwareBoot::boot_option_retries`]); [`boot_option_retries_in_log`] reads it from an event
//! log. The pair carries only fixed strings, no code, so a pin set may allow 0 and 1 retries
//! knowingly; a correctly ordered appliance boot has 0.
//!
//! On Azure the PCR 4 prefix comes from Hyper-V's UEFI, not OVMF: confirm it on a real CVM before
//! pinning PCR 4 there (PCR 9 and 11 come from the stub and the kernel only).

use sha2::{Digest, Sha256};

use crate::eventlog::{event_type, EventLog};
use crate::pe::{authenticode_sha256, sections, PeError};
use crate::pins::{PcrPins, PinError};

/// The EV_EFI_ACTION string measured before a boot option's application runs.
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// The EV_EFI_ACTION string measured when a boot option's application returns (or fails).
pub const RETURNING_FROM_EFI_APPLICATION: &str = "Returning from EFI Application from Boot Option";
/// EV_SEPARATOR data: four zero bytes.
pub const SEPARATOR: [u8; 4] = [0; 4];
/// The sections systemd-stub 252 measures into PCR 11, in its measuring order.
pub const STUB_252_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// Why a prediction cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PredictError {
    /// The UKI (or its `.linux`) is not a PE image this crate can hash.
    #[error("{what}: {source}")]
    Pe {
        /// Which image.
        what: &'static str,
        /// The PE problem.
        #[source]
        source: PeError,
    },
    /// A section stub 252 measures appears twice.
    #[error("UKI section {name} appears twice")]
    DuplicateSection {
        /// The section name.
        name: &'static str,
    },
    /// A section the prediction needs is missing.
    #[error("UKI has no {name} section")]
    MissingSection {
        /// The section name.
        name: &'static str,
    },
    /// The command line is outside what has been verified: printable ASCII without leading or
    /// trailing whitespace (stub and kernel handling of other bytes is unverified).
    #[error("command line is not printable ASCII without surrounding whitespace: {reason}")]
    Cmdline {
        /// What is wrong.
        reason: &'static str,
    },
}

/// SHA-256 PCR extend: `SHA256(pcr || digest)`.
pub fn extend(pcr: &mut [u8; 32], digest: &[u8; 32]) {
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(digest);
    *pcr = h.finalize().into();
}

/// A sha256 PCR's value after one extend with `digest` from reset (all zeros).
pub fn extended_from_reset(digest: &[u8; 32]) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    extend(&mut pcr, digest);
    pcr
}

/// SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How the firmware boots the UKI, as far as PCR 4 is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareBoot {
    /// UEFI Secure Boot on (on Azure: the claims' `vm-configuration.secure-boot`). With stub 252,
    /// on means no kernel event in PCR 4.
    pub secure_boot: bool,
    /// Boot options that failed before the UKI's (each adds a Returning/Calling pair).
    pub boot_option_retries: u32,
}

/// PCR 4 after the firmware has started the UKI and the stub has loaded the kernel.
pub fn predict_pcr4(
    uki_authenticode: &[u8; 32],
    kernel_authenticode: &[u8; 32],
    boot: &FirmwareBoot,
) -> [u8; 32] {
    let calling = sha256(CALLING_EFI_APPLICATION.as_bytes());
    let returning = sha256(RETURNING_FROM_EFI_APPLICATION.as_bytes());
    let mut pcr = [0u8; 32];
    extend(&mut pcr, &calling);
    extend(&mut pcr, &sha256(&SEPARATOR));
    for _ in 0..boot.boot_option_retries {
        extend(&mut pcr, &returning);
        extend(&mut pcr, &calling);
    }
    extend(&mut pcr, uki_authenticode);
    if !boot.secure_boot {
        extend(&mut pcr, kernel_authenticode);
    }
    pcr
}

/// Check a command line is in the verified subset (see [`PredictError::Cmdline`]).
fn check_cmdline(cmdline: &str) -> Result<(), PredictError> {
    if cmdline.is_empty() {
        return Err(PredictError::Cmdline { reason: "empty" });
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(PredictError::Cmdline {
            reason: "non-printable or non-ASCII byte",
        });
    }
    if cmdline.starts_with(' ') || cmdline.ends_with(' ') {
        return Err(PredictError::Cmdline {
            reason: "leading or trailing space",
        });
    }
    Ok(())
}

/// The digest the Linux EFI stub measures for its LoadOptions: SHA-256 of the UTF-16LE command
/// line including the terminating NUL.
pub fn load_options_digest(cmdline: &str) -> Result<[u8; 32], PredictError> {
    check_cmdline(cmdline)?;
    let mut h = Sha256::new();
    for unit in cmdline.encode_utf16().chain([0]) {
        h.update(unit.to_le_bytes());
    }
    Ok(h.finalize().into())
}

/// PCR 9: the kernel's LoadOptions event, then its initrd event (if there is an initrd).
pub fn predict_pcr9(
    cmdline: &str,
    initrd_sha256: Option<&[u8; 32]>,
) -> Result<[u8; 32], PredictError> {
    let mut pcr = [0u8; 32];
    extend(&mut pcr, &load_options_digest(cmdline)?);
    if let Some(initrd) = initrd_sha256 {
        extend(&mut pcr, initrd);
    }
    Ok(pcr)
}

/// A systemd-pcrphase boot phase, measured into PCR 11 as its UTF-8 string (no NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPhase {
    /// `enter-initrd`.
    EnterInitrd,
    /// `leave-initrd`.
    LeaveInitrd,
    /// `sysinit`.
    Sysinit,
    /// `ready`.
    Ready,
}

impl BootPhase {
    /// The string measured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnterInitrd => "enter-initrd",
            Self::LeaveInitrd => "leave-initrd",
            Self::Sysinit => "sysinit",
            Self::Ready => "ready",
        }
    }

    /// All four phases of a systemd boot that reached `ready`.
    pub const FULL_BOOT: [BootPhase; 4] = [
        Self::EnterInitrd,
        Self::LeaveInitrd,
        Self::Sysinit,
        Self::Ready,
    ];
}

/// SHA-256 of each section systemd-stub 252 measures (None: section absent). The digest is of
/// the section's VirtualSize bytes as loaded, which for objcopy/ukify-built UKIs is the input
/// file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stub252Sections {
    /// `.linux`: the kernel image.
    pub linux: Option<[u8; 32]>,
    /// `.osrel`: os-release.
    pub osrel: Option<[u8; 32]>,
    /// `.cmdline`: the kernel command line.
    pub cmdline: Option<[u8; 32]>,
    /// `.initrd`: the initramfs.
    pub initrd: Option<[u8; 32]>,
    /// `.splash`: a boot splash image.
    pub splash: Option<[u8; 32]>,
    /// `.dtb`: a device tree.
    pub dtb: Option<[u8; 32]>,
    /// `.pcrpkey`: the PCR signing public key.
    pub pcrpkey: Option<[u8; 32]>,
}

impl Stub252Sections {
    fn in_order(&self) -> [(&'static str, Option<&[u8; 32]>); 7] {
        let [linux, osrel, cmdline, initrd, splash, dtb, pcrpkey] = STUB_252_SECTIONS;
        [
            (linux, self.linux.as_ref()),
            (osrel, self.osrel.as_ref()),
            (cmdline, self.cmdline.as_ref()),
            (initrd, self.initrd.as_ref()),
            (splash, self.splash.as_ref()),
            (dtb, self.dtb.as_ref()),
            (pcrpkey, self.pcrpkey.as_ref()),
        ]
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<[u8; 32]>> {
        Some(match name {
            ".linux" => &mut self.linux,
            ".osrel" => &mut self.osrel,
            ".cmdline" => &mut self.cmdline,
            ".initrd" => &mut self.initrd,
            ".splash" => &mut self.splash,
            ".dtb" => &mut self.dtb,
            ".pcrpkey" => &mut self.pcrpkey,
            _ => return None,
        })
    }
}

/// PCR 11: the stub's section measurements, then the given boot phases in order (empty if the
/// system has not run systemd-pcrphase, e.g. a non-systemd initrd).
pub fn predict_pcr11(sections: &Stub252Sections, phases: &[BootPhase]) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for (name, digest) in sections.in_order() {
        if let Some(digest) = digest {
            let mut named = name.as_bytes().to_vec();
            named.push(0);
            extend(&mut pcr, &sha256(&named));
            extend(&mut pcr, digest);
        }
    }
    for phase in phases {
        extend(&mut pcr, &sha256(phase.as_str().as_bytes()));
    }
    pcr
}

/// Everything about a UKI the prediction needs, as digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiComponents {
    /// Authenticode SHA-256 of the UKI as on the ESP (after signing, if signed).
    pub uki_authenticode: [u8; 32],
    /// Authenticode SHA-256 of the `.linux` section contents.
    pub kernel_authenticode: [u8; 32],
    /// The `.cmdline` contents.
    pub cmdline: String,
    /// Section digests.
    pub sections: Stub252Sections,
}

impl UkiComponents {
    /// Take every input from the UKI bytes: its Authenticode hash, the stub-252 sections (each
    /// measured over VirtualSize bytes), the `.linux` Authenticode hash and the `.cmdline` text.
    pub fn from_uki(uki: &[u8]) -> Result<Self, PredictError> {
        let uki_authenticode = authenticode_sha256(uki).map_err(|source| PredictError::Pe {
            what: "UKI",
            source,
        })?;
        let table = sections(uki).map_err(|source| PredictError::Pe {
            what: "UKI",
            source,
        })?;
        let mut digests = Stub252Sections::default();
        let mut kernel_authenticode = None;
        let mut cmdline = None;
        for section in &table {
            let Some(name) = STUB_252_SECTIONS
                .iter()
                .copied()
                .find(|n| n.as_bytes() == section.name())
            else {
                continue;
            };
            let Some(slot) = digests.slot(name) else {
                continue;
            };
            if slot.is_some() {
                return Err(PredictError::DuplicateSection { name });
            }
            let contents = section
                .loaded()
                .map_err(|source| PredictError::Pe { what: name, source })?;
            *slot = Some(sha256(&contents));
            match name {
                ".linux" => {
                    kernel_authenticode =
                        Some(authenticode_sha256(&contents).map_err(|source| {
                            PredictError::Pe {
                                what: ".linux section",
                                source,
                            }
                        })?);
                }
                ".cmdline" => {
                    let text = String::from_utf8(contents).map_err(|_| PredictError::Cmdline {
                        reason: "non-printable or non-ASCII byte",
                    })?;
                    check_cmdline(&text)?;
                    cmdline = Some(text);
                }
                _ => {}
            }
        }
        Ok(Self {
            uki_authenticode,
            kernel_authenticode: kernel_authenticode
                .ok_or(PredictError::MissingSection { name: ".linux" })?,
            cmdline: cmdline.ok_or(PredictError::MissingSection { name: ".cmdline" })?,
            sections: digests,
        })
    }

    /// Predict PCRs 4, 9 and 11.
    pub fn predict(
        &self,
        boot: &FirmwareBoot,
        phases: &[BootPhase],
    ) -> Result<PredictedPcrs, PredictError> {
        Ok(PredictedPcrs {
            pcr4: predict_pcr4(&self.uki_authenticode, &self.kernel_authenticode, boot),
            pcr9: predict_pcr9(&self.cmdline, self.sections.initrd.as_ref())?,
            pcr11: predict_pcr11(&self.sections, phases),
        })
    }
}

/// Predicted sha256 values of PCRs 4, 9 and 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictedPcrs {
    /// PCR 4: boot manager code (UKI and, Secure Boot off, kernel).
    pub pcr4: [u8; 32],
    /// PCR 9: kernel command line and initrd.
    pub pcr9: [u8; 32],
    /// PCR 11: UKI sections and boot phases.
    pub pcr11: [u8; 32],
}

impl PredictedPcrs {
    /// Add these values to `pins` (allowed alongside any already pinned), plus PCR 12 and 13 as
    /// zero (no extra command line, credentials, addons or sysexts).
    pub fn add_to(&self, pins: PcrPins) -> Result<PcrPins, PinError> {
        pins.pin(4, [self.pcr4])?
            .pin(9, [self.pcr9])?
            .pin(11, [self.pcr11])?
            .pin_zero(12)?
            .pin_zero(13)
    }
}

/// The number of boot-option retries recorded in a log: PCR 4 EV_EFI_ACTION events whose data
/// and sha256 digest are the "Returning from EFI Application from Boot Option" string.
pub fn boot_option_retries_in_log(log: &EventLog) -> u32 {
    let want = sha256(RETURNING_FROM_EFI_APPLICATION.as_bytes());
    let count = log
        .events_for(4)
        .filter(|e| {
            e.event_type == event_type::EV_EFI_ACTION
                && e.data == RETURNING_FROM_EFI_APPLICATION.as_bytes()
                && e.sha256() == Some(want)
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// systemd-measure 252 vectors (shared/platform/azure-vtpm.md §2.1): linux = "MZ fake
    /// kernel", osrel = "ID=test\n", cmdline = "console=ttyS0 quiet", initrd = 1000 zero bytes.
    #[test]
    fn pcr11_matches_systemd_measure_252() {
        let sections = Stub252Sections {
            linux: Some(sha256(b"MZ fake kernel")),
            osrel: Some(sha256(b"ID=test\n")),
            cmdline: Some(sha256(b"console=ttyS0 quiet")),
            initrd: Some(sha256(&[0u8; 1000])),
            ..Default::default()
        };
        use BootPhase::*;
        let cases: [(&[BootPhase], &str); 5] = [
            (
                &[],
                "d1dd038e8f363a06823b43388373808b2f5d6d764a2f8d1ebc05627615a03fcd",
            ),
            (
                &[EnterInitrd],
                "a1b95a9a2de3c073526e9cc6658736cd2e64b951e3254372288009d9b701a479",
            ),
            (
                &[EnterInitrd, LeaveInitrd],
                "e4857b70a8b5ee3c2c9f1a53d6862e5cc2b32dae91192fc88b341e04fb8fb067",
            ),
            (
                &[EnterInitrd, LeaveInitrd, Sysinit],
                "0f6ae80fec45b7850abbf52e5a334f60ecbd01b9faf68103ab15b11eb4e7abb8",
            ),
            (
                &BootPhase::FULL_BOOT,
                "ed0c3e31193470e5a58679bafbfc954a732a4456d8a77e66da04ee945adf33c0",
            ),
        ];
        for (phases, want) in cases {
            assert_eq!(predict_pcr11(&sections, phases), h(want), "{phases:?}");
        }
    }

    #[test]
    fn load_options_digest_is_utf16_with_nul() {
        assert_eq!(
            load_options_digest("console=ttyS0 panic=-1 quiet").unwrap(),
            h("93087c6f6dfde734c8a9792e70391de29a8fbec72f59902a640e51d71f2b23ff")
        );
        for bad in ["", " x", "x\n", "caf\u{e9}", "a\0b"] {
            assert!(
                matches!(load_options_digest(bad), Err(PredictError::Cmdline { .. })),
                "{bad:?}"
            );
        }
    }
}
