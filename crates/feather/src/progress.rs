//! The progress display of `checkpoint --export`, `migrate` and `serve`: on stderr, only when
//! both stdout and stderr are terminals (a script, a pipe or `--json` read by a program sees
//! nothing extra), and only once an action has taken more than a moment. A migration adds the
//! estimated freeze before it, the time frozen so far during it, and, for post-copy, the pages
//! of memory still to reach the receiver.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use feather_vm::checkpoint::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long an action runs before its progress is shown.
const MOMENT: Duration = Duration::from_millis(300);

pub struct Display {
    bar: Option<ProgressBar>,
    started: Instant,
    phase: String,
    /// Bytes known to have a total: the bar shows them as such.
    sized: bool,
    /// Since when a migration's VM is frozen, and the estimate said before.
    frozen: Option<Instant>,
    estimate: Option<Duration>,
}

impl Display {
    pub fn new() -> Display {
        let terminals = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
        let bar = terminals.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            bar.set_style(spinner());
            bar
        });
        Display {
            bar,
            started: Instant::now(),
            phase: String::new(),
            sized: false,
            frozen: None,
            estimate: None,
        }
    }

    /// Shows `step`, once the action has taken more than a moment.
    pub fn show(&mut self, step: Progress) {
        let Some(bar) = &self.bar else { return };
        match step {
            Progress::Phase(phase) => {
                self.phase = phase.to_owned();
                self.sized = false;
                bar.set_style(spinner());
                bar.set_length(0);
                bar.set_position(0);
                bar.reset_eta();
                bar.set_message(self.described());
            }
            Progress::EstimatedFreeze(estimate) => {
                self.estimate = Some(estimate);
                bar.set_message(self.described());
            }
            Progress::Frozen => {
                self.frozen = Some(Instant::now());
                bar.set_message(self.described());
            }
            Progress::Resumed => {
                self.frozen = None;
                self.estimate = None;
                bar.set_message(self.described());
            }
            Progress::Pages { left, total } => {
                bar.set_message(format!(
                    "{}: about {left} of {total} pages ({}) still to arrive",
                    self.phase,
                    indicatif::HumanBytes(left * 4096)
                ));
            }
            Progress::Bytes { done, total } => {
                if total > 0 && !self.sized {
                    self.sized = true;
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.reset_eta();
                }
                if total > 0 {
                    bar.set_length(total);
                    bar.set_message(self.described());
                } else {
                    bar.set_message(format!(
                        "{}: {}",
                        self.described(),
                        indicatif::HumanBytes(done)
                    ));
                }
                bar.set_position(done);
            }
        }
        if self.started.elapsed() >= MOMENT && bar.is_hidden() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        if self.started.elapsed() >= MOMENT {
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.tick();
        }
    }

    /// The phase, with the freeze: estimated before it, so far during it.
    fn described(&self) -> String {
        match (self.frozen, self.estimate) {
            (Some(since), Some(estimate)) => format!(
                "{} [frozen {} ms, estimated {} ms]",
                self.phase,
                since.elapsed().as_millis(),
                estimate.as_millis()
            ),
            (Some(since), None) => {
                format!("{} [frozen {} ms]", self.phase, since.elapsed().as_millis())
            }
            (None, Some(estimate)) => {
                format!(
                    "{} [estimated freeze {} ms]",
                    self.phase,
                    estimate.as_millis()
                )
            }
            (None, None) => self.phase.clone(),
        }
    }

    /// Removes the display before the final words are printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn spinner() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}
