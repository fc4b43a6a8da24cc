//! A running software TPM (`swtpm socket --tpm2`) on free loopback ports, for the simulated
//! Azure path: provision it with [`crate::provision_swtpm`], extend PCRs as a guest would, and
//! collect evidence from it. The process is killed when the value is dropped.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues};
use tss_esapi::{Context, TctiNameConf};

/// Why an swtpm could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// The `swtpm` binary is not installed.
    #[error("the swtpm binary is not installed (Debian: apt-get install swtpm)")]
    NotInstalled,
    /// It did not come up.
    #[error("swtpm did not start: {0}")]
    Start(String),
    /// A TPM command failed.
    #[error("swtpm {op}: {reason}")]
    Tpm {
        /// The command.
        op: &'static str,
        /// What the TPM said.
        reason: String,
    },
}

/// A running `swtpm socket --tpm2` with its state in a temporary directory.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Two consecutive free ports (the libtss2 swtpm TCTI reaches the control channel at port + 1).
fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = first.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    TcpListener::bind(("127.0.0.1", next)).ok()?;
    Some(port)
}

impl Swtpm {
    /// Starts swtpm on free ports (retrying when another process takes a port in between).
    pub fn start() -> Result<Self, SwtpmError> {
        match Command::new("swtpm").arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SwtpmError::NotInstalled)
            }
            Err(e) => return Err(SwtpmError::Start(format!("swtpm --version: {e}"))),
            Ok(_) => {}
        }
        let mut last = String::new();
        for _ in 0..20 {
            let dir = tempfile::tempdir().map_err(|e| SwtpmError::Start(e.to_string()))?;
            let Some(server) = free_port_pair() else {
                continue;
            };
            let log = dir.path().join("swtpm.log");
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={server},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", server + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .arg("--log")
                .arg(format!("file={},level=1", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| SwtpmError::Start(e.to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last = format!("swtpm exited with {status}: {err}{log}");
                    break;
                }
                // Both channels: libtss2's swtpm TCTI opens the control channel too, and swtpm
                // binds it after the server one (a test that connected in between failed with
                // an I/O error under load).
                if TcpStream::connect(("127.0.0.1", server)).is_ok()
                    && TcpStream::connect(("127.0.0.1", server + 1)).is_ok()
                {
                    return Ok(Self {
                        child,
                        port: server,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("swtpm did not listen on {server} within 10 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(SwtpmError::Start(last))
    }

    /// The TCTI that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// An ESYS context on it with password (empty) authorisation.
    pub fn context(&self) -> Result<Context, SwtpmError> {
        let tpm = |reason: String| SwtpmError::Tpm {
            op: "connect",
            reason,
        };
        let tcti = TctiNameConf::from_str(&self.tcti()).map_err(|e| tpm(e.to_string()))?;
        let mut ctx = Context::new(tcti).map_err(|e| tpm(e.to_string()))?;
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        Ok(ctx)
    }

    /// Extends sha256-bank PCR `index` with `digest`, as a guest measuring something would;
    /// returns the value the PCR holds afterwards if it was zero before.
    pub fn extend_pcr(&self, index: u8, digest: [u8; 32]) -> Result<[u8; 32], SwtpmError> {
        let handle = PcrHandle::try_from(u32::from(index)).map_err(|e| SwtpmError::Tpm {
            op: "PCR handle",
            reason: e.to_string(),
        })?;
        let mut values = DigestValues::new();
        let value = Digest::try_from(digest.to_vec()).map_err(|e| SwtpmError::Tpm {
            op: "digest",
            reason: e.to_string(),
        })?;
        values.set(HashingAlgorithm::Sha256, value);
        self.context()?
            .pcr_extend(handle, values)
            .map_err(|e| SwtpmError::Tpm {
                op: "TPM2_PCR_Extend",
                reason: e.to_string(),
            })?;
        Ok(coffer_vtpm::predict::extended_from_reset(&digest))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
