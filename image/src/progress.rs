//! Build progress for people: a spinner with the current step on a terminal, one line per step
//! otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports the steps of a build.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: AtomicUsize,
    prefix: String,
}

impl Progress {
    /// `total` steps, labelled with `prefix` (the role). Draws only when stderr is a terminal.
    pub fn new(total: usize, prefix: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {prefix} [{pos}/{len}] {msg} ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.set_prefix(prefix.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            total,
            done: AtomicUsize::new(0),
            prefix: prefix.to_owned(),
        }
    }

    /// A progress that says nothing (library callers, tests).
    pub fn silent() -> Self {
        Self {
            bar: None,
            total: 0,
            done: AtomicUsize::new(usize::MAX / 2),
            prefix: String::new(),
        }
    }

    /// Starts the next step.
    pub fn step(&self, message: &str) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => {
                bar.set_position(n.saturating_sub(1) as u64);
                bar.set_message(message.to_owned());
            }
            None if n <= self.total => eprintln!("{} [{n}/{}] {message}", self.prefix, self.total),
            None => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
