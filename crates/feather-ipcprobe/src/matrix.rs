//! The probe's result: one outcome per channel and direction, what was expected of it, and
//! its renderings.

use serde::{Deserialize, Serialize};

/// Where the listener is and where the client tries from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// A client on the host tries to reach a listener in a VM.
    HostToVm,
    /// A client in a VM tries to reach a listener on the host (or the host's kernel state).
    VmToHost,
    /// A client in one VM tries to reach a listener in another.
    VmToVm,
    /// Client and listener in the same VM, each entered by its own `feather exec`: must work.
    InsideVm,
    /// Client started by the VM's init (its first program), listener by `feather exec`: must
    /// work too — the two roads into a VM must not end in separate sandboxes.
    InitToExec,
}

impl Direction {
    pub const ALL: [Direction; 5] = [
        Direction::HostToVm,
        Direction::VmToHost,
        Direction::VmToVm,
        Direction::InsideVm,
        Direction::InitToExec,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Direction::HostToVm => "host→VM",
            Direction::VmToHost => "VM→host",
            Direction::VmToVm => "VM→VM",
            Direction::InsideVm => "inside one VM",
            Direction::InitToExec => "inside: init's → exec'd",
        }
    }
}

/// What a client found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The client reached the listener (or the host state it tried to change or read).
    Reached,
    /// The name exists on the client's side but talking fails (ECONNREFUSED, ENXIO, no
    /// answer): the object seen is not the listener's.
    Refused,
    /// The client's side has no such object (ENOENT, ESRCH, another process under that pid).
    Invisible,
    /// A permission check, a read-only mount or the seccomp filter refused (EPERM, EACCES,
    /// EROFS), or the kernel has no such facility (ENOSYS).
    Denied,
    /// The cell does not exist here (no D-Bus system bus runs; no host address but lo).
    NotApplicable,
    /// The probe itself could not run the cell.
    Failed,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Reached => "reached",
            Kind::Refused => "refused",
            Kind::Invisible => "invisible",
            Kind::Denied => "denied",
            Kind::NotApplicable => "n/a",
            Kind::Failed => "probe failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub kind: Kind,
    pub detail: String,
}

impl Outcome {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Outcome {
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies a failed call by its errno.
    pub fn from_errno(what: &str, errno: nix::errno::Errno) -> Self {
        use nix::errno::Errno::*;
        let kind = match errno {
            ENOENT | ESRCH | ENOKEY | ENODEV | ENOTDIR => Kind::Invisible,
            ECONNREFUSED | ENXIO | ENETUNREACH | EHOSTUNREACH | EADDRNOTAVAIL | EAGAIN
            | ETIMEDOUT | ECONNRESET | EPIPE => Kind::Refused,
            // ENOSYS: the kernel lacks the facility altogether (no module support, no kexec).
            EPERM | EACCES | EROFS | ENOSYS => Kind::Denied,
            _ => Kind::Failed,
        };
        Outcome::new(kind, format!("{what}: {}", errno.desc()))
    }
}

/// What a cell must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Across the boundary: anything but Reached (or Failed).
    Blocked,
    /// Inside one VM: Reached.
    Works,
    /// A flow that exists by design; the reason is in [`Row::by_design`]. Reached is expected
    /// and not a leak.
    OneWayByDesign,
    /// A facility the VM does not get at all (keyrings): Denied inside the VM too.
    DeniedByDesign,
    /// Across the boundary, but a shuttle policy rule opens it ([`Cell::rule`]): Reached.
    OpenedByPolicy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub direction: Direction,
    pub outcome: Outcome,
    pub expect: Expect,
    /// The policy rule (`FILE:LINE`) that opens this cell, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Cell {
    /// Whether the outcome is what the cell must show. NotApplicable always passes.
    pub fn holds(&self) -> bool {
        let kind = self.outcome.kind;
        if kind == Kind::NotApplicable {
            return true;
        }
        match self.expect {
            Expect::Blocked => !matches!(kind, Kind::Reached | Kind::Failed),
            Expect::Works | Expect::OpenedByPolicy => kind == Kind::Reached,
            Expect::OneWayByDesign => kind != Kind::Failed,
            Expect::DeniedByDesign => kind == Kind::Denied,
        }
    }

    /// A cross-boundary cell that was reached although it must not be.
    pub fn is_leak(&self) -> bool {
        self.expect == Expect::Blocked && self.outcome.kind == Kind::Reached
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Stable identifier, e.g. `unix-stream:/tmp`.
    pub channel: String,
    /// Group heading in the rendered matrix.
    pub group: String,
    pub cells: Vec<Cell>,
    /// Why a one-way or denied flow is so by design, when one of its cells says so.
    pub by_design: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Matrix {
    pub rows: Vec<Row>,
    /// Facts about the run: kernel, Landlock, seccomp, what VMs.
    pub notes: Vec<String>,
}

impl Matrix {
    pub fn failures(&self) -> Vec<(&Row, &Cell)> {
        self.rows
            .iter()
            .flat_map(|row| row.cells.iter().map(move |cell| (row, cell)))
            .filter(|(_, cell)| !cell.holds())
            .collect()
    }

    pub fn cell(&self, channel: &str, direction: Direction) -> Option<&Cell> {
        self.rows
            .iter()
            .find(|row| row.channel == channel)?
            .cells
            .iter()
            .find(|cell| cell.direction == direction)
    }

    /// The text of a cell for tables: the outcome word, marked when it does not hold.
    pub fn cell_text(cell: &Cell) -> String {
        let mark = if cell.holds() {
            ""
        } else if cell.is_leak() {
            "LEAK: "
        } else {
            "BROKEN: "
        };
        let design = match (cell.expect, cell.outcome.kind) {
            (Expect::OneWayByDesign, Kind::Reached) => " (by design)",
            (Expect::DeniedByDesign, Kind::Denied) => " (by design)",
            _ => "",
        };
        let rule = match &cell.rule {
            Some(rule) => format!(" (policy {rule})"),
            None => String::new(),
        };
        format!("{mark}{}{design}{rule}", cell.outcome.kind.word())
    }

    /// The matrix as Markdown: the table, the details of every cell, and the by-design flows.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# IPC confinement matrix\n\n");
        out.push_str(
            "Generated by `sudo feather check ipc --markdown > docs/ipc-matrix.md` (the probe that `tests/security/ipc_matrix.rs` asserts cell by cell); \
             do not edit by hand. Each cell: a listener in one place, a client in another, and \
             what the client found — `reached`, `refused` (the name exists but leads nowhere), \
             `invisible` (no such object on the client's side), `denied` (a permission check, a \
             read-only mount or the seccomp filter), `n/a` (the cell does not exist on this \
             machine). Cross-boundary cells must not be `reached`; cells inside one VM must be, \
             except where marked *by design* (see the list below the table). A cell that a \
             shuttle policy rule opens (docs/shuttle.md) is marked with the rule and must be \
             `reached`; this matrix was made with no rules, so none is open.\n\n",
        );
        for note in &self.notes {
            out.push_str(&format!("- {note}\n"));
        }
        out.push('\n');
        let mut group = String::new();
        for row in &self.rows {
            if row.group != group {
                group = row.group.clone();
                out.push_str(&format!("\n## {group}\n\n| channel |"));
                for direction in Direction::ALL {
                    out.push_str(&format!(" {} |", direction.label()));
                }
                out.push_str(&format!("\n|---|{}\n", "---|".repeat(Direction::ALL.len())));
            }
            out.push_str(&format!("| `{}` |", row.channel));
            for direction in Direction::ALL {
                match row.cells.iter().find(|c| c.direction == direction) {
                    Some(cell) => out.push_str(&format!(" {} |", Self::cell_text(cell))),
                    None => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
        out.push_str("\n## Flows that exist by design\n\n");
        for row in self.rows.iter().filter(|r| r.by_design.is_some()) {
            out.push_str(&format!(
                "- `{}`: {}\n",
                row.channel,
                row.by_design.as_deref().unwrap_or_default()
            ));
        }
        out.push_str("\n## What each client saw\n\n| channel | direction | outcome | detail |\n|---|---|---|---|\n");
        for row in &self.rows {
            for cell in &row.cells {
                out.push_str(&format!(
                    "| `{}` | {} | {} | {} |\n",
                    row.channel,
                    cell.direction.label(),
                    cell.outcome.kind.word(),
                    stable(&cell.outcome.detail).replace('|', "\\|")
                ));
            }
        }
        out
    }
}

/// A detail without what changes from run to run (tokens, System V keys, ports, pids, the
/// subnet a test root was given, the names of veths and bridges of whatever VMs run at the same
/// time), so that the generated document changes only when an outcome does.
fn stable(detail: &str) -> String {
    let rules = [
        (r"fp\d+", "fp<run>"),
        (r"0x4650[0-9a-f]{4}", "<key>"),
        (r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}):\d+", "$1:<port>"),
        (r"\b10\.\d{1,3}\.\d{1,3}\.(\d{1,3})\b", "<subnet>.$1"),
        (r"(?:fth[0-9a-f]{8}, )*fth[0-9a-f]{8}", "fth<id>…"),
        (r"(?:feather-n\d+, )*feather-n\d+", "feather-n<N>…"),
        (r"\b(pid|process|to|of|segment) \d+", "$1 <n>"),
    ];
    let mut text = detail.to_owned();
    for (pattern, replacement) in rules {
        if let Ok(re) = regex::Regex::new(pattern) {
            text = re.replace_all(&text, replacement).into_owned();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(direction: Direction, expect: Expect, kind: Kind) -> Cell {
        Cell {
            direction,
            expect,
            outcome: Outcome::new(kind, ""),
            rule: None,
        }
    }

    #[test]
    fn a_reached_cross_boundary_cell_is_a_leak_and_a_silent_inside_cell_is_broken() {
        assert!(cell(Direction::VmToHost, Expect::Blocked, Kind::Refused).holds());
        assert!(cell(Direction::VmToHost, Expect::Blocked, Kind::Denied).holds());
        let leak = cell(Direction::VmToVm, Expect::Blocked, Kind::Reached);
        assert!(!leak.holds() && leak.is_leak());
        assert!(
            !cell(Direction::HostToVm, Expect::Blocked, Kind::Failed).holds(),
            "a probe error never passes"
        );
        let broken = cell(Direction::InsideVm, Expect::Works, Kind::Invisible);
        assert!(!broken.holds() && !broken.is_leak());
        assert!(cell(Direction::InsideVm, Expect::DeniedByDesign, Kind::Denied).holds());
        assert!(!cell(Direction::InsideVm, Expect::DeniedByDesign, Kind::Reached).holds());
        assert!(cell(Direction::VmToHost, Expect::OneWayByDesign, Kind::Reached).holds());
        assert!(cell(Direction::VmToHost, Expect::Blocked, Kind::NotApplicable).holds());

        let matrix = Matrix {
            rows: vec![Row {
                channel: "signal".into(),
                group: "Processes".into(),
                cells: vec![leak, broken],
                by_design: None,
            }],
            notes: vec![],
        };
        assert_eq!(matrix.failures().len(), 2);
        let text = matrix.to_markdown();
        assert!(
            text.contains("| `signal` | — | — | LEAK: reached | BROKEN: invisible | — |"),
            "{text}"
        );
    }

    #[test]
    fn details_lose_what_changes_between_runs() {
        assert_eq!(
            stable("connect /tmp/fp4242h.stream: refused; shmget key 0x4650beef; connect 127.0.0.1:33447; no process 812 here; SIGUSR1 delivered to 5"),
            "connect /tmp/fp<run>h.stream: refused; shmget key <key>; connect 127.0.0.1:<port>; no process <n> here; SIGUSR1 delivered to <n>"
        );
        assert_eq!(
            stable("connect 10.78.1.2:4000: timed out; links: eth0, feather-n0, feather-n3, fthae21138a, fthe1035206, lo"),
            "connect <subnet>.2:<port>: timed out; links: eth0, feather-n<N>…, fth<id>…, lo"
        );
    }
}
