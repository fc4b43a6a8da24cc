//! Build progress for people: a spinner with the current step on a terminal, one line per step
//! otherwise (CI logs), or nothing (library callers).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

enum Display {
    Bar(ProgressBar),
    Lines(String),
    Silent,
}

/// Reports the steps of a build.
pub struct Progress {
    display: Display,
    total: usize,
    done: AtomicUsize,
}

impl Progress {
    /// `total` steps, labelled with `prefix` (the role): a spinner when stderr is a terminal,
    /// otherwise one line per step.
    pub fn new(total: usize, prefix: &str) -> Self {
        let display = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {prefix} [{pos}/{len}] {msg} ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.set_prefix(prefix.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Bar(bar)
        } else {
            Display::Lines(prefix.to_owned())
        };
        Self {
            display,
            total,
            done: AtomicUsize::new(0),
        }
    }

    /// A progress that says nothing.
    pub fn silent() -> Self {
        Self {
            display: Display::Silent,
            total: 0,
            done: AtomicUsize::new(0),
        }
    }

    /// Starts the next step.
    pub fn step(&self, message: &str) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.display {
            Display::Bar(bar) => {
                bar.set_position(n.saturating_sub(1) as u64);
                bar.set_message(message.to_owned());
            }
            Display::Lines(prefix) => eprintln!("{prefix} [{n}/{}] {message}", self.total),
            Display::Silent => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }
}
