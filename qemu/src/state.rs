//! Where running VMs are recorded: `<state>/vms/<name>/` holds `vm.json`, QEMU's pid file, the
//! QMP socket and the serial log. `coffer stop` finds VMs there; the serial log is kept after a
//! VM stops, for reading.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use coffer_types::Role;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::LaunchError;

/// The state root: `$COFFER_STATE_DIR`, else `$XDG_STATE_HOME/coffer`, else
/// `~/.local/state/coffer`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COFFER_STATE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("coffer");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/coffer")
}

/// A forwarded port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Name of the guest port.
    pub name: String,
    /// Port in the guest.
    pub guest: u16,
    /// Port on the host's 127.0.0.1.
    pub host: u16,
}

/// A VM started by the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's name (default: its role).
    pub name: String,
    /// The image's role.
    pub role: Role,
    /// The image directory it booted.
    pub image_dir: PathBuf,
    /// QEMU's process id.
    pub pid: i32,
    /// QEMU's monitor socket.
    pub qmp_socket: PathBuf,
    /// The guest's serial console.
    pub serial_log: PathBuf,
    /// Forwarded ports.
    pub forwards: Vec<Forward>,
    /// Host port of the health endpoint.
    pub health_port: u16,
    /// The deployment the VM belongs to, if any.
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Process id of its simulated secure processor, if any.
    #[serde(default)]
    pub sim_pid: Option<i32>,
}

impl VmRecord {
    /// `http://127.0.0.1:<port>/healthz`.
    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/healthz", self.health_port)
    }

    /// Whether QEMU is still running (a zombie counts as exited).
    pub fn is_running(&self) -> bool {
        if kill(Pid::from_raw(self.pid), None).is_err() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // Field 3 is the state; the command name before it is in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// The last `lines` lines of the serial log.
    pub fn serial_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The directory of VM `name`.
pub fn vm_dir(state: &Path, name: &str) -> PathBuf {
    state.join("vms").join(name)
}

/// The default data disk of the VM called `name`: outside its VM directory, so `coffer stop`
/// and a new `coffer run` of the same name keep it.
pub fn data_disk(state: &Path, name: &str) -> PathBuf {
    state.join("disks").join(format!("{name}.img"))
}

/// Reads a VM's record, if there is one.
pub fn load(state: &Path, name: &str) -> Option<VmRecord> {
    let bytes = std::fs::read(vm_dir(state, name).join("vm.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every recorded VM.
pub fn list(state: &Path) -> Vec<VmRecord> {
    let Ok(entries) = std::fs::read_dir(state.join("vms")) else {
        return Vec::new();
    };
    let mut vms: Vec<VmRecord> = entries
        .flatten()
        .filter_map(|e| load(state, &e.file_name().to_string_lossy()))
        .collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    vms
}

pub(crate) fn save(state: &Path, record: &VmRecord) -> Result<(), LaunchError> {
    let path = vm_dir(state, &record.name).join("vm.json");
    let json = serde_json::to_vec_pretty(record).map_err(|e| LaunchError::io(&path, e.into()))?;
    std::fs::write(&path, json).map_err(|e| LaunchError::io(&path, e))
}

/// Forgets a stopped VM; its serial log stays.
pub(crate) fn forget(state: &Path, name: &str) {
    let dir = vm_dir(state, name);
    for file in ["vm.json", "qemu.pid", "qmp.sock"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
}

/// Picks a free port on 127.0.0.1, or checks that `wanted` is free.
pub(crate) fn host_port(wanted: Option<u16>) -> Option<u16> {
    let listener = TcpListener::bind(("127.0.0.1", wanted.unwrap_or(0))).ok()?;
    listener.local_addr().ok().map(|a| a.port())
}
