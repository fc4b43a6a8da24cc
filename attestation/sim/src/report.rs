//! Signed SEV-SNP attestation reports in the real format.
//!
//! Layout: SNP firmware ABI (AMD #56860), ATTESTATION_REPORT, **version 3** with a Genoa CPUID
//! (family 0x19, model 0x11, stepping 1) and Genoa's TCB_VERSION layout. Signed with the VCEK's
//! ECDSA P-384 key over SHA-384 of bytes 0x000..0x2A0; R at 0x2A0 and S at 0x2E8, each 72 bytes
//! little-endian (48 significant, zero-padded), the rest of the signature area zero.

use p384::ecdsa::signature::Signer;
use p384::ecdsa::Signature;

use crate::keys::SimRoot;

/// Size of an attestation report in bytes.
pub const REPORT_SIZE: usize = 0x4A0;
/// Bytes 0x000..SIGNED_LEN are signed.
pub const SIGNED_LEN: usize = 0x2A0;

/// What the guest and host choose in a report; the platform's parts (chip ID, TCBs, firmware
/// version, CPUID) come from the [`SimRoot`]. `Default`: zeros, debug off, no migration agent,
/// SMT allowed and enabled, VMPL 0, no ID block, GUEST_SVN 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFields {
    /// MEASUREMENT (0x090): the launch digest.
    pub measurement: [u8; 48],
    /// HOST_DATA (0x0C0).
    pub host_data: [u8; 32],
    /// REPORT_DATA (0x050), the guest's (a nonce or a key binding).
    pub report_data: [u8; 64],
    /// Guest POLICY (0x008). Default 0x30000: SMT allowed (bit 16), reserved bit 17 set, debug
    /// (bit 19) and migration agent (bit 18) off.
    pub policy: u64,
    /// VMPL (0x030) of the requester.
    pub vmpl: u32,
    /// PLATFORM_INFO (0x040). Default 1: SMT enabled.
    pub platform_info: u64,
    /// GUEST_SVN (0x004), from the ID block.
    pub guest_svn: u32,
    /// FAMILY_ID (0x010), from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID (0x020), from the ID block.
    pub image_id: [u8; 16],
    /// ID_KEY_DIGEST (0x0E0).
    pub id_key_digest: [u8; 48],
    /// REPORT_ID (0x140).
    pub report_id: [u8; 32],
}

impl Default for ReportFields {
    fn default() -> Self {
        Self {
            measurement: [0; 48],
            host_data: [0; 32],
            report_data: [0; 64],
            policy: Self::DEFAULT_POLICY,
            vmpl: 0,
            platform_info: 1,
            guest_svn: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            id_key_digest: [0; 48],
            report_id: [0; 32],
        }
    }
}

impl ReportFields {
    /// SMT allowed, reserved bit 17, nothing else.
    pub const DEFAULT_POLICY: u64 = 0x3_0000;
    /// POLICY bit 19: debugging allowed.
    pub const POLICY_DEBUG: u64 = 1 << 19;
}

/// SNP firmware 1.55, build 21 (the version that introduced report version 3).
const FIRMWARE: [u8; 4] = [21, 55, 1, 0];
/// Genoa CPUID family, model, stepping.
const CPUID: [u8; 3] = [0x19, 0x11, 0x01];

impl SimRoot {
    /// A signed version 3 attestation report carrying `fields`, this root's chip ID, and its TCB
    /// as CURRENT, REPORTED, COMMITTED and LAUNCH TCB (so they match the VCEK). SIGNING_KEY is
    /// the VCEK, the chip key is not masked, there is no author key, REPORT_ID_MA is all 0xFF
    /// (no migration agent).
    pub fn sign_report(&self, fields: &ReportFields) -> [u8; REPORT_SIZE] {
        let mut r = [0u8; REPORT_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            r[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let tcb = self.tcb().raw();
        put(0x000, &3u32.to_le_bytes());
        put(0x004, &fields.guest_svn.to_le_bytes());
        put(0x008, &fields.policy.to_le_bytes());
        put(0x010, &fields.family_id);
        put(0x020, &fields.image_id);
        put(0x030, &fields.vmpl.to_le_bytes());
        put(0x034, &1u32.to_le_bytes()); // SIGNATURE_ALGO: ECDSA P-384 with SHA-384
        put(0x038, &tcb); // CURRENT_TCB
        put(0x040, &fields.platform_info.to_le_bytes());
        put(0x048, &0u32.to_le_bytes()); // KEY_INFO: VCEK, chip key not masked, no author key
        put(0x050, &fields.report_data);
        put(0x090, &fields.measurement);
        put(0x0C0, &fields.host_data);
        put(0x0E0, &fields.id_key_digest);
        put(0x140, &fields.report_id);
        put(0x160, &[0xFF; 32]); // REPORT_ID_MA
        put(0x180, &tcb); // REPORTED_TCB
        put(0x188, &CPUID);
        put(0x1A0, &self.chip_id());
        put(0x1E0, &tcb); // COMMITTED_TCB
        put(0x1E8, &FIRMWARE); // CURRENT_BUILD/MINOR/MAJOR
        put(0x1EC, &FIRMWARE); // COMMITTED_BUILD/MINOR/MAJOR
        put(0x1F0, &tcb); // LAUNCH_TCB
        let signature: Signature = self.vcek_key().sign(&r[..SIGNED_LEN]);
        let (sig_r, sig_s) = signature.split_bytes();
        let mut le = |offset: usize, big_endian: &[u8]| {
            for (i, b) in big_endian.iter().rev().enumerate() {
                r[offset + i] = *b;
            }
        };
        le(0x2A0, &sig_r);
        le(0x2E8, &sig_s);
        r
    }
}
