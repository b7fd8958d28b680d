//! Timer units: when a timer is due (its monotonic settings and calendar events), starting
//! the unit it triggers, and what `service ls` says it waits for.

use super::*;

use super::decide::{Elapse, TimerClock, TimerRun};

impl Manager {
    /// Starts the units of the timers that elapsed, and works out when each timer is next due.
    pub(super) fn run_timers(&mut self) {
        let now = Instant::now();
        let timers: Vec<String> = self
            .units
            .iter()
            .filter(|(_, r)| r.state == State::Active && r.timer.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in timers {
            let Some(next) = self.next_elapse(&name) else {
                self.set_timer_next(&name, None);
                continue;
            };
            if next.0 > now {
                self.set_timer_next(&name, Some(next));
                continue;
            }
            let target = self.units[&name]
                .timer
                .as_ref()
                .map(|t| t.target.clone())
                .unwrap_or_default();
            let started = self.request_start(std::slice::from_ref(&target), FreshState::No);
            let r = self.units.get_mut(&name).unwrap_or_else(|| unreachable!());
            match started {
                Ok(_) => log_line(r, &format!("feather: elapsed: starting {target}")),
                Err(why) => log_line(
                    r,
                    &format!("feather: elapsed: cannot start {target}: {why}"),
                ),
            }
            if let Some(timer) = r.timer.as_mut() {
                timer.last_trigger = Some((now, local_now()));
            }
            let next = self.next_elapse(&name);
            self.set_timer_next(&name, next);
        }
    }

    pub(super) fn set_timer_next(&mut self, name: &str, next: Option<Elapse>) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let Some(timer) = r.timer.as_mut() else {
            return;
        };
        timer.next = next.map(|(at, _)| at);
        r.status_text = Some(match next {
            Some((at, wall)) => {
                let wall = wall.unwrap_or_else(|| {
                    local_now()
                        + at.saturating_duration_since(Instant::now())
                            .as_secs_f64()
                            .ceil() as i64
                });
                format!("next: {} → {}", crate::calendar::format(wall), timer.target)
            }
            None => format!("elapsed: nothing left to trigger {}", timer.target),
        });
    }

    /// When the timer `name` is next due: the earliest of its settings that has not
    /// triggered yet (a time at or before its last trigger counts as done, as in systemd).
    pub(super) fn next_elapse(&self, name: &str) -> Option<Elapse> {
        let r = self.units.get(name)?;
        let timer = r.timer.as_ref()?;
        let settings = r.unit.timer.as_ref()?;
        let target = self.units.get(&timer.target);
        let clock = TimerClock {
            now: Instant::now(),
            now_wall: local_now_precise(),
            started: timer.started,
            started_wall: timer.started_wall,
            vm_boot: self.vm_boot,
            target_activated: target.and_then(|t| t.last_activated),
            target_deactivated: target.and_then(|t| t.last_deactivated),
            last_trigger: timer.last_trigger,
        };
        decide::next_elapse(settings, &timer.calendar, &clock)
    }
}

/// The local time as seconds since the epoch (the epoch shifted by the zone's offset).
pub(super) fn local_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    unix + crate::raw::local_offset(unix)
}

/// The local time as seconds since the epoch, with their fraction.
pub(super) fn local_now_precise() -> f64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    unix + crate::raw::local_offset(unix as i64) as f64
}

/// Checks a timer's settings and starts it: it needs something that triggers it, and
/// calendar events feather understands.
pub(super) fn start_timer(r: &Runtime, target: String) -> Result<TimerRun, StartError> {
    let settings = r.unit.timer.clone().unwrap_or_default();
    if settings.on_active.is_empty()
        && settings.on_boot.is_empty()
        && settings.on_unit_active.is_empty()
        && settings.on_unit_inactive.is_empty()
        && settings.on_calendar.is_empty()
    {
        return Err(StartError::TimerWithoutTrigger(r.unit.name.to_string()));
    }
    let calendar = settings
        .on_calendar
        .iter()
        .map(|text| crate::calendar::CalendarSpec::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TimerRun {
        started: Instant::now(),
        started_wall: local_now(),
        calendar,
        last_trigger: None,
        next: None,
        target,
    })
}
