//! `OnCalendar=` of timer units: systemd's calendar events in the forms units use —
//! `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`/`annually`, `quarterly`,
//! `semiannually`, and `[WEEKDAYS] [YEAR-MONTH-DAY] [HOUR:MINUTE[:SECOND]]` where each field is
//! `*`, a number, a list (`6,18`), a range (`Mon..Fri`, `1..5`) or a repetition (`0/15`, `*/2`).
//! Times are the machine's local time. What is not understood is an error naming the value,
//! never a guess.

/// Allowed values of one field; `None` is `*`.
type Field = Option<Vec<u32>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalendarSpec {
    /// As written, for messages.
    pub text: String,
    /// 0 = Monday … 6 = Sunday.
    weekdays: Field,
    years: Field,
    months: Field,
    days: Field,
    hours: Field,
    minutes: Field,
    seconds: Field,
}

/// An `OnCalendar=` value feather does not understand. The problem is part of the message
/// (not a `source()`), so it is printed once.
#[derive(Debug, thiserror::Error)]
#[error("OnCalendar={text:?}: {problem}")]
pub struct CalendarError {
    pub text: String,
    pub problem: CalendarProblem,
}

/// What is wrong in an `OnCalendar=` value.
#[derive(Debug, thiserror::Error)]
pub enum CalendarProblem {
    #[error("time zones are not supported yet (local time is used)")]
    TimeZone,
    #[error("a time is HOUR:MINUTE or HOUR:MINUTE:SECOND")]
    BadTime,
    #[error("a date is YEAR-MONTH-DAY or MONTH-DAY")]
    BadDate,
    #[error("days counted from the month's end (~) are not supported yet")]
    FromMonthEnd,
    #[error("{0:?} is neither a date nor a time here")]
    NeitherDateNorTime(String),
    #[error("{0:?} is not a number")]
    NotNumber(String),
    #[error("{value} is outside {min}..{max}")]
    OutOfRange { value: u32, min: u32, max: u32 },
    #[error("{0:?} is not a repetition")]
    NotRepetition(String),
    #[error("{0:?}: a repetition of 0")]
    ZeroRepetition(String),
    #[error("{0:?} is not a weekday")]
    NotWeekday(String),
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl CalendarSpec {
    pub fn parse(text: &str) -> Result<CalendarSpec, CalendarError> {
        let error = |problem: CalendarProblem| CalendarError {
            text: text.to_owned(),
            problem,
        };
        let normalised = match text.trim().to_ascii_lowercase().as_str() {
            "minutely" => "*-*-* *:*:00".to_owned(),
            "hourly" => "*-*-* *:00:00".to_owned(),
            "daily" => "*-*-* 00:00:00".to_owned(),
            "weekly" => "Mon *-*-* 00:00:00".to_owned(),
            "monthly" => "*-*-01 00:00:00".to_owned(),
            "yearly" | "annually" => "*-01-01 00:00:00".to_owned(),
            "quarterly" => "*-01,04,07,10-01 00:00:00".to_owned(),
            "semiannually" => "*-01,07-01 00:00:00".to_owned(),
            _ => text.trim().to_owned(),
        };
        let mut words: Vec<&str> = normalised.split_whitespace().collect();
        if words
            .last()
            .is_some_and(|w| w.eq_ignore_ascii_case("utc") || w.contains('/') && !w.contains(':'))
        {
            return Err(error(CalendarProblem::TimeZone));
        }
        let mut spec = CalendarSpec {
            text: text.to_owned(),
            weekdays: None,
            years: None,
            months: None,
            days: None,
            hours: Some(vec![0]),
            minutes: Some(vec![0]),
            seconds: Some(vec![0]),
        };
        if words
            .first()
            .is_some_and(|w| w.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        {
            spec.weekdays = Some(weekdays(words.remove(0)).map_err(error)?);
        }
        let mut date_seen = false;
        let mut time_seen = false;
        for word in words {
            if word.contains(':') && !time_seen {
                time_seen = true;
                let parts: Vec<&str> = word.split(':').collect();
                if !(2..=3).contains(&parts.len()) {
                    return Err(error(CalendarProblem::BadTime));
                }
                spec.hours = field(parts[0], 0, 23).map_err(error)?;
                spec.minutes = field(parts[1], 0, 59).map_err(error)?;
                spec.seconds = match parts.get(2) {
                    Some(s) => field(s.split('.').next().unwrap_or(s), 0, 59).map_err(error)?,
                    None => Some(vec![0]),
                };
            } else if word.contains('-') && !date_seen && !time_seen {
                date_seen = true;
                let parts: Vec<&str> = word.split('-').collect();
                let (year, month, day) = match parts.as_slice() {
                    [y, m, d] => (Some(*y), *m, *d),
                    [m, d] => (None, *m, *d),
                    _ => return Err(error(CalendarProblem::BadDate)),
                };
                if let Some(year) = year {
                    spec.years = field(year, 1970, 2199).map_err(error)?;
                }
                spec.months = field(month, 1, 12).map_err(error)?;
                if day.contains('~') {
                    return Err(error(CalendarProblem::FromMonthEnd));
                }
                spec.days = field(day, 1, 31).map_err(error)?;
            } else {
                return Err(error(CalendarProblem::NeitherDateNorTime(word.to_owned())));
            }
        }
        Ok(spec)
    }

    /// The first moment strictly after `after` (local seconds since the epoch) that matches, or
    /// None if there is none in the next five years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = after + 1;
        let (mut day, first_second) = (start.div_euclid(86_400), start.rem_euclid(86_400));
        let mut from = first_second;
        for _ in 0..(366 * 5) {
            let (y, m, d) = civil_from_days(day);
            // 1970-01-01 was a Thursday (3, counting Monday as 0).
            let weekday = (day + 3).rem_euclid(7) as u32;
            if matches(&self.years, y as u32)
                && matches(&self.months, m)
                && matches(&self.days, d)
                && matches(&self.weekdays, weekday)
            {
                if let Some(second) = self.first_time_from(from) {
                    return Some(day * 86_400 + second);
                }
            }
            day += 1;
            from = 0;
        }
        None
    }

    /// The first second of a day, at or after `from`, whose time matches.
    fn first_time_from(&self, from: i64) -> Option<i64> {
        let (h0, m0, s0) = (from / 3600, from % 3600 / 60, from % 60);
        for h in h0..24 {
            if !matches(&self.hours, h as u32) {
                continue;
            }
            let m_start = if h == h0 { m0 } else { 0 };
            for m in m_start..60 {
                if !matches(&self.minutes, m as u32) {
                    continue;
                }
                let s_start = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = (s_start..60).find(|s| matches(&self.seconds, *s as u32)) {
                    return Some(h * 3600 + m * 60 + s);
                }
            }
        }
        None
    }
}

fn matches(field: &Field, value: u32) -> bool {
    field.as_ref().is_none_or(|values| values.contains(&value))
}

/// `*`, `5`, `1,15`, `1..5`, `0/15`, `*/2`, `8..18/2`, combined with commas.
fn field(text: &str, min: u32, max: u32) -> Result<Field, CalendarProblem> {
    if text == "*" {
        return Ok(None);
    }
    let number = |t: &str| -> Result<u32, CalendarProblem> {
        let n: u32 = t
            .parse()
            .map_err(|_| CalendarProblem::NotNumber(t.to_owned()))?;
        if n < min || n > max {
            return Err(CalendarProblem::OutOfRange { value: n, min, max });
        }
        Ok(n)
    };
    let mut values = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                Some(
                    step.parse::<u32>()
                        .map_err(|_| CalendarProblem::NotRepetition(step.to_owned()))?,
                ),
            ),
            None => (part, None),
        };
        let (low, high) = match range.split_once("..") {
            Some((a, b)) => (number(a)?, number(b)?),
            None if range == "*" => (min, max),
            // A repetition from a start runs to the end of the range.
            None if step.is_some() => (number(range)?, max),
            None => {
                let n = number(range)?;
                (n, n)
            }
        };
        if step == Some(0) {
            return Err(CalendarProblem::ZeroRepetition(part.to_owned()));
        }
        let mut v = low;
        while v <= high {
            values.push(v);
            v += step.unwrap_or(1);
        }
    }
    values.sort_unstable();
    values.dedup();
    Ok(Some(values))
}

/// `Mon`, `Mon..Fri`, `Sat,Sun`, `Monday`.
fn weekdays(text: &str) -> Result<Vec<u32>, CalendarProblem> {
    let day = |t: &str| -> Result<u32, CalendarProblem> {
        let t = t.to_ascii_lowercase();
        WEEKDAYS
            .iter()
            .position(|d| t.len() >= 3 && t.starts_with(d))
            .map(|i| i as u32)
            .ok_or(CalendarProblem::NotWeekday(t))
    };
    let mut values = Vec::new();
    for part in text.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    values.push(d);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => values.push(day(part)?),
        }
    }
    Ok(values)
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD HH:MM:SS` for local seconds since the epoch.
pub fn format(local: i64) -> String {
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let s = local.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local seconds of a date and time (days_from_civil's inverse, checked against format).
    fn at(text: &str) -> i64 {
        let mut t = 0;
        // Walk days from the epoch: fine for tests.
        let (date, time) = text.split_once(' ').unwrap();
        while format(t).split_once(' ').unwrap().0 != date {
            t += 86_400;
        }
        let parts: Vec<i64> = time.split(':').map(|p| p.parse().unwrap()).collect();
        t + parts[0] * 3600 + parts[1] * 60 + parts[2]
    }

    fn next(spec: &str, after: &str) -> String {
        format(
            CalendarSpec::parse(spec)
                .unwrap()
                .next_after(at(after))
                .unwrap(),
        )
    }

    #[test]
    fn shorthands() {
        assert_eq!(next("daily", "2026-11-22 23:50:00"), "2026-11-23 00:00:00");
        assert_eq!(next("hourly", "2026-11-22 23:50:00"), "2026-11-23 00:00:00");
        assert_eq!(next("hourly", "2026-11-22 10:00:00"), "2026-11-22 11:00:00");
        // 2026-11-22 is a Sunday: weekly is Monday 00:00.
        assert_eq!(next("weekly", "2026-11-22 12:00:00"), "2026-11-23 00:00:00");
        assert_eq!(next("weekly", "2026-11-23 00:00:00"), "2026-11-30 00:00:00");
        assert_eq!(
            next("monthly", "2026-12-15 00:00:00"),
            "2027-01-01 00:00:00"
        );
        assert_eq!(
            next("minutely", "2026-11-22 10:00:59"),
            "2026-11-22 10:01:00"
        );
    }

    #[test]
    fn dates_times_weekdays_lists_and_repetitions() {
        assert_eq!(
            next("*-*-* 06:30:15", "2026-11-22 06:30:15"),
            "2026-11-23 06:30:15"
        );
        assert_eq!(
            next("*-*-* 6,18:00", "2026-11-22 07:00:00"),
            "2026-11-22 18:00:00"
        );
        // Debian's e2scrub_all.timer.
        assert_eq!(
            next("Sun *-*-* 03:10:00", "2026-11-22 04:00:00"),
            "2026-11-29 03:10:00"
        );
        // Saturday 2026-11-28: Mon..Fri skips to Monday.
        assert_eq!(
            next("Mon..Fri *-*-* 09:00", "2026-11-27 10:00:00"),
            "2026-11-30 09:00:00"
        );
        assert_eq!(
            next("Sat,Sun 12:00", "2026-11-23 00:00:00"),
            "2026-11-28 12:00:00"
        );
        assert_eq!(next("*:0/15", "2026-11-22 10:16:00"), "2026-11-22 10:30:00");
        assert_eq!(
            next("*:*:0/20", "2026-11-22 10:16:41"),
            "2026-11-22 10:17:00"
        );
        // A date that never comes has no next elapse.
        let never = CalendarSpec::parse("2027-02-29 00:00:00").unwrap();
        assert_eq!(never.next_after(at("2026-01-01 00:00:00")), None);
        assert_eq!(
            next("*-02-29 12:00", "2026-01-01 00:00:00"),
            "2028-02-29 12:00:00"
        );
        assert_eq!(
            next("12-25 08:00", "2026-12-25 09:00:00"),
            "2027-12-25 08:00:00"
        );
    }

    #[test]
    fn what_is_not_understood_is_refused_with_the_value() {
        for bad in [
            "*-*-* 25:00",
            "Funday",
            "*-*~01",
            "*-*-* 1:2:3:4",
            "daily UTC",
            "*:0/0",
            "soon",
        ] {
            let e = CalendarSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
