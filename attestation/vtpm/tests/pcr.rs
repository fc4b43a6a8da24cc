//! Event-log replay against the live PCRs of real QEMU/OVMF/swtpm boots of a systemd-stub 252
//! UKI, and offline prediction of PCRs 4, 9 and 11 against the replay (testdata/pcr-qemu).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer_vtpm::eventlog::{event_type, EventLog};
use coffer_vtpm::predict::{
    boot_option_retries_in_log, predict_pcr11, predict_pcr4, predict_pcr9, sha256, FirmwareBoot,
    Stub252Sections, UkiComponents,
};
use coffer_vtpm::tpm::alg;
use coffer_vtpm::{CheckId, PcrPins};
use common::{h32, testdata};

/// Live sha256 PCR values recorded with the logs (testdata/pcr-qemu/PROVENANCE.md).
struct Boot {
    log: &'static str,
    pcr4: &'static str,
    pcr7_prefix: &'static str,
    pcr7_suffix: &'static str,
    secure_boot: bool,
    uki_authenticode: &'static str,
    retries: u32,
}

const PCR9: &str = "9730fad23f6e7d2158be509456230225a328751ae85035240c9ea7eabb60fbb9";
const PCR11: &str = "c88bc096df8f339f079a94a9bdf297e36e9937e080566854f73bcb2c90f55928";
/// Authenticode hashes of the UKI (unsigned / sbsigned) and of its `.linux` (PROVENANCE.md).
const UKI_UNSIGNED: &str = "05b825ccecfbf89a6b62403d668f20e647b5e37c13e3c9b32390795d0ee177e6";
const UKI_SIGNED: &str = "5cbfd9c083a78a83a9e2c9b896ad20fa5827be53c01cc6b02eff8da5a1a0dbda";
const KERNEL: &str = "6b1bf35c3bee9918250f593a6fff889c75c1e239cd2fe9e5bb0cd3de9dcb8e51";
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
/// SHA-256 of the `.linux`, `.osrel` and `.initrd` contents. The files are not in the test data
/// (vmlinuz 6.1.0-56, a 51-byte os-release, a busybox initrd), so these digests are taken from
/// the section-data events of the logs (PROVENANCE.md explains). `.cmdline` is hashed here from
/// the text.
const LINUX_SHA256: &str = "26f2e57c99338feaf71c46fa4babdc7e1a6c115943002d109fdb746667104f5f";
const OSREL_SHA256: &str = "957536999368a4d945f786229c787fe901705619f791cc28faabc083f1f18574";
const INITRD_SHA256: &str = "273baaaaeae19938ebdd8074be3a8e6dbae1779a5e77f89c34393818642d6557";

const BOOTS: [Boot; 3] = [
    Boot {
        log: "pcr-qemu/eventlog-nosb.bin",
        pcr4: "b09d831d1360a999c9dcc8ccf3c7f72f8c253d5485d369a6a5d4b2f18272361f",
        pcr7_prefix: "65caf8dd",
        pcr7_suffix: "3068",
        secure_boot: false,
        uki_authenticode: UKI_UNSIGNED,
        retries: 0,
    },
    Boot {
        log: "pcr-qemu/eventlog-nosb-bootorder-retry.bin",
        pcr4: "1df25c8e80f232bfc4fa864e44351dc7d38eccd10a18c88cb9338b54bdf2f990",
        pcr7_prefix: "65caf8dd",
        pcr7_suffix: "3068",
        secure_boot: false,
        uki_authenticode: UKI_UNSIGNED,
        retries: 1,
    },
    Boot {
        log: "pcr-qemu/eventlog-sb.bin",
        pcr4: "22202ace42aedee1eed47b16bf55ebcc7314db0a7e2abf7ea1d172f72f8ceee6",
        pcr7_prefix: "02a4f904",
        pcr7_suffix: "f704",
        secure_boot: true,
        uki_authenticode: UKI_SIGNED,
        retries: 0,
    },
];

fn components(boot: &Boot) -> UkiComponents {
    UkiComponents {
        uki_authenticode: h32(boot.uki_authenticode),
        kernel_authenticode: h32(KERNEL),
        cmdline: CMDLINE.into(),
        sections: Stub252Sections {
            linux: Some(h32(LINUX_SHA256)),
            osrel: Some(h32(OSREL_SHA256)),
            cmdline: Some(sha256(CMDLINE.as_bytes())),
            initrd: Some(h32(INITRD_SHA256)),
            ..Default::default()
        },
    }
}

#[test]
fn replay_equals_the_live_pcrs_of_all_three_boots() {
    for boot in &BOOTS {
        let log = EventLog::parse(&testdata(boot.log)).unwrap();
        assert_eq!(
            log.algorithms.iter().map(|a| a.alg).collect::<Vec<_>>(),
            vec![alg::SHA1, alg::SHA256, alg::SHA384, alg::SHA512],
            "{}",
            boot.log
        );
        let pcrs = log.replay_sha256().unwrap();
        assert_eq!(pcrs[4], h32(boot.pcr4), "{} PCR 4", boot.log);
        assert_eq!(pcrs[9], h32(PCR9), "{} PCR 9", boot.log);
        assert_eq!(pcrs[11], h32(PCR11), "{} PCR 11", boot.log);
        let pcr7 = hex::encode(pcrs[7]);
        assert!(pcr7.starts_with(boot.pcr7_prefix) && pcr7.ends_with(boot.pcr7_suffix));
        for zero in [8, 12, 13, 14, 15] {
            assert_eq!(pcrs[zero], [0; 32], "{} PCR {zero}", boot.log);
        }
        // The sha1 bank replays too (values from an independent Python replay).
        let sha1 = log.replay_sha1().unwrap();
        assert_eq!(
            hex::encode(sha1[11]),
            "3370f526b381a0fd841e86b40d16ce6138b11374"
        );
        // OVMF logs all four banks of the Spec ID event (the swtpm had only sha1 and sha256
        // active, so no live values exist for the others); they replay to their own sizes.
        assert_eq!(log.replay(alg::SHA384).unwrap()[4].len(), 48);
        assert_eq!(log.replay(alg::SHA512).unwrap()[4].len(), 64);
        assert!(log.replay(alg::SM3_256).is_err());
    }
    let log = EventLog::parse(&testdata("pcr-qemu/eventlog-nosb.bin")).unwrap();
    assert_eq!(
        hex::encode(log.replay_sha1().unwrap()[4]),
        "2b4457dd12f239b57157afbc42793003a6fc8b9b"
    );
}

#[test]
fn prediction_equals_the_replay_for_pcrs_4_9_11() {
    for boot in &BOOTS {
        let log = EventLog::parse(&testdata(boot.log)).unwrap();
        let replay = log.replay_sha256().unwrap();
        // The retry count is read from the log's own EV_EFI_ACTION events: the only thing the
        // prediction takes from the log.
        let retries = boot_option_retries_in_log(&log);
        assert_eq!(retries, boot.retries, "{}", boot.log);
        let firmware = FirmwareBoot {
            secure_boot: boot.secure_boot,
            boot_option_retries: retries,
        };
        // The busybox initrd does not run systemd-pcrphase: no boot phases.
        let predicted = components(boot).predict(&firmware, &[]).unwrap();
        assert_eq!(predicted.pcr4, replay[4], "{} PCR 4", boot.log);
        assert_eq!(predicted.pcr9, replay[9], "{} PCR 9", boot.log);
        assert_eq!(predicted.pcr11, replay[11], "{} PCR 11", boot.log);

        // Pins made from the prediction accept the replayed values.
        let pins = predicted.add_to(PcrPins::new()).unwrap();
        let replayed = (0u8..24).zip(replay).collect();
        assert!(pins.check(&replayed).passed(), "{}", boot.log);
    }
}

#[test]
fn prediction_inputs_that_matter_change_pcr4() {
    let c = components(&BOOTS[0]);
    let uki = c.uki_authenticode;
    let kernel = c.kernel_authenticode;
    let clean = FirmwareBoot::default();
    let retry = FirmwareBoot {
        boot_option_retries: 1,
        ..clean
    };
    let sb = FirmwareBoot {
        secure_boot: true,
        ..clean
    };
    // A retry not declared is a mismatch (and the other way round).
    assert_eq!(predict_pcr4(&uki, &kernel, &clean), h32(BOOTS[0].pcr4));
    assert_eq!(predict_pcr4(&uki, &kernel, &retry), h32(BOOTS[1].pcr4));
    assert_ne!(predict_pcr4(&uki, &kernel, &retry), h32(BOOTS[0].pcr4));
    // Secure Boot on drops the kernel event; the signed UKI has another Authenticode hash.
    assert_eq!(
        predict_pcr4(&h32(UKI_SIGNED), &kernel, &sb),
        h32(BOOTS[2].pcr4)
    );
    assert_ne!(predict_pcr4(&uki, &kernel, &sb), h32(BOOTS[2].pcr4));
    // Sections and command line.
    assert_eq!(
        predict_pcr9(CMDLINE, Some(&h32(INITRD_SHA256))).unwrap(),
        h32(PCR9)
    );
    assert_ne!(
        predict_pcr9("console=ttyS0 quiet", Some(&h32(INITRD_SHA256))).unwrap(),
        h32(PCR9)
    );
    let mut sections = c.sections;
    assert_eq!(predict_pcr11(&sections, &[]), h32(PCR11));
    sections.splash = Some([0; 32]);
    assert_ne!(predict_pcr11(&sections, &[]), h32(PCR11));
}

#[test]
fn a_replayed_pin_mismatch_is_named_per_pcr() {
    // A prediction for Secure Boot off checked against the Secure Boot log: only PCR 4 differs.
    let log = EventLog::parse(&testdata("pcr-qemu/eventlog-sb.bin")).unwrap();
    let replayed = (0u8..24).zip(log.replay_sha256().unwrap()).collect();
    let predicted = components(&BOOTS[0])
        .predict(&FirmwareBoot::default(), &[])
        .unwrap();
    let pins = predicted.add_to(PcrPins::new()).unwrap();
    assert_eq!(pins.check(&replayed).failed_ids(), vec![CheckId::Pcr(4)]);
}

#[test]
fn log_events_are_exposed_for_explanation() {
    let log = EventLog::parse(&testdata("pcr-qemu/eventlog-nosb-bootorder-retry.bin")).unwrap();
    let pcr4: Vec<u32> = log.events_for(4).map(|e| e.event_type).collect();
    assert_eq!(
        pcr4,
        vec![
            event_type::EV_EFI_ACTION,
            event_type::EV_SEPARATOR,
            event_type::EV_EFI_ACTION,
            event_type::EV_EFI_ACTION,
            event_type::EV_EFI_BOOT_SERVICES_APPLICATION,
            event_type::EV_EFI_BOOT_SERVICES_APPLICATION,
        ]
    );
    let pcr11: Vec<_> = log.events_for(11).collect();
    assert_eq!(pcr11.len(), 8);
    assert!(pcr11.iter().all(|e| e.event_type == event_type::EV_IPL));
    assert_eq!(pcr11[1].sha256(), Some(h32(LINUX_SHA256)));
}
