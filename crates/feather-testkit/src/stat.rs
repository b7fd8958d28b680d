//! A host process's stat line (`/proc/PID/stat`), read once: its state, parent and start
//! time. Its command (field 2) may hold spaces and parentheses, so the fields are counted
//! from after its last closing parenthesis.

/// What a test reads of a process's stat line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `T` (stopped), `Z` (ended, not yet reaped), `X`…
    pub state: char,
    pub parent: u32,
    /// Since boot, in clock ticks (field 22): with the pid, which process this is.
    pub start_ticks: u64,
}

impl Stat {
    /// The stat line `line` read (`/proc/PID/stat`, or its text from elsewhere: a VM's).
    pub fn parse(line: &str) -> Option<Stat> {
        let fields: Vec<&str> = line.rsplit_once(')')?.1.split_whitespace().collect();
        Some(Stat {
            state: fields.first()?.chars().next()?,
            parent: fields.get(1)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }

    /// Host process `pid`'s, None where there is none.
    pub fn of(pid: u32) -> Option<Stat> {
        Stat::read(&format!("/proc/{pid}"))
    }

    /// The process's or thread's whose `/proc` folder is `task` (`/proc/PID/task/TID` a
    /// thread's), None where there is none.
    fn read(task: &str) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("{task}/stat")).ok()?)
    }

    /// Whether the process runs: it has not ended (a zombie, ended but not reaped, has).
    pub fn runs(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Whether host process `pid` is there and runs ([`Stat::runs`]); a pid no process can have
/// (negative, too large) is none.
pub fn runs(pid: impl TryInto<u32>) -> bool {
    let stat = pid.try_into().ok().and_then(Stat::of);
    stat.is_some_and(|stat| stat.runs())
}

/// Whether thread `tid` of this process is asleep in read(2) or recvfrom(2) (waiting for
/// data: a read that sleeps otherwise does so uninterruptibly).
pub fn asleep_in_read(tid: i32) -> bool {
    use nix::libc::{SYS_read, SYS_recvfrom};
    let task = format!("/proc/self/task/{tid}");
    let asleep = Stat::read(&task).is_some_and(|stat| stat.state == 'S');
    // The call a thread that is off its CPU is in ("running" while it is on it).
    let call = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    let call = call.split_whitespace().next().and_then(|n| n.parse().ok());
    asleep && [Some(SYS_read), Some(SYS_recvfrom)].contains(&call)
}

/// Whether host process `pid` is stopped (SIGSTOP, Ctrl-Z).
pub fn stopped(pid: u32) -> bool {
    Stat::of(pid).is_some_and(|stat| stat.state == 'T')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields are counted from after the command's last closing parenthesis, whatever
    /// spaces and parentheses it holds.
    #[test]
    fn a_stat_line_is_read_past_a_command_with_parentheses() {
        let line = "42 (a) 1 2 (b) T 7 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: 'T',
                parent: 7,
                start_ticks: 12345
            }
        );
        assert!(stat.runs());
        assert!(runs(std::process::id()));
        assert!(!runs(-1));
    }
}
