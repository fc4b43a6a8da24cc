//! Cross-check against the reference implementation: the Python `sev-snp-measure` CLI (PyPI
//! 0.0.13) and our CLI glue (`cli/src/measure.rs`, compiled in here) get the same argv, and
//! must print the same line, or both fail.
//!
//! The reference must be installed: `pip install sev-snp-measure==0.0.13`. Without it these
//! tests fail rather than pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../cli/src/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::Parser;

const REFERENCE: &str = "sev-snp-measure";
const REFERENCE_VERSION: &str = "0.0.13";
const INSTALL: &str = "pip install sev-snp-measure==0.0.13";

#[derive(Parser)]
#[command(name = "measure")]
struct Cli {
    #[command(flatten)]
    args: measure::MeasureSnpArgs,
}

/// The reference CLI on PATH, checked to be the pinned version.
fn reference() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| {
        let path = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(REFERENCE))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("`{REFERENCE}` is not on PATH: run `{INSTALL}` (CI installs it)")
            });
        let out = Command::new(&path).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            version.trim(),
            format!("{REFERENCE} {REFERENCE_VERSION}"),
            "wrong reference version at {}: run `{INSTALL}`",
            path.display()
        );
        path
    })
}

/// What the reference prints: its stdout line, or its stderr on failure.
fn python(argv: &[String]) -> Result<String, String> {
    let out = Command::new(reference())
        .args(argv)
        .env("PYTHONUTF8", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "reference printed {stdout:?} for {argv:?}");
        Ok(lines[0].to_owned())
    } else {
        Err(stderr)
    }
}

/// What our glue returns for the same argv.
fn ours(argv: &[String]) -> Result<String, String> {
    let cli =
        Cli::try_parse_from(std::iter::once("measure".to_owned()).chain(argv.iter().cloned()))
            .map_err(|e| e.to_string())?;
    measure::run(&cli.args).map_err(|e| format!("{e:#}"))
}

fn data(name: &str) -> String {
    format!(
        "{}/testdata/snp-synthetic/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn amdsev() -> String {
    let path = format!(
        "{}/../image/vendor/firmware/OVMF.amdsev.fd",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(Path::new(&path).is_file(), "{path} is missing");
    path
}

/// An argv: `--mode snp --ovmf <fw> --vcpus <n>` plus `extra`.
fn argv(fw: &str, vcpus: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--mode", "snp", "--ovmf", fw, "--vcpus", &vcpus.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `--kernel`, `--initrd` and `--append` with the synthetic blobs.
fn full(append: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        data("kernel.bin"),
        "--initrd".into(),
        data("initrd.bin"),
        "--append".into(),
        append.into(),
    ]
}

fn with(mut base: Vec<String>, more: Vec<String>) -> Vec<String> {
    base.extend(more);
    base
}

/// Runs every argv through both and reports all differences at once.
fn assert_same_output(cases: &[Vec<String>]) {
    let mut failures = Vec::new();
    for argv in cases {
        let (want, got) = (python(argv), ours(argv));
        match (&want, &got) {
            (Ok(w), Ok(g)) if w == g => {}
            _ => failures.push(format!(
                "argv {argv:?}\n  reference: {want:?}\n  ours:      {got:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const CMDLINE: &str = "console=ttyS0 root=/dev/vda";

/// The vendored Debian AmdSev firmware (4 MiB): one case per vCPU count, vCPU naming and VMM.
#[test]
fn the_real_amdsev_firmware_measures_as_the_reference() {
    let fw = amdsev();
    let family = [
        "--vcpu-family",
        "26",
        "--vcpu-model",
        "2",
        "--vcpu-stepping",
        "1",
    ];
    let cases = vec![
        with(argv(&fw, 1, &["--vcpu-type", "EPYC-v4"]), full(CMDLINE)),
        with(argv(&fw, 2, &["--vcpu-type", "EPYC-Milan"]), full(CMDLINE)),
        with(
            argv(&fw, 4, &["--vcpu-type", "EPYC-Genoa", "--guest-features", "0x21"]),
            full(CMDLINE),
        ),
        with(argv(&fw, 8, &["--vcpu-type", "EPYC-Rome"]), full(CMDLINE)),
        with(argv(&fw, 64, &["--vcpu-type", "EPYC-Turin"]), full(CMDLINE)),
        argv(&fw, 1, &["--vcpu-type", "EPYC"]),
        with(argv(&fw, 2, &["--vcpu-sig", "0xa00f11"]), full(CMDLINE)),
        with(argv(&fw, 4, &family), full(CMDLINE)),
        with(argv(&fw, 1, &["--vmm-type", "ec2"]), full(CMDLINE)),
        with(argv(&fw, 2, &["--vmm-type", "gce"]), full(CMDLINE)),
        with(
            argv(
                &fw,
                2,
                &["--vcpu-type", "EPYC-Genoa", "--output-format", "base64"],
            ),
            full(CMDLINE),
        ),
        // Debian's OVMF digest (snp:ovmf-hash), as in testdata/snp-debian-ovmf/expected.json.
        with(
            argv(
                &fw,
                1,
                &[
                    "--vcpu-type",
                    "EPYC-v4",
                    "--snp-ovmf-hash",
                    "9d0dd8be18c86e3fe3bf0038ed75ebf5340bee69fd2632c8ff9409964575960ae1f7e84be387d2e3467bc3508d1e4806",
                ],
            ),
            full(CMDLINE),
        ),
    ];
    assert_same_output(&cases);
}

/// The synthetic firmwares (256 KiB, cheap to hash in a debug build): the remaining vCPU types,
/// command lines, feature spellings, VMMs and output options.
#[test]
fn the_synthetic_firmwares_measure_as_the_reference() {
    let kh = data("fw_kernel_hashes.bin");
    let nokh = data("fw_no_kernel_hashes.bin");
    let long: String = (0..120)
        .map(|i| format!("opt{i}=value{i} "))
        .collect::<String>()
        .trim_end()
        .to_owned();
    let unicode = "console=ttyS0 coffer.name=café-日本語-✓ quiet";
    let kernel_only = vec!["--kernel".to_owned(), data("kernel.bin")];
    let kernel_initrd = vec![
        "--kernel".to_owned(),
        data("kernel.bin"),
        "--initrd".to_owned(),
        data("initrd.bin"),
    ];
    let cases = vec![
        with(argv(&kh, 1, &["--vcpu-type", "EPYC-v4"]), full(CMDLINE)),
        with(
            argv(&kh, 8, &["--vcpu-type", "EPYC-Milan-v1"]),
            full(CMDLINE),
        ),
        with(argv(&kh, 2, &["--vcpu-type", "EPYC-IBPB"]), full(CMDLINE)),
        with(
            argv(&kh, 1, &["--vcpu-type", "EPYC-Milan-v2"]),
            full(CMDLINE),
        ),
        with(
            argv(&kh, 4, &["--vcpu-type", "EPYC-Genoa-v1"]),
            full(CMDLINE),
        ),
        argv(
            &kh,
            4,
            &["--vcpu-type", "EPYC-Rome-v3", "--guest-features", "0x21"],
        ),
        with(
            argv(
                &kh,
                64,
                &["--vcpu-type", "EPYC-Genoa", "--guest-features", "0x21"],
            ),
            full(CMDLINE),
        ),
        // Python's int(x, 0): decimal 33 is 0x21; 8392466 is 0x800F12.
        with(
            argv(
                &kh,
                2,
                &["--vcpu-type", "EPYC-v4", "--guest-features", "33"],
            ),
            full(CMDLINE),
        ),
        with(argv(&kh, 2, &["--vcpu-sig", "8392466"]), kernel_only),
        argv(&kh, 2, &["--vcpu-sig", "0x00b00f21"]),
        with(argv(&kh, 1, &["--vcpu-type", "EPYC-v4"]), full("")),
        with(argv(&kh, 2, &["--vcpu-type", "EPYC-Milan"]), full(&long)),
        with(argv(&kh, 2, &["--vcpu-type", "EPYC-Milan"]), full(unicode)),
        with(argv(&kh, 1, &["--vcpu-type", "EPYC-v4"]), kernel_initrd),
        with(
            argv(&kh, 1, &["--vcpu-type", "EPYC-v4", "-v"]),
            full(CMDLINE),
        ),
        with(argv(&kh, 4, &["--vmm-type", "ec2"]), full("")),
        with(
            argv(&kh, 8, &["--vmm-type", "ec2", "--guest-features", "0x21"]),
            full(unicode),
        ),
        with(
            argv(&kh, 4, &["--vmm-type", "gce", "--output-format", "base64"]),
            full(CMDLINE),
        ),
        argv(&kh, 64, &["--vmm-type", "gce"]),
        argv(&nokh, 4, &["--vcpu-type", "EPYC-Milan"]),
        argv(&nokh, 1, &["--vmm-type", "ec2"]),
        argv(&nokh, 2, &["--vmm-type", "gce", "--guest-features", "0x21"]),
    ];
    assert_same_output(&cases);
}

#[test]
fn both_refuse_the_same_bad_inputs() {
    let kh = data("fw_kernel_hashes.bin");
    let nokh = data("fw_no_kernel_hashes.bin");
    let cases = vec![
        // The firmware has no SNP_KERNEL_HASHES section: the reference's own words come back.
        (
            with(argv(&nokh, 1, &["--vcpu-type", "EPYC-v4"]), full(CMDLINE)),
            Some("Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"),
        ),
        (
            argv(&kh, 1, &[]),
            Some("missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode 'snp'"),
        ),
        (argv(&kh, 1, &["--vcpu-type", "EPYC-X"]), None),
        (
            argv(&kh, 1, &["--vcpu-type", "EPYC", "--vmm-type", "kvm"]),
            None,
        ),
        (
            argv(&kh, 1, &["--vcpu-type", "EPYC", "--append", "x"]),
            None,
        ),
        (
            argv(&kh, 1, &["--vcpu-type", "EPYC", "--guest-features", "zz"]),
            None,
        ),
        // A kernel file as firmware: no OVMF footer (the reference fails on an assertion).
        (argv(&data("kernel.bin"), 1, &["--vcpu-type", "EPYC"]), None),
    ];
    let mut failures = Vec::new();
    for (argv, message) in &cases {
        let (want, got) = (python(argv), ours(argv));
        let ok = match (&want, &got, message) {
            (Err(w), Err(g), Some(m)) => w.contains(m) && g.contains(m),
            (Err(_), Err(_), None) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "argv {argv:?}\n  reference: {want:?}\n  ours:      {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The one deliberate difference: firmware without SEV metadata. The reference measures it;
/// QEMU cannot launch it, so we refuse it.
#[test]
fn firmware_without_sev_metadata_is_refused_where_the_reference_measures_it() {
    let argv = argv(&data("fw_no_metadata.bin"), 1, &["--vcpu-type", "EPYC-v4"]);
    assert!(python(&argv).is_ok());
    let err = ours(&argv).unwrap_err();
    assert!(err.contains("no SEV metadata"), "{err}");
}

#[test]
fn our_errors_name_the_missing_file() {
    let argv = argv("/nonexistent/OVMF.fd", 1, &["--vcpu-type", "EPYC-v4"]);
    let err = ours(&argv).unwrap_err();
    assert!(err.contains("/nonexistent/OVMF.fd"), "{err}");
    let err = ours(&argv_mode("sev")).unwrap_err();
    assert!(err.contains("SEV-SNP launches only"), "{err}");
}

fn argv_mode(mode: &str) -> Vec<String> {
    let mut v = argv(
        &data("fw_kernel_hashes.bin"),
        1,
        &["--vcpu-type", "EPYC-v4"],
    );
    v[1] = mode.to_owned();
    v
}
