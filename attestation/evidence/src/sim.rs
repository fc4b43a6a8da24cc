//! The guest side of the simulated secure processor.
//!
//! On the sim platform the launcher starts, beside each VM, a host process that holds the test
//! ARK → ASK → VCEK chain (`coffer-sim`). It knows the launch measurement (it computed it from the
//! very artifacts QEMU booted) and the HOST_DATA the launcher chose; the guest only chooses
//! REPORT_DATA. They talk over a virtio-serial port named [`PORT_NAME`], one JSON object per line
//! ([`wire`]). Each request carries an id and the guest skips answers to other ids, so an answer
//! that arrives after a timeout cannot be taken for the next one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use zeroize::Zeroizing;

use crate::{Evidence, EvidenceError, EvidenceProvider, Platform, REPORT_DATA_LEN};

/// Name of the virtio-serial port (QEMU `virtserialport,name=`).
pub const PORT_NAME: &str = "org.coffer.sim.0";

/// Where the kernel lists virtio-serial ports.
pub const VIRTIO_PORTS_SYSFS: &str = "/sys/class/virtio-ports";

/// How long the guest waits for the host's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest line either side accepts (a report with its three certificates is ~10 KiB of hex).
pub const MAX_LINE: usize = 256 * 1024;

/// The messages on the port.
pub mod wire {
    use serde::{Deserialize, Serialize};

    /// A guest's request.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Request {
        /// Echoed in the answer.
        pub id: u64,
        /// What is asked.
        pub op: Op,
    }

    /// What a guest can ask.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    pub enum Op {
        /// A signed report with this REPORT_DATA (128 hex digits).
        Report {
            /// REPORT_DATA, hex.
            report_data: String,
        },
        /// A sealing key bound to the measurement, policy and this context (hex).
        SealingKey {
            /// The context, hex.
            context: String,
        },
    }

    /// The host's answer.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Answer {
        /// The request's id.
        pub id: u64,
        /// The outcome.
        pub result: Outcome,
    }

    /// The outcome of a request.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        /// The report and its chain, each hex.
        Report {
            /// The signed report.
            report: String,
            /// VCEK, DER.
            vek: String,
            /// ASK, DER.
            ask: String,
            /// ARK, DER.
            ark: String,
        },
        /// The sealing key, hex.
        SealingKey(String),
        /// The request was refused.
        Error(String),
    }
}

/// Finds the simulator's port under `sysfs` (normally [`VIRTIO_PORTS_SYSFS`]): the device node
/// `/dev/<port>` whose `name` is [`PORT_NAME`].
pub fn find_port(sysfs: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sysfs).ok()?;
    for entry in entries.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Evidence from the simulated secure processor over a virtio-serial port (or any file that
/// behaves like one, such as a socket's pty in tests).
#[derive(Debug)]
pub struct SimPortProvider {
    port: PathBuf,
    next_id: AtomicU64,
    /// One exchange at a time: the port is a single byte stream.
    lock: std::sync::Mutex<()>,
}

/// A random first exchange id from the kernel (the init seeds its RNG before any service runs);
/// the process id in the high half if the kernel gives none.
fn first_id() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes) >> 1,
        Err(_) => u64::from(std::process::id()) << 32,
    }
}

impl SimPortProvider {
    /// A provider talking over `port` (e.g. `/dev/vport0p1`).
    pub fn new(port: PathBuf) -> Self {
        // Start ids at a random point, so that neither two processes sharing the port in turn
        // (each opening it for one exchange) nor a process and its predecessor of an earlier
        // boot (boots are deterministic: the same service gets the same pid) reuse each other's
        // ids: an answer still queued for an id of an earlier boot would be taken for the new
        // request's.
        let start = first_id();
        Self {
            port,
            next_id: AtomicU64::new(start),
            lock: std::sync::Mutex::new(()),
        }
    }

    fn device_error(&self, reason: impl ToString) -> EvidenceError {
        EvidenceError::Device {
            path: self.port.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Opens the port, retrying while another process holds it (virtio-serial ports admit one
    /// opener at a time).
    fn open(&self) -> Result<File, EvidenceError> {
        let started = Instant::now();
        loop {
            match OpenOptions::new().read(true).write(true).open(&self.port) {
                Ok(file) => return Ok(file),
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::EBUSY)
                        && started.elapsed() < ANSWER_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.device_error(e)),
            }
        }
    }

    /// Sends one request and returns the answer with the same id.
    pub fn exchange(&self, op: wire::Op) -> Result<wire::Outcome, EvidenceError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(&wire::Request { id, op })
            .map_err(|e| EvidenceError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let mut port = self.open()?;
        port.write_all(&line).map_err(|e| self.device_error(e))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut buffer = Vec::new();
        loop {
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let answer: wire::Answer = serde_json::from_slice(&line).map_err(|e| {
                    EvidenceError::Protocol(format!("the host's answer is not JSON: {e}"))
                })?;
                if answer.id == id {
                    return Ok(answer.result);
                }
                // An answer to an earlier request that timed out: skip it.
            }
            if buffer.len() > MAX_LINE {
                return Err(EvidenceError::Protocol(format!(
                    "the host's answer exceeds {MAX_LINE} bytes"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EvidenceError::Timeout(ANSWER_TIMEOUT.as_millis() as u64));
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::from(ms)).map_err(|e| self.device_error(e))?;
            if ready == 0 {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = port.read(&mut chunk).map_err(|e| self.device_error(e))?;
            if n == 0 {
                // The host end is not connected (or went away): wait for it within the deadline.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

fn unhex(field: &str, text: &str) -> Result<Vec<u8>, EvidenceError> {
    hex::decode(text).map_err(|e| EvidenceError::Protocol(format!("{field}: {e}")))
}

impl EvidenceProvider for SimPortProvider {
    fn platform(&self) -> Platform {
        Platform::Sim
    }

    fn attest(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, EvidenceError> {
        let op = wire::Op::Report {
            report_data: hex::encode(report_data),
        };
        match self.exchange(op)? {
            wire::Outcome::Report {
                report,
                vek,
                ask,
                ark,
            } => Ok(Evidence::Snp {
                report: unhex("report", &report)?,
                vek: unhex("vek", &vek)?,
                ask: Some(unhex("ask", &ask)?),
                ark: Some(unhex("ark", &ark)?),
            }),
            wire::Outcome::Error(e) => Err(EvidenceError::Refused(e)),
            other => Err(EvidenceError::Protocol(format!(
                "asked for a report, got {other:?}"
            ))),
        }
    }

    fn sealing_key(&self, context: &[u8]) -> Result<Zeroizing<[u8; 32]>, EvidenceError> {
        let op = wire::Op::SealingKey {
            context: hex::encode(context),
        };
        match self.exchange(op)? {
            wire::Outcome::SealingKey(text) => {
                let bytes = Zeroizing::new(unhex("sealing_key", &text)?);
                let mut key = Zeroizing::new([0u8; 32]);
                if bytes.len() != 32 {
                    return Err(EvidenceError::Protocol(format!(
                        "sealing key of {} bytes, expected 32",
                        bytes.len()
                    )));
                }
                key.copy_from_slice(&bytes);
                Ok(key)
            }
            wire::Outcome::Error(e) => Err(EvidenceError::Refused(e)),
            _ => Err(EvidenceError::Protocol(
                "asked for a sealing key, got something else".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport0p1", "org.qemu.guest_agent.0"),
            ("vport1p1", PORT_NAME),
        ] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_port(dir.path()), Some(PathBuf::from("/dev/vport1p1")));
        assert_eq!(find_port(&dir.path().join("missing")), None);
    }

    #[test]
    fn wire_messages_have_a_stable_shape() {
        let request = wire::Request {
            id: 7,
            op: wire::Op::Report {
                report_data: "00".repeat(64),
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(
            json.starts_with(r#"{"id":7,"op":{"op":"report","report_data":"#),
            "{json}"
        );
        let answer = wire::Answer {
            id: 7,
            result: wire::Outcome::Error("no".into()),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(json, r#"{"id":7,"result":{"error":"no"}}"#);
    }
}
