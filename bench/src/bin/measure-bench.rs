//! `coffer measure snp` against the reference `sev-snp-measure` on the same inputs (our kms
//! image: AmdSev OVMF, Debian kernel, our initramfs and command line), whole-process timings,
//! in one run. Prints the ratio of medians. Needs `sev-snp-measure` on PATH (`make bench` puts
//! it there).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_bench::summarize;
use coffer_image::{BuildRequest, Progress};
use coffer_types::Role;

const RUNS: usize = 15;

fn main() -> anyhow::Result<()> {
    let checkout = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&checkout)
        .args(["build", "--release", "--locked", "-p", "coffer-cli"])
        .status()?;
    if !status.success() {
        bail!("building coffer (release) failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout.join("target"));
    let coffer = target.join("release/coffer");
    let work = tempfile::tempdir()?;
    let image = work.path().join("kms");
    coffer_image::build_image(
        &BuildRequest {
            checkout,
            role: Role::Kms,
            spec: None,
            out_dir: image.clone(),
        },
        &Progress::silent(),
    )?;
    let args = measure_args(&image)?;
    let ours = time(Command::new(&coffer).args(["measure", "snp"]).args(&args))?;
    let reference = time(Command::new("sev-snp-measure").args(&args))?;
    if ours.1 != reference.1 {
        bail!(
            "the outputs differ: ours {:?}, reference {:?}",
            ours.1,
            reference.1
        );
    }
    let (Some(o), Some(r)) = (summarize(&ours.0), summarize(&reference.0)) else {
        bail!("no samples");
    };
    println!("## `coffer measure snp` vs `sev-snp-measure` (kms image, 4 vCPUs EPYC-Milan; {RUNS} runs each after a warm-up)");
    println!();
    println!("| tool | median | min | max |");
    println!("|---|---|---|---|");
    for (name, s) in [
        ("sev-snp-measure 0.0.13 (Python)", r),
        ("coffer measure snp", o),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(s.median),
            ms(s.min),
            ms(s.max)
        );
    }
    println!();
    println!(
        "Speed-up (median): {:.1}x (target >= 10x). Both print {}.",
        r.median.as_secs_f64() / o.median.as_secs_f64(),
        ours.1.trim()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn measure_args(image: &Path) -> anyhow::Result<Vec<String>> {
    let file = |name: &str| image.join(name).display().to_string();
    let cmdline = std::fs::read_to_string(image.join("cmdline")).context("cmdline")?;
    Ok([
        "--mode",
        "snp",
        "--vcpus",
        "4",
        "--vcpu-type",
        "EPYC-Milan",
        "--ovmf",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([file("firmware.fd")])
    .chain([
        "--kernel".into(),
        file("vmlinuz"),
        "--initrd".into(),
        file("initramfs.cpio.gz"),
    ])
    .chain(["--append".into(), cmdline])
    .collect())
}

/// Runs the command once to warm up, then RUNS times; returns the durations and the output.
fn time(command: &mut Command) -> anyhow::Result<(Vec<Duration>, String)> {
    let mut samples = Vec::new();
    let mut output = String::new();
    for run in 0..=RUNS {
        let started = Instant::now();
        let result = command.output().context("run the measurement tool")?;
        let elapsed = started.elapsed();
        if !result.status.success() {
            bail!(
                "{:?} failed: {}",
                command,
                String::from_utf8_lossy(&result.stderr)
            );
        }
        output = String::from_utf8_lossy(&result.stdout).into_owned();
        if run > 0 {
            samples.push(elapsed);
        }
    }
    Ok((samples, output))
}
