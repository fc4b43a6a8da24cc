//! The readiness wait: `GET /healthz` from the host through the port forward.

use std::time::{Duration, Instant};

use coffer_types::Health;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::state::VmRecord;
use crate::LaunchError;

/// Polls the VM's health endpoint until it answers for the VM's role, the VM exits, or
/// `timeout` passes. Failures carry the end of the serial log.
pub fn wait_healthy(vm: &VmRecord, timeout: Duration) -> Result<Health, LaunchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LaunchError::Qemu(format!("tokio runtime: {e}")))?;
    let port = vm.health_port;
    let started = Instant::now();
    let mut last;
    loop {
        if !vm.is_running() {
            return Err(LaunchError::ExitedEarly {
                name: vm.name.clone(),
                log: vm.serial_log.display().to_string(),
                tail: vm.serial_tail(25),
            });
        }
        // Short attempts while the guest boots; longer ones after a while, in case a loaded
        // host makes the guest itself slower than the short timeout.
        let attempt_timeout = if started.elapsed() < PATIENT_AFTER {
            ATTEMPT_TIMEOUT
        } else {
            Duration::from_secs(2)
        };
        match runtime.block_on(check(port, attempt_timeout)) {
            Ok(health) if health.role == vm.role && health.status == "ok" => return Ok(health),
            Ok(health) => {
                last = format!(
                    "answered for role {} with status {}",
                    health.role, health.status
                )
            }
            Err(e) => last = e,
        }
        if started.elapsed() >= timeout {
            return Err(LaunchError::NotHealthy {
                name: vm.name.clone(),
                secs: timeout.as_secs(),
                last,
                log: vm.serial_log.display().to_string(),
                tail: vm.serial_tail(25),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long one readiness attempt may take. Short on purpose: an attempt made while the guest's
/// network is still coming up can hang on QEMU user networking (the SYN it forwards is lost and
/// only retransmitted a second later); a fresh attempt gets through at once.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

/// After this long without an answer, attempts get a longer timeout.
const PATIENT_AFTER: Duration = Duration::from_secs(20);

/// One `GET /healthz` on 127.0.0.1:`port`, given up after `timeout`.
pub async fn check(port: u16, timeout: Duration) -> Result<Health, String> {
    let attempt = async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get("/healthz")
            .header("host", format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice::<Health>(&body).map_err(|e| format!("bad health body: {e}"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}
