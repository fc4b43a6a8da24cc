//! Authenticode hashing and UKI section extraction, against independent tools: osslsigncode 2.9
//! (Authenticode), systemd-measure 252 (PCR 11), and Debian's own signature on a real kernel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_vtpm::pe::{authenticode_sha256, sections, PeError};
use coffer_vtpm::predict::{
    predict_pcr11, sha256, BootPhase, FirmwareBoot, PredictError, UkiComponents,
};
use common::{h32, testdata};

/// `osslsigncode extract-data -h sha256` / `verify` (testdata/PROVENANCE.md).
const UKI_AUTHENTICODE: &str = "4a1eb940a694a52ca4e2c20e8bd1290954dcd4f3975814243f8ad33471b23d09";
const KERNEL_AUTHENTICODE: &str =
    "d12a64e888e3b2ba01d64cd5263f40791d8878e888c6d6c25977380af23e06ef";

#[test]
fn authenticode_matches_osslsigncode() {
    assert_eq!(
        authenticode_sha256(&testdata("pe/uki.efi")).unwrap(),
        h32(UKI_AUTHENTICODE)
    );
    // The signed copy: the certificate table and its directory entry are excluded, and the
    // unsigned file was 8-byte aligned, so the hash is the same.
    assert_eq!(
        authenticode_sha256(&testdata("pe/uki-signed.efi")).unwrap(),
        h32(UKI_AUTHENTICODE)
    );
    assert_eq!(
        authenticode_sha256(&testdata("pe/kernel.efi")).unwrap(),
        h32(KERNEL_AUTHENTICODE)
    );
}

#[test]
fn authenticode_of_a_real_signed_kernel_is_the_digest_its_signature_carries() {
    // The repository's vendored Debian kernel (image/vendor/kernel/vmlinuz, 8 MB, not copied):
    // its Authenticode signature's SpcIndirectDataContent holds the SHA-256 we must compute.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../image/vendor/kernel/vmlinuz"
    );
    let pe = std::fs::read(path).expect("the vendored kernel is part of the repository");
    let digest = authenticode_sha256(&pe).unwrap();
    // The Certificate Table (data directory 4 of the PE32+ optional header): file offset, size.
    let u32_at = |o: usize| u32::from_le_bytes(pe[o..o + 4].try_into().unwrap()) as usize;
    let entry = u32_at(0x3c) + 24 + 112 + 4 * 8;
    let (offset, size) = (u32_at(entry), u32_at(entry + 4));
    assert!(size > 0, "the vendored kernel is signed");
    let certificates = &pe[offset..offset + size];
    assert!(
        certificates.windows(32).any(|w| w == digest),
        "digest {} not found in the signature",
        hex::encode(digest)
    );
}

#[test]
fn uki_components_come_from_the_uki_bytes() {
    for file in ["pe/uki.efi", "pe/uki-signed.efi"] {
        let c = UkiComponents::from_uki(&testdata(file)).unwrap();
        assert_eq!(c.uki_authenticode, h32(UKI_AUTHENTICODE), "{file}");
        assert_eq!(c.kernel_authenticode, h32(KERNEL_AUTHENTICODE));
        assert_eq!(c.cmdline, "console=ttyS0 panic=-1 quiet");
        // Section digests are of the input files (VirtualSize bytes, not the padded raw data).
        assert_eq!(c.sections.linux, Some(sha256(&testdata("pe/kernel.efi"))));
        assert_eq!(
            c.sections.osrel,
            Some(sha256(b"ID=coffer-test\nVERSION_ID=1\n"))
        );
        assert_eq!(
            c.sections.initrd,
            Some(h32(
                "e50b4faf1a0a152fa291a0767b3d428a11d1b37592f213ac07e8f18ea4eb93a7"
            ))
        );
        assert_eq!(c.sections.splash, None);

        // `systemd-measure calculate --linux=kernel.efi --osrel --cmdline --initrd --phase=...`
        for (phases, want) in [
            (
                &[][..],
                "ead8e385f8345c6c50d3e6ec34d89beb5ff4f9f5f5fc5715e043d05fce36579e",
            ),
            (
                &[BootPhase::EnterInitrd][..],
                "2f6b90735234c1deab04b81f855e256212ef993d3d9de6cc73c3c22925a8beac",
            ),
            (
                &BootPhase::FULL_BOOT[..],
                "1ed5c09c3c57c8278a615a0ab3c8a5c2fd4a8e3530200212f8d41b8d03dc803c",
            ),
        ] {
            assert_eq!(predict_pcr11(&c.sections, phases), h32(want), "{phases:?}");
        }
        let p = c.predict(&FirmwareBoot::default(), &[]).unwrap();
        assert_eq!(
            p.pcr11,
            h32("ead8e385f8345c6c50d3e6ec34d89beb5ff4f9f5f5fc5715e043d05fce36579e")
        );
    }
}

#[test]
fn section_table_and_pe_errors() {
    let uki = testdata("pe/uki.efi");
    let names: Vec<String> = sections(&uki)
        .unwrap()
        .iter()
        .map(|s| String::from_utf8_lossy(s.name()).into_owned())
        .collect();
    // ".eh_frame" (9 bytes) is a COFF string-table reference; names are not resolved through
    // it, and every section systemd-stub measures has a name of at most 8 bytes.
    assert_eq!(
        names,
        [".comment", ".text", "/4", ".osrel", ".cmdline", ".linux", ".initrd"]
    );
    // A section pointing past the end of the file.
    let mut bad = uki.clone();
    let lfanew = u32::from_le_bytes(bad[0x3c..0x40].try_into().unwrap()) as usize;
    let opt_size = u16::from_le_bytes(bad[lfanew + 20..lfanew + 22].try_into().unwrap()) as usize;
    let first_section = lfanew + 24 + opt_size;
    bad[first_section + 20..first_section + 24].copy_from_slice(&0xffff_0000u32.to_le_bytes());
    assert!(matches!(
        authenticode_sha256(&bad),
        Err(PeError::SectionOutOfBounds { index: 0, .. })
    ));
    // A section asking for far more zero-fill than any UKI: refused, not allocated.
    let mut bad = uki.clone();
    let opt = lfanew + 24;
    bad[opt + 56..opt + 60].copy_from_slice(&u32::MAX.to_le_bytes()); // SizeOfImage
    let osrel = first_section + 3 * 40;
    assert_eq!(&bad[osrel..osrel + 6], b".osrel");
    bad[osrel + 8..osrel + 12].copy_from_slice(&0x0fff_ffffu32.to_le_bytes()); // VirtualSize
    assert!(matches!(
        UkiComponents::from_uki(&bad),
        Err(PredictError::Pe {
            what: ".osrel",
            source: PeError::ZeroFill { .. }
        })
    ));
    // A certificate table larger than the file.
    let mut bad = testdata("pe/uki-signed.efi");
    let cert_entry = lfanew + 24 + 112 + 4 * 8;
    bad[cert_entry + 4..cert_entry + 8].copy_from_slice(&0x00ff_0000u32.to_le_bytes());
    assert!(matches!(
        authenticode_sha256(&bad),
        Err(PeError::CertificateTable { .. })
    ));
}
