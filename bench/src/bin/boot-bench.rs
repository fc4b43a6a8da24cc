//! Boot to healthy: our kms image against a baseline initramfs with a trivial static init, on the
//! same kernel, command line and QEMU flags, in one run. Prints ratios of medians; also prints the
//! image sizes per role.
//!
//! What is timed, from the moment the launcher starts QEMU:
//! - ours: until `GET /healthz` answers from inside the guest (kernel, our init: mounts, RNG wait,
//!   modules, network, service start, and the service itself);
//! - baseline: until the trivial init's marker line appears on the serial console.
//!
//! Both are polled every 20 ms. Runs alternate (ours, baseline, ours, ...) after one warm-up of
//! each, so drift on the machine hits both alike.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use coffer_bench::summarize;
use coffer_image::cpio::{Archive, Node};
use coffer_image::{BuildRequest, Progress};
use coffer_qemu::{Accel, LaunchOptions, VmRecord};
use coffer_types::{ImageManifest, Role};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const RUNS: usize = 5;
const POLL: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let checkout = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let work = tempfile::tempdir()?;
    let mut sizes = Vec::new();
    for role in Role::ALL {
        let out = work.path().join(role.as_str());
        eprintln!("boot-bench: building the {role} image");
        let manifest = coffer_image::build_image(
            &BuildRequest {
                checkout: checkout.clone(),
                role,
                spec: None,
                out_dir: out,
            },
            &Progress::silent(),
        )?;
        let size = manifest
            .outputs
            .iter()
            .find(|o| o.name == "initramfs")
            .map(|o| o.size)
            .unwrap_or(0);
        sizes.push((role, size));
    }
    let ours = work.path().join("kms");
    let baseline = work.path().join("baseline");
    eprintln!("boot-bench: building the baseline image (trivial static init, same kernel)");
    build_baseline(&checkout, &ours, &baseline)?;

    let state = work.path().join("state");
    let mut ours_samples = Vec::new();
    let mut base_samples = Vec::new();
    for run in 0..=RUNS {
        let a = boot_ours(&ours, &state)?;
        let b = boot_baseline(&baseline, &state)?;
        eprintln!(
            "boot-bench: run {run}{}: ours {:.2}s, baseline {:.2}s",
            if run == 0 {
                " (warm-up, not counted)"
            } else {
                ""
            },
            a.as_secs_f64(),
            b.as_secs_f64()
        );
        if run > 0 {
            ours_samples.push(a);
            base_samples.push(b);
        }
    }
    let (Some(o), Some(b)) = (summarize(&ours_samples), summarize(&base_samples)) else {
        bail!("no samples");
    };
    println!("## Boot to healthy (QEMU TCG, 1 vCPU, 512 MiB; {RUNS} runs each after a warm-up)");
    println!();
    println!("| image | median | min | max | ratio to baseline (median) |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, s: &coffer_bench::Summary| {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2} s | {:.2} |",
            s.median.as_secs_f64(),
            s.min.as_secs_f64(),
            s.max.as_secs_f64(),
            s.median.as_secs_f64() / b.median.as_secs_f64()
        );
    };
    row("baseline (trivial init, marker on console)", &b);
    row("kms (healthy over HTTP from the host)", &o);
    println!();
    println!("Target: kms / baseline <= 1.3.");
    println!();
    println!("## Image sizes (gzip-compressed initramfs)");
    println!();
    println!("| role | initramfs |");
    println!("|---|---|");
    for (role, size) in sizes {
        println!("| {role} | {:.2} MiB |", size as f64 / 1048576.0);
    }
    println!();
    println!("Target: kms <= 12 MiB.");
    Ok(())
}

fn launch(image: &Path, state: &Path, name: &str) -> anyhow::Result<(VmRecord, Instant)> {
    let started = Instant::now();
    let vm = coffer_qemu::launch(&LaunchOptions {
        image_dir: image.to_path_buf(),
        name: Some(name.to_owned()),
        accel: Accel::Tcg,
        memory_mib: 512,
        cpus: 1,
        ports: Vec::new(),
        state_dir: state.to_path_buf(),
        deployment: None,
        data_disk: None,
        kms_join: None,
        kms_peers: Vec::new(),
        kms_store: None,
    })?;
    Ok((vm, started))
}

fn finish(vm: &VmRecord) {
    let _ = kill(Pid::from_raw(vm.pid), Signal::SIGKILL);
    coffer_qemu::wait_exit(vm, Duration::from_secs(10));
}

fn boot_ours(image: &Path, state: &Path) -> anyhow::Result<Duration> {
    let (vm, started) = launch(image, state, "bench-ours")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = loop {
        if runtime
            .block_on(coffer_qemu::health::check(
                vm.health_port,
                coffer_qemu::health::ATTEMPT_TIMEOUT,
            ))
            .is_ok()
        {
            break Ok(started.elapsed());
        }
        if started.elapsed() > TIMEOUT || !vm.is_running() {
            break Err(anyhow::anyhow!(
                "kms image not healthy:\n{}",
                vm.serial_tail(20)
            ));
        }
        std::thread::sleep(POLL);
    };
    finish(&vm);
    result
}

fn boot_baseline(image: &Path, state: &Path) -> anyhow::Result<Duration> {
    let (vm, started) = launch(image, state, "bench-baseline")?;
    let result = loop {
        if vm.serial_tail(5).contains("baseline-init: ready") {
            break Ok(started.elapsed());
        }
        if started.elapsed() > TIMEOUT || !vm.is_running() {
            break Err(anyhow::anyhow!(
                "baseline did not print its marker:\n{}",
                vm.serial_tail(20)
            ));
        }
        std::thread::sleep(POLL);
    };
    finish(&vm);
    result
}

/// The baseline image: our kms image's kernel, command line and firmware, with an initramfs that
/// holds only `/init` (the trivial init) and `/dev/console`.
fn build_baseline(checkout: &Path, ours: &Path, out: &Path) -> anyhow::Result<()> {
    let init = coffer_image::build_appliance_binary(checkout, "coffer-baseline-init")?.bytes;
    let mut archive = Archive::new();
    archive.add("dev/console", Node::CharDevice(0o600, 5, 1));
    archive.add("init", Node::File(0o555, init));
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    archive.write_to(&mut encoder)?;
    let initramfs = encoder.finish()?;

    std::fs::create_dir_all(out)?;
    let mut manifest: ImageManifest =
        serde_json::from_slice(&std::fs::read(ours.join("manifest.json"))?)?;
    for output in &mut manifest.outputs {
        let bytes = if output.name == "initramfs" {
            initramfs.clone()
        } else {
            std::fs::read(ours.join(&output.path))?
        };
        std::fs::write(out.join(&output.path), &bytes)?;
        output.sha256 = coffer_image::lock::sha256_hex(&bytes);
        output.size = bytes.len() as u64;
    }
    manifest.inputs.clear();
    manifest.modules.clear();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(())
}
