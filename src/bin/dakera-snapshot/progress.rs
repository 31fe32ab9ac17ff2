//! Progress bars on stderr (indicatif), driven by the library's `Progress` reports.

use dakera_snapshot::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

/// One bar at a time: each phase the library begins gets a bar with bytes, rate and ETA.
/// Disabled (nothing drawn) with `--quiet` or when stderr is not a terminal.
#[derive(Debug)]
pub struct Bars {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(enabled: bool) -> Self {
        Bars {
            enabled,
            bar: Mutex::new(None),
        }
    }

    /// Runs `f` (which prints to stderr) with the bar hidden, so lines do not tear it.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        let bar = self.bar.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }
}

impl Progress for Bars {
    fn begin(&self, what: &str, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        // Keep moving (and the rate fresh) while a phase makes no progress for a while.
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.replace(bar) {
                complete(&old);
            }
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(b) = slot.as_ref() {
                b.inc(bytes);
            }
        }
    }

    fn end(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(b) = slot.take() {
                complete(&b);
            }
        }
    }
}

/// Ends a phase's bar at 100% (its total is an estimate from the store's counts, or the
/// input's size), drawn once, then cleared.
fn complete(bar: &ProgressBar) {
    if let Some(total) = bar.length() {
        bar.set_position(total);
    }
    bar.tick();
    bar.finish_and_clear();
}
