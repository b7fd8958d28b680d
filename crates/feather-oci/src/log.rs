//! `--log` and `--log-format json`: the engine's shim reads the runtime's last error from the
//! log file (one JSON object a line, runc's logrus format) and shows it to its user.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

struct Sink {
    /// Opened at start: `exec` enters the container's mount namespace, where the engine's
    /// path does not lead to the file.
    file: Option<File>,
    json: bool,
    debug: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

pub fn init(path: Option<PathBuf>, format: &str, debug: bool) {
    let file = path.and_then(|path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| eprintln!("feather-oci: --log {}: {e}", path.display()))
            .ok()
    });
    let _ = SINK.set(Sink {
        file,
        json: format == "json",
        debug,
    });
}

pub fn error(message: &str) {
    write("error", message);
}

pub fn warn(message: &str) {
    write("warning", message);
}

pub fn debug(message: &str) {
    if SINK.get().is_some_and(|s| s.debug) {
        write("debug", message);
    }
}

fn write(level: &str, message: &str) {
    let Some(sink) = SINK.get() else {
        to_stderr(level, message);
        return;
    };
    let line = if sink.json {
        serde_json::json!({"level": level, "msg": message, "time": now_rfc3339()}).to_string()
    } else {
        format!("time=\"{}\" level={level} msg={message:?}", now_rfc3339())
    };
    match &sink.file {
        Some(file) => {
            let written = writeln!(&*file, "{line}");
            if written.is_err() || level == "error" {
                to_stderr(level, message);
            }
        }
        None => to_stderr(level, message),
    }
}

/// A message for a person: it may quote what a container chose (its paths, its services'
/// log lines), so it is escaped for the terminal; the log file keeps it exact.
fn to_stderr(level: &str, message: &str) {
    eprintln!(
        "feather-oci: {level}: {}",
        feather_core::display::escape_for_terminal(message)
    );
}

/// The current time as RFC 3339 in UTC (what runc's state and logs carry).
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_nanos())
}

pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_796_342_400, 5),
            "2026-12-04T00:00:00.000000005Z"
        );
    }
}
