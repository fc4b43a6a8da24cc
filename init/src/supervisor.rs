//! The service supervisor: starts the fixed service set, reaps every child, restarts crashed
//! services, and stops them in reverse order at shutdown.
//!
//! It is a single-threaded loop over `poll(2)`: signals arrive on a signalfd (SIGCHLD, SIGTERM,
//! SIGINT), the power button on its evdev node, and restart deadlines become the poll timeout.
//! Services are spawned as the appliance binary itself (`/proc/self/exe <applet> <args>`) with a
//! clean environment, no stdin, stdout/stderr forwarded line by line to the console tagged with
//! the service name, and the configured unprivileged uid/gid (which also drops supplementary
//! groups).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_types::{ApplianceConfig, Role, ServiceConfig};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, info_span, warn, Level};

use crate::backoff::{Decision, RestartTracker};
use crate::power::{has_power_press, INPUT_EVENT_SIZE};
use crate::InitError;

/// Blocks the signals the supervisor handles and returns a signalfd that receives them.
///
/// Blocked signals are queued even for PID 1 (the kernel only discards signals that PID 1 leaves
/// at their default action and does not block). Children get an empty mask again from `std`.
pub(crate) fn block_signals() -> Result<SignalFd, InitError> {
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(signal);
    }
    mask.thread_block().map_err(InitError::Signals)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(InitError::Signals)
}

#[derive(Debug, Clone, Copy)]
enum State {
    Running { pid: Pid, since: Instant },
    Waiting { until: Instant },
    Failed,
    Stopped,
}

struct Service {
    config: ServiceConfig,
    state: State,
    tracker: RestartTracker,
}

/// Why the supervisor returned.
enum Event {
    Shutdown(String),
    FailStop(String),
}

pub(crate) struct Supervisor {
    role: Role,
    exe: PathBuf,
    services: Vec<Service>,
    stop_timeout: Duration,
    fail_stop: Option<String>,
}

impl Supervisor {
    pub(crate) fn new(config: &ApplianceConfig) -> Result<Self, InitError> {
        let exe = std::env::current_exe().map_err(InitError::SelfExe)?;
        Ok(Self {
            role: config.role,
            exe,
            services: config
                .services
                .iter()
                .map(|s| Service {
                    config: s.clone(),
                    state: State::Stopped,
                    tracker: RestartTracker::new(config.restart.clone()),
                })
                .collect(),
            stop_timeout: Duration::from_millis(config.stop_timeout_ms),
            fail_stop: None,
        })
    }

    /// Starts every service and supervises them until shutdown. Returns why it stopped.
    pub(crate) fn run(&mut self, signals: SignalFd, mut buttons: Vec<File>) -> String {
        for index in 0..self.services.len() {
            self.start(index);
        }
        info!(count = self.services.len(), "services started");
        let event = loop {
            if let Some(reason) = self.fail_stop.take() {
                break Event::FailStop(reason);
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            let (signal_ready, button_ready) = wait(&signals, &buttons, timeout);
            if signal_ready {
                if let Some(reason) = self.drain_signals(&signals) {
                    break Event::Shutdown(reason);
                }
            }
            if button_ready && pressed(&mut buttons) {
                break Event::Shutdown("ACPI power button".into());
            }
            self.start_due();
        };
        match event {
            Event::Shutdown(reason) => {
                info!(%reason, "shutdown requested");
                self.stop_all(&signals);
                format!("shutdown: {reason}")
            }
            Event::FailStop(reason) => {
                error!("FAIL-STOP: {reason}; stopping services and powering off");
                self.stop_all(&signals);
                format!("fail-stop: {reason}")
            }
        }
    }

    fn start(&mut self, index: usize) {
        let service = &mut self.services[index];
        match spawn(&self.exe, self.role, &service.config) {
            Ok(pid) => {
                info!(service = %service.config.name, pid = pid.as_raw(), "service started");
                service.state = State::Running {
                    pid,
                    since: Instant::now(),
                };
            }
            Err(e) => {
                // Spawning failed like a crash would: same policy.
                warn!(service = %service.config.name, error = %e, "cannot start service");
                self.on_exit(index, "could not be started".into(), Duration::ZERO);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.services.len() {
            if let State::Waiting { until } = self.services[index].state {
                if until <= now {
                    info!(service = %self.services[index].config.name, "restarting service");
                    self.start(index);
                }
            }
        }
    }

    /// Handles queued signals; returns a shutdown reason if one asked for it.
    fn drain_signals(&mut self, signals: &SignalFd) -> Option<String> {
        let mut shutdown = None;
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(Signal::SIGTERM) => shutdown = Some("SIGTERM".to_owned()),
                Ok(Signal::SIGINT) => shutdown = Some("SIGINT (Ctrl-Alt-Del)".to_owned()),
                other => debug!(signal = ?other, "ignored signal"),
            }
        }
        // SIGCHLD can coalesce with the others; reap anyway so no zombie is left behind.
        self.reap();
        shutdown
    }

    /// Reaps every exited child: services and orphans re-parented to PID 1.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let found = self
                        .services
                        .iter()
                        .position(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid));
                    match found {
                        Some(index) => {
                            let State::Running { since, .. } = self.services[index].state else {
                                continue;
                            };
                            self.on_exit(index, describe(&status), since.elapsed());
                        }
                        None => {
                            info!(pid = pid.as_raw(), status = %describe(&status), "reaped orphan")
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    warn!(%errno, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, index: usize, how: String, ran_for: Duration) {
        let now = Instant::now();
        let service = &mut self.services[index];
        let name = service.config.name.clone();
        warn!(service = %name, status = %how, ran_ms = ran_for.as_millis() as u64, "service exited");
        match service.tracker.on_exit(now, ran_for) {
            Decision::RestartAfter(delay) => {
                info!(service = %name, delay_ms = delay.as_millis() as u64, "service will be restarted");
                service.state = State::Waiting { until: now + delay };
            }
            Decision::CrashLoop { exits, window } => {
                service.state = State::Failed;
                let reason = format!(
                    "service '{name}' exited {exits} times within {}s",
                    window.as_secs()
                );
                if service.config.critical {
                    self.fail_stop = Some(format!("critical {reason}"));
                } else {
                    error!(service = %name, "{reason}; giving up on it (not critical)");
                }
            }
        }
    }

    /// Stops the services in reverse start order, each with SIGTERM and, after the stop timeout,
    /// SIGKILL; then any process still left.
    fn stop_all(&mut self, signals: &SignalFd) {
        for index in (0..self.services.len()).rev() {
            let State::Running { pid, .. } = self.services[index].state else {
                self.services[index].state = State::Stopped;
                continue;
            };
            let name = self.services[index].config.name.clone();
            let _ = kill(pid, Signal::SIGTERM);
            if !self.wait_for_exit(signals, pid, self.stop_timeout) {
                warn!(service = %name, "did not stop in time; killing");
                let _ = kill(pid, Signal::SIGKILL);
                self.wait_for_exit(signals, pid, Duration::from_secs(2));
            }
            info!(service = %name, "service stopped");
            self.services[index].state = State::Stopped;
        }
        // Whatever else runs (nothing, normally) gets the same treatment.
        if kill(Pid::from_raw(-1), Signal::SIGTERM).is_ok() {
            std::thread::sleep(Duration::from_millis(200));
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
        self.reap_quietly();
    }

    fn wait_for_exit(&mut self, signals: &SignalFd, pid: Pid, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Reap directly: services that exit now are stopping, not crashing.
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) if status.pid() == Some(pid) => return true,
                    Ok(_) => continue,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            wait(signals, &[], Some(left));
            while let Ok(Some(_)) = signals.read_signal() {}
        }
    }

    fn reap_quietly(&mut self) {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Polls the signalfd and the power buttons; returns which became readable.
fn wait(signals: &SignalFd, buttons: &[File], timeout: Option<Duration>) -> (bool, bool) {
    let mut fds = Vec::with_capacity(1 + buttons.len());
    fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
    fds.extend(
        buttons
            .iter()
            .map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)),
    );
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            PollTimeout::try_from(d.as_millis().min(60_000) as u32 + 1).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(&mut fds, timeout) {
        Ok(_) => {
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            (ready(&fds[0]), fds[1..].iter().any(ready))
        }
        Err(_) => (false, false), // EINTR: the caller loops
    }
}

fn pressed(buttons: &mut [File]) -> bool {
    let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
    buttons
        .iter_mut()
        .any(|button| match button.read(&mut buf) {
            Ok(n) => has_power_press(&buf[..n]),
            Err(_) => false,
        })
}

fn spawn(exe: &PathBuf, role: Role, config: &ServiceConfig) -> std::io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(exe);
    command
        .arg(&config.applet)
        .args(&config.args)
        .env_clear()
        .env("COFFER_ROLE", role.as_str())
        .env("COFFER_SERVICE", &config.name)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(gid) = config.gid {
        command.gid(gid);
    }
    if let Some(uid) = config.uid {
        command.uid(uid);
    }
    let mut child = command.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    if let Some(out) = child.stdout.take() {
        forward(out, config.name.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, config.name.clone());
    }
    // The child is reaped by `waitpid(-1)`, not through `Child`; dropping it neither waits nor
    // kills.
    Ok(pid)
}

/// Copies a service's output to the console, one event per line, at the level the line starts
/// with (services log `LEVEL message` lines).
fn forward(stream: impl Read + Send + 'static, name: String) {
    let spawned = std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || {
            let span = info_span!("service", name = %name);
            let _entered = span.enter();
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                let (level, message) = split_level(text);
                match level {
                    Level::ERROR => error!("{message}"),
                    Level::WARN => warn!("{message}"),
                    Level::DEBUG | Level::TRACE => debug!("{message}"),
                    _ => info!("{message}"),
                }
                line.clear();
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start log forwarder");
    }
}

fn split_level(line: &str) -> (Level, &str) {
    for (prefix, level) in [
        ("ERROR ", Level::ERROR),
        (" WARN ", Level::WARN),
        ("WARN ", Level::WARN),
        (" INFO ", Level::INFO),
        ("INFO ", Level::INFO),
        ("DEBUG ", Level::DEBUG),
        ("TRACE ", Level::TRACE),
    ] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return (level, rest);
        }
    }
    (Level::INFO, line)
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, signal, core) => {
            format!(
                "killed by {signal}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lines_keep_their_level() {
        assert_eq!(split_level(" WARN slow disk"), (Level::WARN, "slow disk"));
        assert_eq!(split_level("ERROR boom"), (Level::ERROR, "boom"));
        assert_eq!(split_level("plain text"), (Level::INFO, "plain text"));
    }
}
