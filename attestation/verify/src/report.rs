//! The SEV-SNP ATTESTATION_REPORT, parsed from raw offsets.
//!
//! Layout: SNP firmware ABI (AMD #56860), "ATTESTATION_REPORT structure"; offsets as recorded in
//! `shared/platform/snp-measurement.md` §5 and proven by re-building a real report field by
//! field. 1184 (0x4A0) bytes, little-endian; bytes 0x000..0x2A0 are signed.
//!
//! The parser keeps the exact input bytes: the signature is checked over them, never over a
//! re-encoding. It does not need a chip ID (a masked, all-zero CHIP_ID parses) and it does not
//! guess the TCB layout (that needs the generation, which comes from the VEK certificate).
//! Reserved fields are not rejected here but reported by [`Report::nonzero_reserved`], so the
//! verifier can name them in a failed check.

use std::fmt;

use serde::Serialize;

use crate::error::ReportError;
use crate::tcb::RawTcb;

/// Size of an attestation report in bytes.
pub const REPORT_SIZE: usize = 0x4A0;

/// Length of the signed part of a report: bytes `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;

/// The report versions this parser knows: 2, 3 (adds CPUID family/model/stepping, firmware
/// 1.55) and 5 (adds the launch/current mitigation vectors, Turin firmware 1.58). Version 4 was
/// never seen in real evidence and is refused rather than guessed.
pub const KNOWN_VERSIONS: [u32; 3] = [2, 3, 5];

/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only algorithm AMD defines.
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// A parsed attestation report, holding its exact input bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_SIZE]>,
    fields: ReportFields,
}

/// The decoded fields of a report (read-only through [`Report::fields`], so that they always
/// describe the bytes whose signature is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFields {
    /// VERSION (0x000).
    pub version: u32,
    /// GUEST_SVN (0x004), from the ID block.
    pub guest_svn: u32,
    /// POLICY (0x008), the guest policy the VM was launched with.
    pub policy: GuestPolicy,
    /// FAMILY_ID (0x010), from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID (0x020), from the ID block.
    pub image_id: [u8; 16],
    /// VMPL (0x030) of the requester.
    pub vmpl: u32,
    /// SIGNATURE_ALGO (0x034); 1 is ECDSA P-384 with SHA-384.
    pub signature_algo: u32,
    /// CURRENT_TCB (0x038).
    pub current_tcb: RawTcb,
    /// PLATFORM_INFO (0x040).
    pub platform_info: PlatformInfo,
    /// KEY_INFO (0x048): author key, chip key masking and which key signed.
    pub key_info: KeyInfo,
    /// REPORT_DATA (0x050), chosen by the guest (a nonce or a key binding).
    pub report_data: [u8; 64],
    /// MEASUREMENT (0x090), the launch digest.
    pub measurement: [u8; 48],
    /// HOST_DATA (0x0C0), chosen by the host at launch.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST (0x0E0), SHA-384 of the ID block's public key (zero without one).
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST (0x110), valid when KEY_INFO.AUTHOR_KEY_EN is set.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID (0x140).
    pub report_id: [u8; 32],
    /// REPORT_ID_MA (0x160); all 0xFF without a migration agent.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB (0x180): the TCB the VCEK was derived for.
    pub reported_tcb: RawTcb,
    /// CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (0x188), version 3 and later.
    pub cpuid: Option<Cpuid>,
    /// CHIP_ID (0x1A0); all zero when masked (VLEK); Turin uses the first 8 bytes only.
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB (0x1E0).
    pub committed_tcb: RawTcb,
    /// CURRENT_BUILD/MINOR/MAJOR (0x1E8): the running SNP firmware.
    pub current_firmware: FirmwareVersion,
    /// COMMITTED_BUILD/MINOR/MAJOR (0x1EC).
    pub committed_firmware: FirmwareVersion,
    /// LAUNCH_TCB (0x1F0): CURRENT_TCB when the guest was launched.
    pub launch_tcb: RawTcb,
    /// LAUNCH_MIT_VECTOR (0x1F8), version 5 and later.
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (0x200), version 5 and later.
    pub current_mit_vector: Option<u64>,
}

/// A byte range of the report that the ABI reserves (must be zero, or in one case one) and that
/// holds something else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservedViolation {
    /// First offset of the range.
    pub offset: usize,
    /// Length of the range in bytes.
    pub len: usize,
    /// What the ABI says the range is.
    pub what: &'static str,
}

impl fmt::Display for ReservedViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:#05x}..{:#05x}",
            self.what,
            self.offset,
            self.offset + self.len
        )
    }
}

impl Report {
    /// Parses a report: exactly [`REPORT_SIZE`] bytes of a [`KNOWN_VERSIONS`] version.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let raw: [u8; REPORT_SIZE] = bytes.try_into().map_err(|_| ReportError::WrongSize {
            expected: REPORT_SIZE,
            got: bytes.len(),
        })?;
        let version = u32_at(&raw, 0x000);
        if !KNOWN_VERSIONS.contains(&version) {
            return Err(ReportError::UnsupportedVersion {
                version,
                known: KNOWN_VERSIONS.to_vec(),
            });
        }
        let v3 = version >= 3;
        let v5 = version >= 5;
        let fields = ReportFields {
            version,
            guest_svn: u32_at(&raw, 0x004),
            policy: GuestPolicy(u64_at(&raw, 0x008)),
            family_id: array(&raw, 0x010),
            image_id: array(&raw, 0x020),
            vmpl: u32_at(&raw, 0x030),
            signature_algo: u32_at(&raw, 0x034),
            current_tcb: RawTcb(array(&raw, 0x038)),
            platform_info: PlatformInfo(u64_at(&raw, 0x040)),
            key_info: KeyInfo(u32_at(&raw, 0x048)),
            report_data: array(&raw, 0x050),
            measurement: array(&raw, 0x090),
            host_data: array(&raw, 0x0C0),
            id_key_digest: array(&raw, 0x0E0),
            author_key_digest: array(&raw, 0x110),
            report_id: array(&raw, 0x140),
            report_id_ma: array(&raw, 0x160),
            reported_tcb: RawTcb(array(&raw, 0x180)),
            cpuid: v3.then(|| {
                let [family, model, stepping] = array(&raw, 0x188);
                Cpuid {
                    family,
                    model,
                    stepping,
                }
            }),
            chip_id: array(&raw, 0x1A0),
            committed_tcb: RawTcb(array(&raw, 0x1E0)),
            current_firmware: FirmwareVersion::from_le(array(&raw, 0x1E8)),
            committed_firmware: FirmwareVersion::from_le(array(&raw, 0x1EC)),
            launch_tcb: RawTcb(array(&raw, 0x1F0)),
            launch_mit_vector: v5.then(|| u64_at(&raw, 0x1F8)),
            current_mit_vector: v5.then(|| u64_at(&raw, 0x200)),
        };
        Ok(Self {
            raw: Box::new(raw),
            fields,
        })
    }

    /// The decoded fields.
    pub fn fields(&self) -> &ReportFields {
        &self.fields
    }

    /// The exact bytes this report was parsed from.
    pub fn raw(&self) -> &[u8; REPORT_SIZE] {
        &self.raw
    }

    /// The signed bytes, `0x000..0x2A0`, exactly as received.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// The signature's R component: 72 bytes little-endian at 0x2A0.
    pub fn signature_r(&self) -> [u8; 72] {
        array(&self.raw, 0x2A0)
    }

    /// The signature's S component: 72 bytes little-endian at 0x2E8.
    pub fn signature_s(&self) -> [u8; 72] {
        array(&self.raw, 0x2E8)
    }

    /// Reserved ranges (and reserved bits of POLICY and KEY_INFO) that do not hold what the ABI
    /// requires; empty for a well-formed report.
    pub fn nonzero_reserved(&self) -> Vec<ReservedViolation> {
        let v = self.fields.version;
        let mut ranges: Vec<(usize, usize, &'static str)> = vec![(0x04C, 0x050, "reserved")];
        ranges.push(if v >= 3 {
            (0x18B, 0x1A0, "reserved")
        } else {
            (0x188, 0x1A0, "reserved (CPUID fields before version 3)")
        });
        ranges.push((0x1EB, 0x1EC, "reserved"));
        ranges.push((0x1EF, 0x1F0, "reserved"));
        ranges.push(if v >= 5 {
            (0x208, 0x2A0, "reserved")
        } else {
            (
                0x1F8,
                0x2A0,
                "reserved (mitigation vectors before version 5)",
            )
        });
        // P-384 scalars are 48 bytes; the ABI pads R and S to 72 and the signature to 512.
        ranges.push((0x2A0 + 48, 0x2E8, "signature R padding"));
        ranges.push((0x2E8 + 48, 0x330, "signature S padding"));
        ranges.push((0x330, REPORT_SIZE, "signature reserved"));
        let mut out: Vec<ReservedViolation> = ranges
            .into_iter()
            .filter(|&(start, end, _)| self.raw[start..end].iter().any(|&b| b != 0))
            .map(|(start, end, what)| ReservedViolation {
                offset: start,
                len: end - start,
                what,
            })
            .collect();
        if self.fields.policy.reserved_bit17() != 1 {
            out.push(ReservedViolation {
                offset: 0x008,
                len: 8,
                what: "POLICY bit 17 (must be one)",
            });
        }
        if self.fields.policy.mbz_bits() != 0 {
            out.push(ReservedViolation {
                offset: 0x008,
                len: 8,
                what: "POLICY bits 63:26",
            });
        }
        if self.fields.key_info.mbz_bits() != 0 {
            out.push(ReservedViolation {
                offset: 0x048,
                len: 4,
                what: "KEY_INFO bits 31:5",
            });
        }
        out
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

/// The guest POLICY (64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 16: the guest may run with SMT enabled on the host.
    pub const SMT: u64 = 1 << 16;
    /// Bit 17: reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// Bit 18: a migration agent may be associated with the guest.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Bit 19: debugging is allowed (the hypervisor can read and write guest memory).
    pub const DEBUG: u64 = 1 << 19;
    /// Bit 20: the guest may only run on a single socket.
    pub const SINGLE_SOCKET: u64 = 1 << 20;

    /// Minimum ABI minor version (bits 7:0).
    pub fn abi_minor(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Minimum ABI major version (bits 15:8).
    pub fn abi_major(self) -> u8 {
        self.0.to_le_bytes()[1]
    }
    /// SMT allowed (bit 16).
    pub fn smt(self) -> bool {
        self.0 & Self::SMT != 0
    }
    /// The reserved bit 17 (must be 1).
    pub fn reserved_bit17(self) -> u64 {
        (self.0 >> 17) & 1
    }
    /// MIGRATE_MA (bit 18).
    pub fn migrate_ma(self) -> bool {
        self.0 & Self::MIGRATE_MA != 0
    }
    /// DEBUG (bit 19).
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG != 0
    }
    /// SINGLE_SOCKET (bit 20).
    pub fn single_socket(self) -> bool {
        self.0 & Self::SINGLE_SOCKET != 0
    }
    /// Bits 63:26, which must be zero.
    pub fn mbz_bits(self) -> u64 {
        self.0 >> 26
    }
}

/// PLATFORM_INFO (64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    /// Bit 0: SMT is enabled on the platform.
    pub fn smt_enabled(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: TSME is enabled.
    pub fn tsme_enabled(self) -> bool {
        self.0 & (1 << 1) != 0
    }
}

/// KEY_INFO (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct KeyInfo(pub u32);

impl KeyInfo {
    /// Bit 0: AUTHOR_KEY_EN, the ID block carried an author key.
    pub fn author_key_en(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: MASK_CHIP_KEY; when set the report is not signed at all.
    pub fn mask_chip_key(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bits 4:2: which key signed the report.
    pub fn signing_key(self) -> SigningKey {
        match (self.0 >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => SigningKey::Reserved(other as u8),
        }
    }
    /// Bits 31:5, which must be zero.
    pub fn mbz_bits(self) -> u32 {
        self.0 >> 5
    }
}

/// KEY_INFO.SIGNING_KEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SigningKey {
    /// 0: the chip-unique VCEK.
    Vcek,
    /// 1: a VLEK provisioned by a cloud provider.
    Vlek,
    /// 7: the report is not signed.
    None,
    /// Any other (reserved) value.
    Reserved(u8),
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Vcek => f.write_str("VCEK"),
            SigningKey::Vlek => f.write_str("VLEK"),
            SigningKey::None => f.write_str("none (unsigned)"),
            SigningKey::Reserved(v) => write!(f, "reserved value {v}"),
        }
    }
}

/// CPUID family, model and stepping of the platform (version 3 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Cpuid {
    /// CPUID family (e.g. 0x19 Milan/Genoa, 0x1A Turin).
    pub family: u8,
    /// CPUID model.
    pub model: u8,
    /// CPUID stepping.
    pub stepping: u8,
}

impl fmt::Display for Cpuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "family {:#04x} model {:#04x} stepping {}",
            self.family, self.model, self.stepping
        )
    }
}

/// An SNP firmware version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl FirmwareVersion {
    fn from_le([build, minor, major]: [u8; 3]) -> Self {
        Self {
            major,
            minor,
            build,
        }
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// `N` bytes at a constant offset of a whole report. The offsets are constants of this file and
/// the input is a fixed-size array, so this cannot fail on any input (the tests read every field).
fn array<const N: usize>(raw: &[u8; REPORT_SIZE], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[offset..offset + N]);
    out
}

fn u32_at(raw: &[u8; REPORT_SIZE], offset: usize) -> u32 {
    u32::from_le_bytes(array(raw, offset))
}

fn u64_at(raw: &[u8; REPORT_SIZE], offset: usize) -> u64 {
    u64::from_le_bytes(array(raw, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_report() -> Vec<u8> {
        let hex_text = include_str!("../testdata/virtee-sev/report_milan.hex");
        hex::decode(hex_text.trim()).unwrap()
    }

    #[test]
    fn parses_a_real_v2_report() {
        let report = Report::parse(&v2_report()).unwrap();
        let f = report.fields();
        assert_eq!(f.version, 2);
        assert_eq!(f.policy, GuestPolicy(0x30000));
        assert_eq!(f.signature_algo, 1);
        assert_eq!(f.cpuid, None);
        assert_eq!(f.launch_mit_vector, None);
        assert_eq!(f.current_firmware.to_string(), "1.52.4");
        assert_eq!(f.key_info.signing_key(), SigningKey::Vcek);
        assert!(report.nonzero_reserved().is_empty());
    }

    #[test]
    fn parses_a_masked_chip_id_v2_vlek_report() {
        let bytes = include_bytes!("../testdata/openanolis-trustee/test-vlek-report.bin");
        let report = Report::parse(bytes).unwrap();
        assert_eq!(report.fields().chip_id, [0u8; 64]);
        assert_eq!(report.fields().key_info.signing_key(), SigningKey::Vlek);
        assert_eq!(report.fields().vmpl, 1);
    }

    #[test]
    fn parses_a_turin_v5_report() {
        let bytes = include_bytes!("../testdata/openanolis-trustee/turin-report.bin");
        let f = Report::parse(bytes).unwrap().fields().clone();
        assert_eq!(f.version, 5);
        assert_eq!(
            f.cpuid,
            Some(Cpuid {
                family: 0x1A,
                model: 0x02,
                stepping: 1
            })
        );
        assert_eq!(f.launch_mit_vector, Some(0x3f));
        assert_eq!(f.current_mit_vector, Some(0x3f));
    }

    #[test]
    fn refuses_wrong_sizes_and_unknown_versions() {
        let good = v2_report();
        for len in [0, 1, 4, REPORT_SIZE - 1, REPORT_SIZE + 1] {
            let mut b = good.clone();
            b.resize(len, 0);
            assert!(matches!(
                Report::parse(&b),
                Err(ReportError::WrongSize { got, .. }) if got == len
            ));
        }
        for version in [0u32, 1, 4, 6, u32::MAX] {
            let mut b = good.clone();
            b[..4].copy_from_slice(&version.to_le_bytes());
            assert!(matches!(
                Report::parse(&b),
                Err(ReportError::UnsupportedVersion { version: v, .. }) if v == version
            ));
        }
    }

    #[test]
    fn names_each_nonzero_reserved_range() {
        let mut b = v2_report();
        b[0x04D] = 1;
        b[0x190] = 1;
        b[0x400] = 1;
        b[0x08 + 2] &= !0x02; // clear POLICY bit 17
        b[0x48 + 3] = 0x80; // KEY_INFO bit 31
        let report = Report::parse(&b).unwrap();
        let got: Vec<usize> = report.nonzero_reserved().iter().map(|r| r.offset).collect();
        assert_eq!(got, vec![0x04C, 0x188, 0x330, 0x008, 0x048]);
    }
}
