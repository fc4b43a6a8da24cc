//! `coffer sim report`: a report from the simulated secure processor for a built image.
//!
//! The measurement is recomputed from the image's own artifacts (as the launcher will boot them),
//! so a verifier holding the committed pins accepts it, but only when it was told to trust the
//! simulation root. Everything here is for development and CI: the simulated chain is not AMD's.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use coffer_sim::{ReportFields, SimRoot};

/// `coffer sim report --image DIR --out DIR [...]`.
#[derive(Debug, Clone, Args)]
pub struct SimReportArgs {
    /// A built image directory (firmware.fd, vmlinuz, initramfs.cpio.gz, cmdline).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// Where to write report.bin and the certificates vcek.der, ask.der, ark.der.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The simulated secure processor's key directory (generated on first use and kept)
    /// [default: <state dir>/sim].
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
    /// vCPU count of the simulated launch.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// vCPU type of the simulated launch.
    #[arg(long, default_value = "EPYC-v4")]
    pub vcpu_type: String,
    /// Guest features of the simulated launch (hex).
    #[arg(long, default_value = "0x1")]
    pub guest_features: String,
    /// REPORT_DATA (hex, up to 64 bytes; zero-padded).
    #[arg(long, value_name = "HEX")]
    pub report_data: Option<String>,
    /// HOST_DATA (hex, up to 32 bytes; zero-padded).
    #[arg(long, value_name = "HEX")]
    pub host_data: Option<String>,
}

/// The default key directory of the simulated secure processor.
pub fn default_sim_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sim")
}

/// Writes a simulated report for the image and prints what it measured.
pub fn run(args: &SimReportArgs, state_dir: &Path) -> anyhow::Result<()> {
    let features = args
        .guest_features
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .with_context(|| {
            format!(
                "--guest-features '{}' is not hex like 0x1",
                args.guest_features
            )
        })?;
    let measurement = coffer_sim::measure_image(
        &args.image,
        &coffer_sim::SimLaunchConfig {
            vcpus: args.vcpus,
            vcpu_type: args.vcpu_type.clone(),
            guest_features: features,
        },
    )?;

    let sim_dir = args
        .sim_dir
        .clone()
        .unwrap_or_else(|| default_sim_dir(state_dir));
    let root = SimRoot::load_or_generate(&sim_dir)
        .with_context(|| format!("simulated secure processor in {}", sim_dir.display()))?;
    let mut fields = ReportFields {
        measurement,
        ..ReportFields::default()
    };
    if let Some(hex) = &args.report_data {
        fill(&mut fields.report_data, hex, "--report-data")?;
    }
    if let Some(hex) = &args.host_data {
        fill(&mut fields.host_data, hex, "--host-data")?;
    }
    let report = root.sign_report(&fields);

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for (name, bytes) in [
        ("report.bin", &report[..]),
        ("vcek.der", root.vcek_der()),
        ("ask.der", root.ask_der()),
        ("ark.der", root.ark_der()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "simulated report (NOT AMD hardware) for {} vCPUs {} guest features {}: measurement {}",
        args.vcpus,
        args.vcpu_type,
        args.guest_features,
        hex::encode(measurement)
    );
    println!(
        "written to {}; simulated secure processor keys in {}",
        args.out.display(),
        sim_dir.display()
    );
    Ok(())
}

fn fill(field: &mut [u8], hex: &str, flag: &str) -> anyhow::Result<()> {
    let bytes = hex::decode(hex).with_context(|| format!("{flag} is not hex"))?;
    anyhow::ensure!(
        bytes.len() <= field.len(),
        "{flag} has {} bytes, at most {} fit",
        bytes.len(),
        field.len()
    );
    field[..bytes.len()].copy_from_slice(&bytes);
    Ok(())
}

/// `coffer sim serve`: the simulated secure processor of one VM (started by `coffer run`).
#[derive(Debug, Clone, Args)]
pub struct SimServeArgs {
    /// The image directory QEMU boots (its artifacts give the launch measurement).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// vCPU count of the launch.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// vCPU type of the launch.
    #[arg(long, default_value = coffer_qemu::SIM_VCPU_TYPE)]
    pub vcpu_type: String,
    /// HOST_DATA (64 hex digits): the deployment digest.
    #[arg(long, value_name = "HEX")]
    pub host_data: String,
    /// The unix socket QEMU's virtio-serial port connects to.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The simulated secure processor's key directory [default: <state dir>/sim].
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
}

/// Serves one VM until QEMU closes the socket.
pub fn serve(args: &SimServeArgs, state_dir: &Path) -> anyhow::Result<()> {
    let config = coffer_sim::SimLaunchConfig {
        vcpus: args.vcpus,
        vcpu_type: args.vcpu_type.clone(),
        ..coffer_sim::SimLaunchConfig::default()
    };
    let measurement = coffer_sim::measure_image(&args.image, &config)?;
    let mut host_data = [0u8; 32];
    let bytes = hex::decode(&args.host_data).context("--host-data is not hex")?;
    anyhow::ensure!(
        bytes.len() == 32,
        "--host-data must be 32 bytes, got {}",
        bytes.len()
    );
    host_data.copy_from_slice(&bytes);
    let sim_dir = args
        .sim_dir
        .clone()
        .unwrap_or_else(|| default_sim_dir(state_dir));
    let root = SimRoot::load_or_generate(&sim_dir)
        .with_context(|| format!("simulated secure processor in {}", sim_dir.display()))?;
    let service = coffer_sim::SimService::new(
        std::sync::Arc::new(root),
        coffer_sim::SimGuest {
            measurement,
            host_data,
            policy: ReportFields::DEFAULT_POLICY,
        },
    );
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    eprintln!(
        "coffer sim: simulated secure processor (NOT AMD) for {} ({} vCPUs {}): measurement {}, host_data {}",
        args.image.display(),
        args.vcpus,
        args.vcpu_type,
        hex::encode(measurement),
        args.host_data
    );
    let (stream, _) = listener.accept().context("waiting for QEMU")?;
    let _ = std::fs::remove_file(&args.socket);
    service.serve(stream).context("serving the guest")?;
    eprintln!("coffer sim: the VM closed the port; exiting");
    Ok(())
}

/// For a sim-platform manifest: its simulation root must be this machine's (the one in
/// `sim_dir`), or every peer would refuse the VM's evidence. Other platforms pass.
pub fn check_simulation_root(manifest: &[u8], sim_dir: &Path) -> anyhow::Result<()> {
    let deployment = coffer_types::Deployment::from_json(manifest)?;
    let Some(theirs) = &deployment.simulation_root else {
        return Ok(());
    };
    let root = SimRoot::load_or_generate(sim_dir)
        .with_context(|| format!("simulated secure processor in {}", sim_dir.display()))?;
    let ours = root.simulation_root()?;
    if ours.ark_pem != theirs.ark_pem || ours.ask_pem != theirs.ask_pem {
        return Err(coffer_qemu::LaunchError::Deployment(format!(
            "the deployment's simulation root is not the one in {} (this machine's simulated \
             secure processor): write the manifest with `coffer deployment init` here, with the \
             same --state-dir",
            sim_dir.display()
        ))
        .into());
    }
    Ok(())
}
