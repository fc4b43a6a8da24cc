//! Launching a VM into a deployment: the config disk that carries the manifest, HOST_DATA, and
//! on the sim platform the simulated secure processor beside the VM.
//!
//! The manifest's SHA-256 is the VM's HOST_DATA. On the sim platform the launcher starts
//! `coffer sim serve` first (the [`SimProcess`] program): it computes the launch digest from the
//! very artifacts QEMU is about to boot, is told HOST_DATA, listens on a unix socket, and QEMU
//! connects the guest's virtio-serial port to it. The process ends when QEMU closes the socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_types::{deployment_digest, Deployment, Platform, CONFIG_DISK_MAGIC};

use crate::LaunchError;

/// How a VM joins a deployment.
#[derive(Debug, Clone)]
pub struct DeploymentLaunch {
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// The simulated secure processor to start (required on the sim platform).
    pub sim: Option<SimProcess>,
}

/// The program that serves as the simulated secure processor (`coffer sim serve ...`).
#[derive(Debug, Clone)]
pub struct SimProcess {
    /// The `coffer` binary.
    pub program: PathBuf,
    /// The simulated secure processor's key directory.
    pub sim_dir: PathBuf,
}

/// The vCPU type the simulated platform launches with (the simulated chip is a Genoa).
pub const SIM_VCPU_TYPE: &str = "EPYC-Genoa";

/// Validates the manifest for a launch by this launcher; returns it parsed.
pub(crate) fn check(launch: &DeploymentLaunch) -> Result<Deployment, LaunchError> {
    let deployment = Deployment::from_json(&launch.manifest)
        .map_err(|e| LaunchError::Deployment(e.to_string()))?;
    match deployment.platform {
        Platform::Sim if launch.sim.is_none() => Err(LaunchError::Deployment(
            "a sim deployment needs the simulated secure processor".into(),
        )),
        Platform::Sim => Ok(deployment),
        other => Err(LaunchError::Deployment(format!(
            "platform {} cannot be launched here: `coffer run` boots the sim platform (QEMU/TCG); \
             qemu-snp and azure launches come with the deployment issue",
            other.as_str()
        ))),
    }
}

/// Writes the config disk (magic, u32 LE length, manifest, zero padding to 4 KiB sectors).
pub(crate) fn write_config_disk(path: &Path, manifest: &[u8]) -> Result<(), LaunchError> {
    let len = u32::try_from(manifest.len())
        .map_err(|_| LaunchError::Deployment("manifest larger than 4 GiB".into()))?;
    let mut disk = CONFIG_DISK_MAGIC.to_vec();
    disk.extend_from_slice(&len.to_le_bytes());
    disk.extend_from_slice(manifest);
    disk.resize(disk.len().div_ceil(4096) * 4096, 0);
    std::fs::write(path, disk).map_err(|e| LaunchError::io(path, e))
}

/// Starts the simulated secure processor for a VM and waits until its socket is up. Returns
/// its process id.
pub(crate) fn start_sim(
    sim: &SimProcess,
    image_dir: &Path,
    vcpus: u32,
    manifest: &[u8],
    socket: &Path,
    log: &Path,
) -> Result<i32, LaunchError> {
    let _ = std::fs::remove_file(socket);
    let log_file = std::fs::File::create(log).map_err(|e| LaunchError::io(log, e))?;
    let log_err = log_file.try_clone().map_err(|e| LaunchError::io(log, e))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&sim.program)
            .args(["sim", "serve", "--image"])
            .arg(image_dir)
            .args(["--vcpus", &vcpus.to_string(), "--vcpu-type", SIM_VCPU_TYPE])
            .args(["--host-data", &hex::encode(deployment_digest(manifest))])
            .arg("--socket")
            .arg(socket)
            .arg("--sim-dir")
            .arg(&sim.sim_dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            // Its own process group: a Ctrl-C meant for `coffer run` does not take it down.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                LaunchError::Deployment(format!(
                    "cannot start the simulated secure processor {}: {e}",
                    sim.program.display()
                ))
            })?
    };
    let started = Instant::now();
    let timeout = Duration::from_secs(60);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(LaunchError::Deployment(format!(
                "the simulated secure processor exited ({status}): {}",
                tail.trim()
            )));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            return Err(LaunchError::Deployment(format!(
                "the simulated secure processor did not listen on {} within {} s",
                socket.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    i32::try_from(child.id()).map_err(|_| LaunchError::Deployment("pid out of range".into()))
}

/// QEMU arguments that attach the config disk and, if given, the simulator's socket.
pub(crate) fn qemu_args(config_disk: &Path, sim_socket: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "-drive".into(),
        format!(
            "file={},if=none,id=coffercfg,format=raw,readonly=on",
            config_disk.display()
        ),
        "-device".into(),
        format!(
            "virtio-blk-pci,drive=coffercfg,serial={}",
            coffer_types::CONFIG_DISK_SERIAL
        ),
    ];
    if let Some(socket) = sim_socket {
        args.extend([
            "-chardev".into(),
            format!("socket,id=coffersim,path={}", socket.display()),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-device".into(),
            "virtserialport,chardev=coffersim,name=org.coffer.sim.0".into(),
        ]);
    }
    args
}

/// `manifest.json`-style path of the VM's copy of the manifest (kept for `coffer ps` and people).
pub(crate) fn manifest_copy(dir: &Path) -> PathBuf {
    dir.join("deployment.json")
}
