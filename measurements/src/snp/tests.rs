//! Vector tests: the synthetic vectors generated with sev-snp-measure 0.0.13
//! (`testdata/snp-synthetic/`, see its PROVENANCE.md), the real Debian AmdSev firmware vendored
//! in `image/vendor/firmware/`, and the error cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384};

use super::*;

const SYNTHETIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/snp-synthetic");
const DEBIAN_EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/snp-debian-ovmf/expected.json"
);
const AMDSEV_FIRMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../image/vendor/firmware/OVMF.amdsev.fd"
);
const AMDSEV_SHA256: &str = "3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f";

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn synthetic(name: &str) -> Vec<u8> {
    read(&format!("{SYNTHETIC}/{name}"))
}

fn parse_int(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    #[serde(default)]
    firmware: Option<String>,
    vcpus: u32,
    vcpu_type: Option<String>,
    #[serde(default)]
    vcpu_sig: Option<String>,
    guest_features: String,
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<String>,
    vmm_type: String,
    #[serde(default)]
    snp_ovmf_hash: Option<String>,
    #[serde(default)]
    expected_measurement: Option<String>,
    #[serde(default)]
    expected_error: Option<String>,
}

impl Case {
    fn vmm(&self) -> Vmm {
        let from_type = self
            .vcpu_type
            .as_deref()
            .map(|t| CpuSignature::from_vcpu_type(t).unwrap());
        let from_sig = self
            .vcpu_sig
            .as_deref()
            .map(|s| CpuSignature::from_raw(parse_int(s) as u32));
        if let (Some(a), Some(b)) = (from_type, from_sig) {
            assert_eq!(a, b, "{}: vcpu_type and vcpu_sig disagree", self.name);
        }
        Vmm::from_name(&self.vmm_type, from_type.or(from_sig)).unwrap()
    }

    /// Measures the case with its files read from `dir` and the firmware given.
    fn measure(&self, firmware: &[u8], dir: &str) -> Result<LaunchDigest, MeasureError> {
        let file = |name: &Option<String>| name.as_ref().map(|n| read(&format!("{dir}/{n}")));
        let (kernel, initrd) = (file(&self.kernel), file(&self.initrd));
        let mut launch = SnpLaunch::new(firmware, self.vcpus, self.vmm())
            .guest_features(GuestFeatures::from_bits(parse_int(&self.guest_features)));
        if let Some(kernel) = &kernel {
            launch = launch.direct_boot(kernel, initrd.as_deref(), self.append.as_deref());
        }
        if let Some(seed) = &self.snp_ovmf_hash {
            launch = launch.precomputed_firmware_digest(seed.parse().unwrap());
        }
        launch.measure()
    }
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
    intermediates: serde_json::Value,
    file_sha256: std::collections::BTreeMap<String, String>,
}

fn expected() -> Expected {
    serde_json::from_slice(&synthetic("expected.json")).unwrap()
}

/// sev-snp-measure measures firmware without SEV metadata (pages + VMSAs); QEMU refuses it and
/// so do we. The pieces still agree with the reference: rebuild its digest by hand.
fn reference_digest_without_metadata(case: &Case, firmware: &[u8]) -> LaunchDigest {
    let ovmf = Ovmf::parse(firmware).unwrap();
    let vmm = case.vmm();
    let features = GuestFeatures::from_bits(parse_int(&case.guest_features));
    let mut ctx = GuestContext::new();
    ctx.update_normal_pages((1u64 << 32) - firmware.len() as u64, firmware)
        .unwrap();
    for i in 0..case.vcpus {
        let eip = if i == 0 {
            vmsa::BSP_EIP
        } else {
            ovmf.sev_es_reset_eip().unwrap()
        };
        ctx.update_vmsa_page(&vmsa::vmsa_page(eip, features, &vmm));
    }
    ctx.finish()
}

#[test]
fn every_synthetic_vector_reproduces() {
    let expected = expected();
    assert_eq!(expected.cases.len(), 27);
    let (mut digests, mut errors, mut refused) = (0, 0, 0);
    for case in &expected.cases {
        let firmware = synthetic(case.firmware.as_deref().unwrap());
        let got = case.measure(&firmware, SYNTHETIC);
        match (&case.expected_measurement, &case.expected_error) {
            (Some(want), None) if case.name.starts_with("nometa") => {
                assert_eq!(got, Err(MeasureError::NoSevMetadata), "{}", case.name);
                assert_eq!(
                    reference_digest_without_metadata(case, &firmware).to_hex(),
                    *want,
                    "{}",
                    case.name
                );
                refused += 1;
            }
            (Some(want), None) => {
                assert_eq!(got.unwrap().to_hex(), *want, "{}", case.name);
                digests += 1;
            }
            (None, Some(message)) => {
                let err = got.unwrap_err();
                assert_eq!(err, MeasureError::NoKernelHashesSection, "{}", case.name);
                assert_eq!(err.to_string(), *message, "the reference's words");
                errors += 1;
            }
            _ => panic!("{}: neither a measurement nor an error", case.name),
        }
    }
    assert_eq!((digests, errors, refused), (24, 1, 2));
}

#[test]
fn the_test_files_are_the_ones_the_vectors_were_made_from() {
    for (name, sha) in expected().file_sha256 {
        assert_eq!(hex::encode(Sha256::digest(synthetic(&name))), sha, "{name}");
    }
}

#[test]
fn intermediates_match() {
    let im = expected().intermediates;
    let s = |k: &str| im[k].as_str().unwrap().to_owned();
    let kernel = synthetic("kernel.bin");
    let initrd = synthetic("initrd.bin");
    let h = SevHashes::new(&kernel, Some(&initrd), Some("console=ttyS0 root=/dev/vda"));
    assert_eq!(hex::encode(h.kernel()), s("kernel_sha256"));
    assert_eq!(hex::encode(h.initrd()), s("initrd_sha256"));
    assert_eq!(hex::encode(h.cmdline()), s("cmdline_sha256"));
    assert_eq!(hex::encode(h.table()), s("hash_table_hex"));
    assert_eq!(im["hash_table_len"], 176);
    let none = SevHashes::new(&kernel, None, None);
    assert_eq!(hex::encode(none.initrd()), s("empty_initrd_sha256"));
    assert_eq!(hex::encode(none.cmdline()), s("no_append_cmdline_sha256"));

    let fw = synthetic("fw_kernel_hashes.bin");
    let ovmf = Ovmf::parse(&fw).unwrap();
    assert_eq!(
        u64::from(ovmf.hash_table_area().unwrap().base),
        parse_int(&s("hash_table_gpa"))
    );
    assert_eq!(
        u64::from(ovmf.sev_es_reset_eip().unwrap()),
        parse_int(&s("sev_es_reset_eip"))
    );
    assert_eq!(firmware_gpa(&fw).unwrap(), parse_int(&s("firmware_gpa")));
    assert_eq!(firmware_digest(&fw).unwrap().to_hex(), s("snp_ovmf_hash"));

    let vmm = Vmm::Qemu(CpuSignature::from_vcpu_type("EPYC-v4").unwrap());
    let f = GuestFeatures::default();
    let sha384 = |p: &[u8]| hex::encode(Sha384::digest(p));
    assert_eq!(
        sha384(&vmsa::vmsa_page(vmsa::BSP_EIP, f, &vmm)[..]),
        s("vmsa_bsp_sha384")
    );
    assert_eq!(
        sha384(&vmsa::vmsa_page(0x80b004, f, &vmm)[..]),
        s("vmsa_ap_sha384")
    );
}

#[test]
fn the_page_info_trace_matches_step_by_step() {
    #[derive(Deserialize)]
    struct Step {
        page_type: u8,
        gpa: String,
        contents: String,
        ld_after: String,
    }
    #[derive(Deserialize)]
    struct Trace {
        case: String,
        #[serde(rename = "final")]
        final_digest: String,
        steps: Vec<Step>,
    }
    let trace: Trace = serde_json::from_slice(&synthetic("trace_kh_full_EPYC-v4_2.json")).unwrap();
    assert_eq!(trace.case, "kh_full_EPYC-v4_2");
    let fw = synthetic("fw_kernel_hashes.bin");
    let (kernel, initrd) = (synthetic("kernel.bin"), synthetic("initrd.bin"));
    let vmm = Vmm::Qemu(CpuSignature::from_vcpu_type("EPYC-v4").unwrap());
    let (digest, steps) = SnpLaunch::new(&fw, 2, vmm)
        .direct_boot(&kernel, Some(&initrd), Some("console=ttyS0 root=/dev/vda"))
        .measure_traced()
        .unwrap();
    assert_eq!(digest.to_hex(), trace.final_digest);
    assert_eq!(steps.len(), trace.steps.len());
    assert_eq!(steps.len(), 113);
    for (i, (got, want)) in steps.iter().zip(&trace.steps).enumerate() {
        assert_eq!(got.page_type as u8, want.page_type, "step {i}");
        assert_eq!(got.gpa, parse_int(&want.gpa), "step {i}");
        assert_eq!(hex::encode(got.contents), want.contents, "step {i}");
        assert_eq!(got.digest_after.to_hex(), want.ld_after, "step {i}");
    }
}

#[test]
fn the_vendored_debian_amdsev_firmware_reproduces() {
    #[derive(Deserialize)]
    struct Debian {
        firmware: serde_json::Value,
        cases: Vec<Case>,
    }
    let fw = read(AMDSEV_FIRMWARE);
    assert_eq!(hex::encode(Sha256::digest(&fw)), AMDSEV_SHA256);
    let debian: Debian = serde_json::from_slice(&read(DEBIAN_EXPECTED)).unwrap();
    assert_eq!(
        debian.firmware["sha256"].as_str().unwrap(),
        AMDSEV_SHA256,
        "expected.json describes another firmware"
    );
    let fw_digest = firmware_digest(&fw).unwrap();
    assert_eq!(
        fw_digest.to_hex(),
        debian.firmware["snp_ovmf_hash"].as_str().unwrap()
    );
    let ovmf = Ovmf::parse(&fw).unwrap();
    assert_eq!(ovmf.metadata().unwrap().len(), 7);
    assert_eq!(ovmf.sev_es_reset_eip(), Some(0x80b004));
    assert!(debian.cases.len() >= 7);
    for (i, case) in debian.cases.iter().enumerate() {
        let want = case.expected_measurement.as_deref().unwrap();
        // Hashing 4 MiB takes ~0.4 s in a debug build: hash the firmware in full for the first
        // case, and start the others from its digest (checked above).
        let seeded;
        let case = if i == 0 {
            case
        } else {
            seeded = Case {
                snp_ovmf_hash: Some(fw_digest.to_hex()),
                ..case.clone()
            };
            &seeded
        };
        assert_eq!(
            case.measure(&fw, SYNTHETIC).unwrap().to_hex(),
            want,
            "{}",
            case.name
        );
    }
}

fn v4() -> Vmm {
    Vmm::Qemu(CpuSignature::from_vcpu_type("EPYC-v4").unwrap())
}

#[test]
fn a_kernel_on_firmware_without_kernel_hashes_is_refused() {
    let fw = synthetic("fw_no_kernel_hashes.bin");
    let err = SnpLaunch::new(&fw, 1, v4())
        .direct_boot(b"kernel", None, None)
        .measure()
        .unwrap_err();
    assert_eq!(err, MeasureError::NoKernelHashesSection);
    // Without a kernel the same firmware measures.
    assert!(SnpLaunch::new(&fw, 1, v4()).measure().is_ok());
}

#[test]
fn firmware_without_sev_metadata_is_refused() {
    let fw = synthetic("fw_no_metadata.bin");
    assert_eq!(
        SnpLaunch::new(&fw, 1, v4()).measure(),
        Err(MeasureError::NoSevMetadata)
    );
}

#[test]
fn truncated_firmware_is_refused_with_a_named_error() {
    let fw = synthetic("fw_kernel_hashes.bin");
    let measure = |bytes: &[u8]| SnpLaunch::new(bytes, 1, v4()).measure();
    // Cut at the end: the footer table is gone.
    assert_eq!(
        measure(&fw[..fw.len() - PAGE_SIZE]),
        Err(MeasureError::NoFooterTable)
    );
    assert_eq!(
        measure(&fw[..fw.len() - 1]),
        Err(MeasureError::NoFooterTable)
    );
    // Cut at the start: the table survives, the image is no longer whole pages.
    assert_eq!(
        measure(&fw[100..]),
        Err(MeasureError::FirmwareNotPageMultiple {
            len: fw.len() - 100
        })
    );
    // Cut down to the last KiB: the metadata offset (0x800 from the end) points before it.
    assert!(matches!(
        measure(&fw[fw.len() - 1024..]),
        Err(MeasureError::Ovmf(OvmfError::MetadataOffset { .. }))
    ));
    assert!(matches!(
        measure(&fw[fw.len() - 40..]),
        Err(MeasureError::Ovmf(OvmfError::TooSmall { len: 40, .. }))
    ));
    assert!(matches!(
        measure(&[]),
        Err(MeasureError::Ovmf(OvmfError::TooSmall { len: 0, .. }))
    ));
}

#[test]
fn every_truncation_gives_an_error_not_a_panic() {
    let fw = synthetic("fw_kernel_hashes.bin");
    for cut in (1..fw.len()).step_by(509) {
        assert!(SnpLaunch::new(&fw[..cut], 2, v4()).measure().is_err());
        assert!(SnpLaunch::new(&fw[cut..], 2, v4()).measure().is_err());
    }
}

#[test]
fn vcpu_counts_outside_qemus_range_are_refused() {
    let fw = synthetic("fw_kernel_hashes.bin");
    for vcpus in [0, MAX_VCPUS + 1] {
        assert_eq!(
            SnpLaunch::new(&fw, vcpus, v4()).measure(),
            Err(MeasureError::VcpuCount {
                vcpus,
                max: MAX_VCPUS
            })
        );
    }
}

/// Rewrites one field of the synthetic firmware's footer-table entry for `guid`.
fn patch_entry(fw: &mut [u8], guid: ovmf::Guid, data_offset: usize, value: u32) {
    let g = guid.to_bytes_le();
    let at = fw.windows(16).rposition(|w| w == g).unwrap();
    // Entry layout: data || u16 size || guid.
    let size = usize::from(u16::from_le_bytes([fw[at - 2], fw[at - 1]]));
    let data = at - 2 - (size - 18);
    fw[data + data_offset..data + data_offset + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn qemus_hash_table_area_checks_apply() {
    let kernel = b"kernel";
    let measure = |fw: &[u8]| {
        SnpLaunch::new(fw, 1, v4())
            .direct_boot(kernel, None, None)
            .measure()
    };
    let mut fw = synthetic("fw_kernel_hashes.bin");
    patch_entry(&mut fw, ovmf::SEV_HASH_TABLE_RV_GUID, 0, 0);
    assert_eq!(measure(&fw), Err(MeasureError::NoHashTableArea));

    let mut fw = synthetic("fw_kernel_hashes.bin");
    patch_entry(&mut fw, ovmf::SEV_HASH_TABLE_RV_GUID, 4, 100);
    assert!(matches!(
        measure(&fw),
        Err(MeasureError::HashTableArea { size: 100, .. })
    ));

    let mut fw = synthetic("fw_kernel_hashes.bin");
    patch_entry(&mut fw, ovmf::SEV_HASH_TABLE_RV_GUID, 0, 0x810f80);
    assert!(matches!(
        measure(&fw),
        Err(MeasureError::HashTableArea { base: 0x810f80, .. })
    ));
}

#[test]
fn a_missing_or_zero_ap_reset_address_is_refused() {
    let mut fw = synthetic("fw_kernel_hashes.bin");
    patch_entry(&mut fw, ovmf::SEV_ES_RESET_BLOCK_GUID, 0, 0);
    assert_eq!(
        SnpLaunch::new(&fw, 2, v4()).measure(),
        Err(MeasureError::ZeroApResetAddress { vcpus: 2 })
    );
    // One vCPU needs no AP address, as in the reference.
    assert!(SnpLaunch::new(&fw, 1, v4()).measure().is_ok());
}

#[test]
fn misaligned_sections_are_refused() {
    let mut fw = synthetic("fw_kernel_hashes.bin");
    let asev = fw.windows(4).rposition(|w| w == b"ASEV").unwrap();
    // Section 0 (SNP_SEC_MEM 0x800000+0x9000): make its size half a page larger.
    fw[asev + 16 + 4..asev + 16 + 8].copy_from_slice(&0x9800u32.to_le_bytes());
    assert!(matches!(
        SnpLaunch::new(&fw, 1, v4()).measure(),
        Err(MeasureError::SectionLayout { index: 0, .. })
    ));
}

#[test]
fn the_precomputed_firmware_digest_gives_the_same_result() {
    let fw = synthetic("fw_kernel_hashes.bin");
    let full = SnpLaunch::new(&fw, 4, v4())
        .direct_boot(b"k", Some(b"i"), Some("c"))
        .measure()
        .unwrap();
    let seeded = SnpLaunch::new(&fw, 4, v4())
        .direct_boot(b"k", Some(b"i"), Some("c"))
        .precomputed_firmware_digest(firmware_digest(&fw).unwrap())
        .measure()
        .unwrap();
    assert_eq!(full, seeded);
}

#[test]
fn every_input_changes_the_digest() {
    let fw = synthetic("fw_kernel_hashes.bin");
    let base = || {
        SnpLaunch::new(&fw, 2, v4()).direct_boot(b"kernel", Some(b"initrd"), Some("console=ttyS0"))
    };
    let milan = Vmm::Qemu(CpuSignature::from_vcpu_type("EPYC-Milan").unwrap());
    let variants = [
        base().measure(),
        SnpLaunch::new(&fw, 3, v4())
            .direct_boot(b"kernel", Some(b"initrd"), Some("console=ttyS0"))
            .measure(),
        SnpLaunch::new(&fw, 2, milan)
            .direct_boot(b"kernel", Some(b"initrd"), Some("console=ttyS0"))
            .measure(),
        base()
            .guest_features(GuestFeatures::from_bits(0x21))
            .measure(),
        base()
            .direct_boot(b"kernel2", Some(b"initrd"), Some("console=ttyS0"))
            .measure(),
        base()
            .direct_boot(b"kernel", None, Some("console=ttyS0"))
            .measure(),
        base()
            .direct_boot(b"kernel", Some(b"initrd"), Some("console=ttyS1"))
            .measure(),
        SnpLaunch::new(&fw, 2, v4()).measure(),
    ];
    let digests: std::collections::HashSet<_> = variants.into_iter().map(|d| d.unwrap()).collect();
    assert_eq!(digests.len(), 8);
}
