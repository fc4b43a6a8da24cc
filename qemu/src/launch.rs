//! Starting and stopping VMs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deploy::{self, DeploymentLaunch};
use crate::image::Image;
use crate::state::{self, Forward, VmRecord};
use crate::{qmp, LaunchError};

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slower. The default (nested KVM hangs on our CI).
    Tcg,
    /// Hardware virtualisation, where `/dev/kvm` works.
    Kvm,
}

impl Accel {
    fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// How to boot an image.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The image directory.
    pub image_dir: PathBuf,
    /// VM name; default the image's role.
    pub name: Option<String>,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Host ports chosen by the user, by guest port name; others are picked free.
    pub ports: Vec<(String, u16)>,
    /// State root (see [`state::default_state_dir`]).
    pub state_dir: PathBuf,
    /// The deployment to launch into, if any (see [`DeploymentLaunch`]).
    pub deployment: Option<DeploymentLaunch>,
    /// The data disk for an image that needs one (`data_disk_mib` in its manifest); default
    /// [`state::data_disk`], kept across runs. Created (sparse) when missing.
    pub data_disk: Option<PathBuf>,
    /// For a kms image on a blank data disk: join the KMS at this mesh address (a replica, or
    /// the next image version) instead of starting a new root key. Written to the disk as a
    /// hint ([`coffer_types::JOIN_HINT_OFFSET`]).
    pub kms_join: Option<String>,
    /// For a kms image: the witness URLs (`https://HOST:PORT` of their attestation endpoints,
    /// as the VM sees them) of peer KMSs that witness its state versions, its rollback
    /// defence. Written to the disk at every start with the VM's own witness URL (its `attest`
    /// port on the host) as a hint ([`coffer_types::PEER_HINT_OFFSET`]).
    pub kms_peers: Vec<String>,
    /// For a kms image whose deployment keeps the KMS state in a shared store: its PostgreSQL
    /// URL as the VM sees it, written into the same hint.
    pub kms_store: Option<String>,
}

/// Boots the image in the background (QEMU daemonizes once its devices are set up, so
/// configuration errors such as a busy port are reported here). Returns the VM's record.
pub fn launch(options: &LaunchOptions) -> Result<VmRecord, LaunchError> {
    let image = Image::open(&options.image_dir)?;
    let manifest = &image.manifest;
    let deployment = options.deployment.as_ref().map(deploy::check).transpose()?;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| manifest.role.to_string());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(LaunchError::Qemu(format!(
            "VM name '{name}' must be letters, digits, '-' or '_'"
        )));
    }
    if let Some(existing) = state::load(&options.state_dir, &name) {
        if existing.is_running() {
            return Err(LaunchError::NameTaken(name));
        }
        state::forget(&options.state_dir, &name);
    }
    for (port_name, _) in &options.ports {
        if !manifest.ports.iter().any(|p| &p.name == port_name) {
            return Err(LaunchError::UnknownPort(port_name.clone()));
        }
    }
    let mut forwards = Vec::new();
    for port in &manifest.ports {
        let wanted = options
            .ports
            .iter()
            .find(|(n, _)| n == &port.name)
            .map(|(_, p)| *p);
        let host = state::host_port(wanted).ok_or_else(|| LaunchError::PortInUse {
            port: wanted.unwrap_or(0),
            name: port.name.clone(),
            guest: port.guest,
        })?;
        forwards.push(Forward {
            name: port.name.clone(),
            guest: port.guest,
            host,
        });
    }
    let health_port = forwards
        .iter()
        .find(|f| f.guest == manifest.health_port)
        .map(|f| f.host)
        .ok_or_else(|| LaunchError::NotAnImage {
            dir: image.dir.display().to_string(),
            reason: format!(
                "health port {} is not among its ports",
                manifest.health_port
            ),
        })?;

    let dir = state::vm_dir(&options.state_dir, &name);
    std::fs::create_dir_all(&dir).map_err(|e| LaunchError::io(&dir, e))?;
    let mut record = VmRecord {
        name: name.clone(),
        role: manifest.role,
        image_dir: image.dir.clone(),
        pid: 0,
        qmp_socket: dir.join("qmp.sock"),
        serial_log: dir.join("serial.log"),
        forwards,
        health_port,
        deployment_id: deployment.as_ref().map(|d| d.deployment_id.clone()),
        sim_pid: None,
    };
    let _ = std::fs::remove_file(&record.serial_log);
    let pid_file = dir.join("qemu.pid");
    let mut args = qemu_args(&image, options, &record, &pid_file)?;
    if let Some(launch) = &options.deployment {
        let disk = dir.join("config.img");
        deploy::write_config_disk(&disk, &launch.manifest)?;
        let copy = deploy::manifest_copy(&dir);
        std::fs::write(&copy, &launch.manifest).map_err(|e| LaunchError::io(&copy, e))?;
        let socket = dir.join("sim.sock");
        let sim_socket = match &launch.sim {
            Some(sim) => {
                let pid = deploy::start_sim(
                    sim,
                    &image.dir,
                    options.cpus,
                    &launch.manifest,
                    &socket,
                    &dir.join("sim.log"),
                )?;
                record.sim_pid = Some(pid);
                Some(socket.as_path())
            }
            None => None,
        };
        args.extend(deploy::qemu_args(&disk, sim_socket));
    }
    if (options.kms_join.is_some() || !options.kms_peers.is_empty() || options.kms_store.is_some())
        && manifest.data_disk_mib.is_none()
    {
        return Err(LaunchError::Qemu(format!(
            "--kms-join/--kms-peer/--kms-store: the {} image keeps no KMS state",
            manifest.role
        )));
    }
    if let Some(mib) = manifest.data_disk_mib {
        let disk = options
            .data_disk
            .clone()
            .unwrap_or_else(|| state::data_disk(&options.state_dir, &name));
        prepare_data_disk(&disk, mib)?;
        if let Some(address) = &options.kms_join {
            write_join_hint(&disk, address)?;
        }
        // The VM's own witness URL: its attestation endpoint as other VMs reach it (QEMU user
        // networking: the host's forwarded port at 10.0.2.2).
        let self_url = record
            .forwards
            .iter()
            .find(|f| f.name == "attest")
            .map(|f| format!("https://10.0.2.2:{}", f.host));
        if self_url.is_some() || !options.kms_peers.is_empty() || options.kms_store.is_some() {
            let hint = coffer_types::PeerHint {
                self_url,
                peers: options.kms_peers.clone(),
                store: options.kms_store.clone(),
            };
            coffer_types::write_peer_hint(&disk, &hint).map_err(|e| LaunchError::io(&disk, e))?;
        }
        args.extend(data_disk_args(&disk));
    }
    // A simulated secure processor started above must not outlive a QEMU that did not start.
    let pid = start_qemu(&args, &record, &pid_file).inspect_err(|_| stop_sim(&record))?;
    let record = VmRecord { pid, ..record };
    state::save(&options.state_dir, &record)?;
    Ok(record)
}

/// Creates the data disk (sparse, `mib` MiB) if it does not exist. An existing one is used as it
/// is, whatever its size: it holds state, and nothing here may lose it.
fn prepare_data_disk(disk: &Path, mib: u32) -> Result<(), LaunchError> {
    if disk.exists() {
        return Ok(());
    }
    if let Some(dir) = disk.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LaunchError::io(dir, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(disk)
        .map_err(|e| LaunchError::io(disk, e))?;
    file.set_len(u64::from(mib) << 20)
        .map_err(|e| LaunchError::io(disk, e))
}

/// Leaves the join hint on a blank data disk; refuses a disk that already holds state (a join
/// would not happen, and the user should know).
fn write_join_hint(disk: &Path, address: &str) -> Result<(), LaunchError> {
    let mut header = [0u8; 64];
    std::fs::File::open(disk)
        .and_then(|file| std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0))
        .map_err(|e| LaunchError::io(disk, e))?;
    if header.iter().any(|&b| b != 0) {
        return Err(LaunchError::Qemu(format!(
            "--kms-join: the data disk {} already holds a KMS state; a join applies only to a blank disk",
            disk.display()
        )));
    }
    coffer_types::write_join_hint(disk, address).map_err(|e| LaunchError::io(disk, e))
}

/// QEMU arguments that attach the data disk. QEMU turns the guest's flushes into `fsync` of
/// the file (the default writeback cache honours them), and locks the file so two VMs never
/// share it.
fn data_disk_args(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=none,id=cofferdata,format=raw", disk.display()),
        "-device".into(),
        format!(
            "virtio-blk-pci,drive=cofferdata,serial={}",
            coffer_types::DATA_DISK_SERIAL
        ),
    ]
}

fn qemu_args(
    image: &Image,
    options: &LaunchOptions,
    record: &VmRecord,
    pid_file: &Path,
) -> Result<Vec<String>, LaunchError> {
    let path = |name: &str| -> Result<String, LaunchError> {
        image
            .output(name)
            .map(|p| p.display().to_string())
            .ok_or_else(|| LaunchError::NotAnImage {
                dir: image.dir.display().to_string(),
                reason: format!("no {name} in the manifest"),
            })
    };
    let hostfwd: String = record
        .forwards
        .iter()
        .map(|f| format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest))
        .collect();
    Ok(vec![
        "-name".into(),
        format!("coffer-{}", record.name),
        "-machine".into(),
        format!("q35,accel={}", options.accel.as_str()),
        // `max` gives TCG guests RDRAND/RDSEED, which the kernel is told to trust.
        "-cpu".into(),
        if options.accel == Accel::Kvm {
            "host"
        } else {
            "max"
        }
        .into(),
        "-smp".into(),
        options.cpus.to_string(),
        "-m".into(),
        format!("{}M", options.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // The guest powering off or rebooting ends QEMU: a VM never restarts behind our back.
        "-no-reboot".into(),
        "-kernel".into(),
        path("kernel")?,
        "-initrd".into(),
        path("initramfs")?,
        "-append".into(),
        image.manifest.cmdline.clone(),
        "-serial".into(),
        format!("file:{}", record.serial_log.display()),
        "-netdev".into(),
        format!("user,id=net0{hostfwd}"),
        "-device".into(),
        // romfile= : no PXE option ROM; we boot the kernel directly.
        "virtio-net-pci,netdev=net0,romfile=".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", record.qmp_socket.display()),
        "-pidfile".into(),
        pid_file.display().to_string(),
        "-daemonize".into(),
    ])
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest powered itself off after the ACPI power button.
    PoweredOff,
    /// It did not power off in time and QEMU was killed.
    Killed,
    /// It was not running any more.
    AlreadyStopped,
}

/// Presses the VM's ACPI power button and waits up to `timeout` for the guest to power off;
/// kills QEMU after that. The record is removed; the serial log stays.
pub fn stop(
    state_dir: &Path,
    vm: &VmRecord,
    timeout: Duration,
) -> Result<StopOutcome, LaunchError> {
    if !vm.is_running() {
        stop_sim(vm);
        state::forget(state_dir, &vm.name);
        return Ok(StopOutcome::AlreadyStopped);
    }
    let pressed = qmp::execute(&vm.qmp_socket, "system_powerdown", serde_json::Value::Null);
    let started = Instant::now();
    let outcome = loop {
        if !vm.is_running() {
            break StopOutcome::PoweredOff;
        }
        if pressed.is_err() || started.elapsed() >= timeout {
            let _ = kill(Pid::from_raw(vm.pid), Signal::SIGKILL);
            while vm.is_running() && started.elapsed() < timeout + Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            break StopOutcome::Killed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop_sim(vm);
    state::forget(state_dir, &vm.name);
    pressed.map(|_| outcome)
}

/// Runs QEMU (it daemonizes once its devices are up) and returns its pid.
fn start_qemu(args: &[String], record: &VmRecord, pid_file: &Path) -> Result<i32, LaunchError> {
    let qemu = std::env::var_os("COFFER_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let output = Command::new(&qemu).args(args).output().map_err(|e| {
        LaunchError::Qemu(format!(
            "cannot run {}: {e} (install it with `apt-get install qemu-system-x86`)",
            PathBuf::from(&qemu).display()
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        // QEMU: "Could not set up host forwarding rule 'tcp:127.0.0.1:PORT-:GUEST'".
        if let Some(forward) = record.forwards.iter().find(|f| {
            stderr.contains("host forwarding") && stderr.contains(&format!("127.0.0.1:{}-", f.host))
        }) {
            return Err(LaunchError::PortInUse {
                port: forward.host,
                name: forward.name.clone(),
                guest: forward.guest,
            });
        }
        return Err(LaunchError::Qemu(stderr));
    }
    let pid_text = std::fs::read_to_string(pid_file).map_err(|e| LaunchError::io(pid_file, e))?;
    pid_text
        .trim()
        .parse()
        .map_err(|_| LaunchError::Qemu(format!("{}: not a pid: {pid_text:?}", pid_file.display())))
}

/// Ends a VM's simulated secure processor if it is still there (it normally exits by itself
/// when QEMU closes its socket).
fn stop_sim(vm: &VmRecord) {
    if let Some(pid) = vm.sim_pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

/// Waits until the VM's QEMU exits by itself (guest power-off), up to `timeout`.
pub fn wait_exit(vm: &VmRecord, timeout: Duration) -> bool {
    let started = Instant::now();
    while vm.is_running() {
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}
