//! How results are shown: tables for people, JSON for programs.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use feather_core::display::{escape_for_terminal, escape_path};
use feather_core::size::format_bytes;
use feather_oci::listing::ContainerSummary;
use feather_shuttle::view::RuleRow;
use feather_svc::manager::protocol::ServiceInfo;
use feather_vm::diff::{Change, Forbidden};
use feather_vm::inspect::{LimitsView, Process, Summary};
use serde::Serialize;
use std::path::Path;

use feather_core::say;
use feather_core::stdout::StdoutError;

/// What a printing function returns: its reader may have gone (see feather_core::stdout).
pub type Said = Result<(), StdoutError>;

pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Text a VM chose, made safe to show on a terminal (see feather_core::display).
fn shown(text: &str) -> String {
    escape_for_terminal(text).into_owned()
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(header.iter().map(Cell::new));
    table
}

pub fn vms(rows: &[Summary]) -> Said {
    let mut t = table(&[
        "NAME",
        "STATUS",
        "PROCS",
        "MEMORY",
        "LIMITS",
        "BASE",
        "NETWORK",
        "CREATED",
        "LAST EXIT",
    ]);
    let now = feather_core::state::now();
    for vm in rows {
        t.add_row(vec![
            vm.name.clone(),
            vm.status.to_string(),
            vm.processes.to_string(),
            vm.memory_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            limits_cell(&vm.limits),
            vm.base.display().to_string(),
            vm.network.clone(),
            format!("{} ago", age(now.saturating_sub(vm.created))),
            shown(&vm.last_exit.clone().unwrap_or_default()),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// OCI containers: the engine's id, the runtime root it keeps them in, what `state` says.
pub fn oci_containers(rows: &[ContainerSummary]) -> Said {
    let mut t = table(&[
        "OCI CONTAINER",
        "STATUS",
        "PID",
        "PROCS",
        "BASE",
        "RUNTIME ROOT",
        "CREATED",
    ]);
    for container in rows {
        t.add_row(vec![
            container.id.clone(),
            container.status.to_owned(),
            container
                .pid
                .map(|pid| pid.to_string())
                .unwrap_or_else(|| "-".into()),
            container.processes.to_string(),
            escape_path(Path::new(&container.base)).into_owned(),
            escape_path(&container.runtime_root).into_owned(),
            shown(&container.created),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// `mem 512M pids 2048 cpus 0.5 disk 10G`: the limits set, or `none`.
fn limits_cell(limits: &LimitsView) -> String {
    let mut parts = Vec::new();
    if let Some(bytes) = limits.memory {
        parts.push(format!("mem {}", format_bytes(bytes)));
    }
    if let Some(pids) = limits.pids {
        parts.push(format!("pids {pids}"));
    }
    if let Some(cpus) = limits.cpus {
        parts.push(format!("cpus {cpus}"));
    }
    if let Some(bytes) = limits.disk {
        parts.push(format!("disk {}", format_bytes(bytes)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

pub fn processes(rows: &[Process]) -> Said {
    let mut t = table(&["PID", "HOST PID", "UID", "COMMAND"]);
    for p in rows {
        t.add_row(vec![
            p.pid.to_string(),
            p.host_pid.to_string(),
            p.uid.to_string(),
            shown(&p.command),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// What commit applied: one change a line, `A /path`.
pub fn changes(changes: &[Change]) -> Said {
    for change in changes {
        say!("{} {}", change.kind.letter(), escape_path(&change.path))?;
    }
    Ok(())
}

/// What `diff` found: the kind, the size of the VM's version (its length, and the disk space
/// it takes when that is less, as for a sparse file), then the path, which is last so that
/// no name can shift the columns.
pub fn changes_with_sizes(changes: &[Change]) -> Said {
    let sizes: Vec<String> = changes.iter().map(size_of_change).collect();
    let width = sizes.iter().map(String::len).max().unwrap_or(0);
    for (change, size) in changes.iter().zip(&sizes) {
        say!(
            "{} {size:>width$}  {}{}{}{}{}",
            change.kind.letter(),
            forbidden_of(change),
            privileges_of(change),
            access_of(change),
            escape_path(&change.path),
            link_target_of(change)
        )?;
    }
    let total: u64 = changes.iter().map(|c| c.allocated).sum();
    if !changes.is_empty() {
        say!("total: {} on disk", human_bytes(total))?;
    }
    let forbidden = changes
        .iter()
        .filter(|c| c.forbidden.is_some_and(|why| why.past_a_defence()))
        .count();
    if forbidden > 0 {
        // On stderr, where it is seen even when the listing goes to a program or a file.
        eprintln!(
            "feather: warning: {forbidden} of these changes (marked \"never committed\") lie \
             where the VM cannot write by itself: either it got past a defence (see \"Changes \
             where a VM cannot write\" in docs/security.md), or it wrote there before that \
             folder was guarded (a state root registered since, or a layer imported or migrated \
             from a host where that path was none); `commit` refuses them: review all the VM \
             changed before committing the rest by name"
        );
    }
    let host_mounts = changes
        .iter()
        .filter(|c| c.forbidden == Some(Forbidden::HostMount))
        .count();
    if host_mounts > 0 {
        eprintln!(
            "feather: warning: {host_mounts} of these changes (marked \"never committed\") lie \
             at, beneath or over a filesystem mounted on the host where the VM's layer does not \
             reach (mounted under its base or on a layer's own folder after its start, an \
             automount point, or a layer's filesystem unmounted since, not mounted at its last \
             start, or not told apart from another: `commit` says which): the VM saw another \
             folder there; `commit` refuses them while it is so"
        );
    }
    Ok(())
}

/// `[mode 0755→0777, owner 0→65534] ` before the path of a change of who may use the entry
/// (before it, as [`privileges_of`]).
fn access_of(change: &Change) -> String {
    if change.access.is_empty() {
        return String::new();
    }
    format!("[{}] ", change.access_shown())
}

/// ` -> TARGET` after the path of a symlink (escaped as paths are).
fn link_target_of(change: &Change) -> String {
    match &change.link_target {
        Some(target) if change.kind != feather_vm::diff::ChangeKind::Deleted => {
            format!(" -> {}", escape_path(target))
        }
        _ => String::new(),
    }
}

/// `[never committed: hidden from VMs] ` before the path of a change where the VM cannot
/// write by itself (before it, as [`privileges_of`]).
fn forbidden_of(change: &Change) -> String {
    match change.forbidden {
        Some(why) => format!("[never committed: {}] ", why.word()),
        None => String::new(),
    }
}

/// `[set-user-ID, file capabilities] ` before the path of a change that carries privileges
/// (before it: a long name cannot push the mark out of sight).
fn privileges_of(change: &Change) -> String {
    if change.privileges.is_empty() {
        return String::new();
    }
    format!("[{}] ", change.privileges_shown())
}

fn size_of_change(change: &Change) -> String {
    if change.kind == feather_vm::diff::ChangeKind::Deleted || change.size == 0 {
        return "-".into();
    }
    if change.allocated < change.size {
        format!(
            "{} ({} on disk)",
            human_bytes(change.size),
            human_bytes(change.allocated)
        )
    } else {
        human_bytes(change.size)
    }
}

pub fn criu_report(report: &feather_migrate::criu::Report) -> Said {
    say!(
        "criu {} at {}: {}",
        report.version,
        report.path.display(),
        if report.works {
            "works on this kernel"
        } else {
            "`criu check` fails on this kernel"
        }
    )?;
    if !report.works {
        say!("{}", report.check_output)?;
    }
    let mut t = table(&["FEATURE", "KERNEL", "WHAT IT GIVES"]);
    for feature in &report.features {
        t.add_row(vec![
            feature.name.to_owned(),
            if feature.supported { "yes" } else { "MISSING" }.to_owned(),
            feature.purpose.to_owned(),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    use feather_migrate::criu::PostCopy;
    match &report.post_copy {
        PostCopy::PipesFit { pipe_max_size } => say!(
            "migration: post-copy (lazy pages; fs.pipe-max-size is {pipe_max_size} bytes, enough for CRIU's 4 MiB page pipes)"
        )?,
        PostCopy::ShimCapsPipes { pipe_max_size } => say!(
            "migration: post-copy (lazy pages; the shim caps CRIU's 4 MiB page pipes at fs.pipe-max-size, {pipe_max_size} bytes, which stays as it is)"
        )?,
        PostCopy::Unavailable { why } => {
            say!("migration: stop-and-copy (post-copy is not possible: {why})")?
        }
    }
    if !report.pre_copy {
        say!("pre-copy: not possible (no soft-dirty page tracking: mem_dirty_track)")?;
    }
    use feather_migrate::kdat::Cache;
    match &report.kdat {
        Cache::KeptByCriu => say!(
            "kernel probes: cached by CRIU in {} (/run is a tmpfs)",
            feather_migrate::kdat::CACHE
        )?,
        Cache::MadeByFeather => say!(
            "kernel probes: cached in {} by feather for this boot and this CRIU (/run is not a tmpfs, where CRIU would not keep it)",
            feather_migrate::kdat::CACHE
        )?,
        Cache::Missing { why } => {
            say!("kernel probes: not cached, every CRIU call probes the kernel ({why})")?
        }
    }
    Ok(())
}

/// The result line of `feather migrate`.
pub fn migrated(m: &feather_vm::migration::Migrated) -> String {
    let mut line = format!(
        "{}, {} bytes, frozen for {} ms ({} bytes of its layers went before)",
        match m.mode {
            feather_vm::migration::Mode::PostCopy => "post-copy",
            feather_vm::migration::Mode::StopAndCopy => "stop-and-copy",
            feather_vm::migration::Mode::PreCopy => "pre-copy",
        },
        m.bytes,
        m.frozen.as_millis(),
        m.precopy.bytes
    );
    if let Some(all) = m.all_pages {
        line.push_str(&format!(
            "; {} pages followed, the last {} ms after the freeze began",
            m.pages_after_resume,
            all.as_millis()
        ));
    }
    line
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{}K", b >> 10),
        b => format_bytes(b),
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn catalog(entries: &[feather_svc::catalog::Entry]) -> Said {
    let mut t = table(&["SERVICE", "DUPLICABLE", "TYPE", "SOURCE", "NOTE"]);
    for e in entries {
        let note = e
            .note
            .clone()
            .or_else(|| e.description.clone())
            .unwrap_or_default();
        t.add_row(vec![
            e.name.clone(),
            if e.duplicable { "yes" } else { "no" }.to_owned(),
            e.service_type
                .and_then(|k| serde_json::to_value(k).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".into()),
            e.source.to_owned(),
            note,
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// A VM's units, as its service manager reported them: every text in them is the VM's to
/// choose, and is escaped.
pub fn services(rows: &[ServiceInfo]) -> Said {
    let mut t = table(&[
        "UNIT",
        "STATE",
        "SUB",
        "PID",
        "SINCE",
        "RESTARTS",
        "READY",
        "RESULT/STATUS",
    ]);
    for s in rows {
        t.add_row(vec![
            shown(&s.name),
            s.state.to_string(),
            shown(&s.sub),
            s.main_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            format!("{} ago", age(s.since_secs)),
            s.restarts.to_string(),
            if s.ready { "yes" } else { "no" }.to_owned(),
            // Why it failed; else what it is doing or waiting for (STATUS=, a bus name).
            shown(
                &s.result
                    .clone()
                    .or_else(|| s.status_text.clone())
                    .unwrap_or_default(),
            ),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// One unit and its last log lines, as the VM's service manager reported them (escaped).
pub fn service_status(s: &ServiceInfo, log: &[String]) -> Said {
    match &s.description {
        Some(description) => say!("{} - {}", shown(&s.name), shown(description))?,
        None => say!("{}", shown(&s.name))?,
    }
    say!(
        "   state: {} ({}) for {}",
        s.state,
        shown(&s.sub),
        age(s.since_secs)
    )?;
    if let Some(pid) = s.main_pid {
        say!("    main: {pid}")?;
    }
    say!("   ready: {}", if s.ready { "yes" } else { "no" })?;
    say!("restarts: {}", s.restarts)?;
    if let Some(bytes) = s.memory_bytes {
        say!("  memory: {}", human_bytes(bytes))?;
    }
    if let Some(nsec) = s.cpu_nsec {
        say!("     cpu: {:.3}s", nsec as f64 / 1e9)?;
    }
    if let Some(cgroup) = &s.cgroup {
        say!("  cgroup: {}", shown(cgroup))?;
    }
    if let Some(status) = &s.status_text {
        say!("  status: {}", shown(status))?;
    }
    if let Some(result) = &s.result {
        say!("  result: {}", shown(result))?;
    }
    if let Some(by) = &s.pulled_by {
        say!(" pulled by: {}", shown(by))?;
    }
    if !s.not_applied.is_empty() {
        say!(" not applied in a VM: {}", shown(&s.not_applied.join(", ")))?;
    }
    if let Some(path) = &s.log {
        say!("     log: {}", shown(path))?;
    }
    for line in log {
        say!("  {}", shown(line))?;
    }
    Ok(())
}

/// The IPC matrix: one line per channel, one column per direction; then what failed.
pub fn ipc_matrix(matrix: &feather_ipcprobe::Matrix) -> Said {
    use feather_ipcprobe::{Direction, Matrix};
    let mut header = vec!["CHANNEL"];
    header.extend(Direction::ALL.iter().map(|d| d.label()));
    let mut t = table(&header);
    for row in &matrix.rows {
        let mut cells = vec![row.channel.clone()];
        for direction in Direction::ALL {
            cells.push(
                row.cells
                    .iter()
                    .find(|c| c.direction == direction)
                    .map(Matrix::cell_text)
                    .unwrap_or_else(|| "—".into()),
            );
        }
        t.add_row(cells);
    }
    say!("{t}")?;
    for note in &matrix.notes {
        say!("{}", shown(note))?;
    }
    let failures = matrix.failures();
    if failures.is_empty() {
        say!("every cross-boundary channel is blocked; every channel inside the VM works")?;
    }
    for (row, cell) in failures {
        let what = if cell.is_leak() { "LEAK" } else { "BROKEN" };
        // The detail is what a probe inside a VM reported: the VM's to choose.
        say!(
            "{what}: {} {}: {}",
            row.channel,
            cell.direction.label(),
            shown(&cell.outcome.detail)
        )?;
    }
    Ok(())
}

pub fn rules(rules: &[feather_shuttle::Rule]) -> Said {
    if rules.is_empty() {
        say!("no rules: nothing crosses between VMs (add *.policy files; see docs/shuttle.md)")?;
        return Ok(());
    }
    let mut t = table(&[
        "RULE", "KIND", "OBJECT", "SOURCE", "TARGET", "VERDICT", "OPTIONS",
    ]);
    for rule in rules.iter().map(RuleRow::from) {
        let options: Vec<String> = rule
            .options
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        t.add_row(vec![
            rule.at,
            rule.kind,
            rule.object,
            rule.source,
            rule.target,
            rule.verdict,
            options.join(" "),
        ]);
    }
    say!("{}", t.trim_fmt())?;
    Ok(())
}

/// `policy check` for one request: the rules passed over, and the one that decides.
pub fn explanation(
    request: &feather_shuttle::Request,
    decision: &feather_shuttle::Decision,
    consulted: &[feather_shuttle::Consulted],
) -> Said {
    say!(
        "{} {} from {} to {}:",
        request.kind,
        request.object,
        request.source,
        request.target
    )?;
    for step in consulted {
        match step.mismatch {
            Some(part) => say!(
                "  {}: {} — does not match the {part}",
                step.rule.at,
                step.rule
            )?,
            None => say!("  {}: {} — matches", step.rule.at, step.rule)?,
        }
    }
    match &decision.rule {
        Some(rule) => say!("{} by {}", verdict_word(decision.verdict), rule.at)?,
        None => say!("denied: no rule matches (default deny)")?,
    }
    Ok(())
}

fn verdict_word(verdict: feather_shuttle::Verdict) -> &'static str {
    match verdict {
        feather_shuttle::Verdict::Allow => "allowed",
        feather_shuttle::Verdict::Deny => "denied",
        feather_shuttle::Verdict::Ask => "asks the terminal that started the source VM",
    }
}

/// Audit entries, one a line (also while following the log, so no table widths to settle).
pub fn audit_entries(entries: &[feather_shuttle::audit::Entry], json: bool, first: bool) -> Said {
    if !json && first && entries.is_empty() {
        say!("no decisions recorded")?;
    }
    for entry in entries {
        if json {
            say!("{}", serde_json::to_string(entry).unwrap_or_default())?;
            continue;
        }
        let rule = entry.rule.as_deref().unwrap_or("no rule: default deny");
        let detail = entry
            .detail
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default();
        // The object and detail are whatever the VM asked for: the whole line is escaped.
        let line = format!(
            "{}  {:<6} {} → {}  {}  {} ({}, {rule}){detail}",
            entry.time,
            entry.kind,
            entry.source,
            entry.target,
            entry.object,
            entry.outcome,
            entry.verdict
        );
        say!("{}", shown(&line))?;
    }
    Ok(())
}
