//! The progress display of `checkpoint --export`, `migrate` and `serve`: on stderr, only when
//! stderr is a terminal (a script or a pipe sees nothing extra), and only once an action has
//! taken more than a moment.

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
}

impl Display {
    pub fn new() -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            bar.set_style(spinner());
            bar
        });
        Display {
            bar,
            started: Instant::now(),
            phase: String::new(),
            sized: false,
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
                bar.set_message(self.phase.clone());
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
                } else {
                    bar.set_message(format!("{}: {}", self.phase, indicatif::HumanBytes(done)));
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
