//! Structured logging to the serial console.
//!
//! The kernel hands PID 1 the console as stdin, stdout and stderr. Every event is one line:
//! uptime, level, the span (`service{name=...}` for lines forwarded from a service), message and
//! fields. No colours: the console is a log file on the host.

use tracing_subscriber::fmt::time::Uptime;

/// Installs the console subscriber. Called once, first thing.
pub(crate) fn init_logging() {
    // A second call (impossible in PID 1, possible in tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_timer(Uptime::default())
        .with_writer(std::io::stdout)
        .try_init();
}
