//! The command line's parse. clap builds the whole command line (every subcommand with its
//! arguments and help texts) before it parses one: for `exec` and `run`, started again and
//! again by scripts, that was 0.35 ms of an exec's 1.5–1.8 ms of CPU; for `create` and
//! `start`, which a script bringing up VMs runs once each per VM, 0.37–0.49 ms against 0.12–
//! 0.16 ms narrowed. Those four are parsed by a
//! command line that holds only the global options and that one subcommand, from the same
//! definitions (crate::cli); anything it does not accept — help, a version request, a usage
//! error — is parsed again by the whole command line, so that help, errors and exit codes are
//! exactly the whole line's. The whole line makes each subcommand's arguments only when the line
//! names it (`defer` in crate::cli): `ls`, `stop`, `--version` and the rest parsed in half the
//! time of the line made whole (debug build: 1.3 → 0.65 ms for `ls`).

use std::ffi::OsString;

use clap::{Args, FromArgMatches, Parser};

use crate::cli::{Cli, Command, CreateCommandArgs, ExecArgs, GlobalArgs, RunArgs, StartArgs};

/// The command line `args` (the program's name first) as [`Cli`]; prints help, the version
/// or the usage error and exits as clap does when that is what it asks for.
pub fn parse(args: Vec<OsString>) -> Cli {
    narrowed(&args).unwrap_or_else(|| Cli::parse_from(args))
}

/// The subcommands [`narrowed`] parses.
#[derive(Clone, Copy)]
enum Frequent {
    Exec,
    Run,
    Create,
    Start,
}

impl Frequent {
    fn named(name: &str) -> Option<Frequent> {
        match name {
            "exec" => Some(Frequent::Exec),
            "run" => Some(Frequent::Run),
            "create" => Some(Frequent::Create),
            "start" => Some(Frequent::Start),
            _ => None,
        }
    }

    /// The command line with only this subcommand.
    fn command_line(self) -> clap::Command {
        let subcommand = match self {
            Frequent::Exec => ExecArgs::augment_args(clap::Command::new("exec")),
            Frequent::Run => RunArgs::augment_args(clap::Command::new("run")),
            Frequent::Create => CreateCommandArgs::augment_args(clap::Command::new("create")),
            Frequent::Start => StartArgs::augment_args(clap::Command::new("start")),
        };
        GlobalArgs::augment_args(clap::Command::new("feather"))
            .subcommand(subcommand)
            .subcommand_required(true)
    }

    fn command(self, matches: &clap::ArgMatches) -> Option<Command> {
        Some(match self {
            Frequent::Exec => Command::Exec(ExecArgs::from_arg_matches(matches).ok()?),
            Frequent::Run => Command::Run(RunArgs::from_arg_matches(matches).ok()?),
            Frequent::Create => Command::Create(CreateCommandArgs::from_arg_matches(matches).ok()?),
            Frequent::Start => Command::Start(StartArgs::from_arg_matches(matches).ok()?),
        })
    }
}

/// `args` parsed by the command line narrowed to their subcommand, if that is one of
/// [`Frequent`] and the narrowed line accepts them; `None` otherwise. The narrowed line is part of the
/// whole one, so what it accepts the whole line reads the same way.
fn narrowed(args: &[OsString]) -> Option<Cli> {
    let frequent = Frequent::named(subcommand_name(args)?)?;
    let matches = frequent.command_line().try_get_matches_from(args).ok()?;
    let global = GlobalArgs::from_arg_matches(&matches).ok()?;
    let (_, subcommand) = matches.subcommand()?;
    Some(Cli {
        global,
        command: frequent.command(subcommand)?,
    })
}

/// The first argument that is neither an option nor `--root`'s value: the subcommand's name,
/// if the line is well formed (a line that is not is the whole parser's to judge).
fn subcommand_name(args: &[OsString]) -> Option<&str> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.to_str()? {
            "--root" => {
                rest.next();
            }
            option if option.starts_with('-') => {}
            name => return Some(name),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(Into::into).collect()
    }

    /// What the whole command line makes of `line`, as text.
    fn whole(line: &[&str]) -> String {
        format!("{:?}", Cli::try_parse_from(args(line)).unwrap())
    }

    #[test]
    fn the_narrowed_line_reads_its_commands_as_the_whole_line_does() {
        let lines: &[&[&str]] = &[
            &["feather", "exec", "vm", "--", "true"],
            &[
                "feather", "--root", "/r", "exec", "-t", "vm", "--", "sh", "-c", "x",
            ],
            &[
                "feather",
                "--root=/r",
                "exec",
                "-e",
                "A=b",
                "-u",
                "me",
                "vm",
                "--",
                "x",
            ],
            &[
                "feather", "exec", "--root", "/r", "-w", "/", "vm", "--", "x", "--help",
            ],
            &[
                "feather", "run", "--rm", "--net", "none", "-p", "1:2", "--", "true",
            ],
            &[
                "feather", "run", "--ro", "/usr", "--memory", "1G", "vm", "--", "x",
            ],
            &[
                "feather", "run", "--root", "/r", "-it", "--rm", "--", "x", "-V",
            ],
            &["feather", "create", "vm"],
            &["feather", "create", "--start", "vm"],
            &["feather", "--root", "/r", "start", "vm"],
            &["feather", "start", "--root=/r", "vm"],
            &[
                "feather",
                "create",
                "--base",
                "/b",
                "--memory",
                "1G",
                "--ro",
                "/usr",
                "--service",
                "nginx",
                "--fresh-state",
                "--net",
                "none",
                "vm",
            ],
        ];
        for line in lines {
            let narrowed = narrowed(&args(line)).expect("narrowed parse");
            assert_eq!(format!("{narrowed:?}"), whole(line), "{line:?}");
        }
    }

    /// Every argument of `command` as clap defines it (name, flags, value count, whether
    /// required, global, positional), sorted: what decides how a line is read.
    fn definitions(command: &clap::Command) -> Vec<String> {
        let mut all: Vec<String> = command
            .get_arguments()
            .map(|arg| {
                format!(
                    "{} {:?} {:?} {:?} {:?} {} {} {} {:?}",
                    arg.get_id(),
                    arg.get_long(),
                    arg.get_short(),
                    arg.get_num_args(),
                    arg.get_action(),
                    arg.is_required_set(),
                    arg.is_global_set(),
                    arg.is_positional(),
                    arg.get_value_delimiter(),
                )
            })
            .collect();
        all.sort();
        all
    }

    /// The narrowed lines are built from the same definitions as the whole one, but what is
    /// set on the subcommand's variant in `Command` or on `Cli` itself (an alias, a setting,
    /// an argument added there) would reach only the whole line: this catches that drift.
    #[test]
    fn the_narrowed_lines_define_their_commands_as_the_whole_line_does() {
        use clap::CommandFactory;
        let whole = Cli::command();
        for (name, frequent) in [
            ("exec", Frequent::Exec),
            ("run", Frequent::Run),
            ("create", Frequent::Create),
            ("start", Frequent::Start),
        ] {
            let mut narrowed = frequent.command_line();
            narrowed.build();
            let mut whole = whole.clone();
            whole.build();
            let (Some(mine), Some(theirs)) =
                (narrowed.find_subcommand(name), whole.find_subcommand(name))
            else {
                panic!("{name} missing from a line");
            };
            assert_eq!(definitions(mine), definitions(theirs), "{name}");
            assert_eq!(
                format!("{:?}", mine.get_all_aliases().collect::<Vec<_>>()),
                format!("{:?}", theirs.get_all_aliases().collect::<Vec<_>>()),
                "{name}'s aliases"
            );
            let global = |c: &clap::Command| {
                definitions(c)
                    .into_iter()
                    .filter(|d| !d.starts_with("help ") && !d.starts_with("version "))
                    .collect::<Vec<_>>()
            };
            assert_eq!(global(&narrowed), global(&whole), "the global options");
        }
    }

    /// Each subcommand's arguments are made only when the line names it (`defer` in
    /// crate::cli): clap's own checks of a definition run when it is made, so a mistake in a
    /// subcommand no test parses would pass unseen; built whole here, every one is checked.
    #[test]
    fn the_whole_command_line_is_sound_with_every_subcommand_built() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// A deferred subcommand's arguments are made after its own help text was set (clap_derive),
    /// so a flattened struct's doc comment would replace the command's words in `--help`, man
    /// pages and completions: every subcommand, at every depth, says once made what it said
    /// before (its variant's doc comment, as the derive gave it).
    #[test]
    fn every_subcommand_is_described_once_made_as_before() {
        use crate::cli::{CheckCommand, Command, NetworkCommand, PolicyCommand, ServiceCommand};
        use clap::{CommandFactory, Subcommand};
        let described = |c: &clap::Command| {
            let text = |t: Option<&clap::builder::StyledStr>| t.map(ToString::to_string);
            (text(c.get_about()), text(c.get_long_about()))
        };
        // Each parent's subcommands as the derive made them, none yet built.
        let unbuilt = |parent: &str, made: clap::Command| {
            made.get_subcommands()
                .map(|c| (format!("{parent} {}", c.get_name()), described(c)))
                .collect::<Vec<_>>()
        };
        let empty = || clap::Command::new("");
        let before: std::collections::BTreeMap<_, _> = [
            unbuilt("feather", Command::augment_subcommands(empty())),
            unbuilt(
                "feather service",
                ServiceCommand::augment_subcommands(empty()),
            ),
            unbuilt(
                "feather network",
                NetworkCommand::augment_subcommands(empty()),
            ),
            unbuilt(
                "feather policy",
                PolicyCommand::augment_subcommands(empty()),
            ),
            unbuilt("feather check", CheckCommand::augment_subcommands(empty())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut whole = Cli::command();
        whole.build();
        let mut after = std::collections::BTreeMap::new();
        let mut parents = vec![("feather".to_string(), &whole)];
        while let Some((path, parent)) = parents.pop() {
            for c in parent.get_subcommands().filter(|c| c.get_name() != "help") {
                let path = format!("{path} {}", c.get_name());
                after.insert(path.clone(), described(c));
                parents.push((path, c));
            }
        }
        let before: std::collections::BTreeMap<_, _> = before
            .into_iter()
            .filter(|(path, _)| !path.ends_with(" help"))
            .collect();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "a nested subcommand's enum is missing from the list above"
        );
        for (path, words) in &after {
            assert_eq!(&before[path], words, "{path}");
        }
    }

    /// A global option after a subcommand whose arguments were made at the parse, nested ones
    /// included, is read as before them.
    #[test]
    fn the_root_after_a_deferred_subcommand_is_the_root() {
        for line in [
            &["feather", "ls", "--root", "/r"][..],
            &["feather", "network", "down", "--root=/r"],
            &["feather", "policy", "ls", "--root", "/r"],
            &["feather", "stop", "vm", "--root", "/r"],
        ] {
            let cli = Cli::try_parse_from(args(line)).unwrap();
            assert_eq!(
                cli.global.root.as_deref(),
                Some(std::path::Path::new("/r")),
                "{line:?}"
            );
        }
    }

    #[test]
    fn help_versions_errors_and_other_commands_are_left_to_the_whole_line() {
        let lines: &[&[&str]] = &[
            &["feather", "exec", "--help"],
            &["feather", "exec", "-h", "vm", "--", "x"],
            &["feather", "--help", "exec"],
            &["feather", "-V", "exec", "vm", "--", "x"],
            &["feather", "exec", "-V", "vm", "--", "x"],
            &["feather", "help", "exec"],
            &["feather", "exec", "vm"],
            &["feather", "exec", "--bogus", "vm", "--", "x"],
            &["feather", "run"],
            &["feather", "--root", "exec", "vm", "--", "x"],
            &["feather", "ls"],
            &["feather", "start"],
            &["feather", "start", "--help"],
            &["feather", "create", "--fresh-state", "vm"],
            &["feather", "create", "a", "b"],
            &["feather", "stop", "vm"],
            &["feather", "open", "app"],
            &["feather"],
        ];
        for line in lines {
            assert!(narrowed(&args(line)).is_none(), "{line:?}");
        }
    }
}
