//! `linux.seccomp` as given: the profile Docker and podman send (an allow list under an
//! `SCMP_ACT_ERRNO` default, some entries with argument conditions, some with their own errno)
//! compiled with seccompiler, with libseccomp's meanings.
//!
//! seccompiler compiles one filter with one action for matches and one for the rest, so a
//! profile becomes several filters: first one with the profile's default for the rest and
//! `allow` for the allow entries, then one per other (action, errno) pair with `allow` for the
//! rest. The kernel runs every filter and keeps the most restrictive action; among equal
//! actions (two ERRNOs) the filter installed last wins, which gives an entry's own errno
//! precedence over the default's, as in libseccomp.
//!
//! Like libseccomp, names this architecture lacks are skipped (profiles list i386-only calls).
//! Filters are compiled for the native architecture: a call made through another ABI of the
//! machine (i386's `int 0x80`, x32) kills the process instead of being matched by name.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    let default = action(profile.default_action(), profile.default_errno_ret())
        .context("linux.seccomp.defaultAction")?;
    // (action) → rules; the allow group first.
    let mut groups: Vec<(SeccompAction, Rules)> = vec![(SeccompAction::Allow, Rules::new())];
    for (index, entry) in profile.syscalls().iter().flatten().enumerate() {
        let wanted = action(entry.action(), entry.errno_ret())
            .with_context(|| format!("linux.seccomp.syscalls[{index}].action"))?;
        if wanted == default {
            continue;
        }
        let rule = match entry.args() {
            Some(args) if !args.is_empty() => {
                Some(rule(args).with_context(|| format!("linux.seccomp.syscalls[{index}].args"))?)
            }
            _ => None,
        };
        let group = match groups.iter().position(|(a, _)| *a == wanted) {
            Some(position) => position,
            None => {
                groups.push((wanted.clone(), Rules::new()));
                groups.len() - 1
            }
        };
        for name in entry.names() {
            let Ok(number) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            add_rule(&mut groups[group].1, number.id() as i64, rule.clone());
        }
    }
    let arch = native_arch()?;
    let mut programs = Vec::new();
    for (position, (wanted, rules)) in groups.into_iter().enumerate() {
        let (mismatch, matched) = if position == 0 {
            (default.clone(), SeccompAction::Allow)
        } else {
            (SeccompAction::Allow, wanted)
        };
        if mismatch == matched || (position > 0 && rules.is_empty()) {
            continue;
        }
        let filter =
            SeccompFilter::new(rules, mismatch, matched, arch).context("linux.seccomp: compile")?;
        let program: BpfProgram = filter.try_into().context("linux.seccomp: compile")?;
        programs.push(program);
    }
    Ok(programs)
}

/// An entry with no conditions matches every call, whatever other entries say.
fn add_rule(rules: &mut Rules, number: i64, rule: Option<SeccompRule>) {
    match rule {
        None => {
            rules.insert(number, Vec::new());
        }
        // An empty list means "always": a conditional entry adds nothing to it.
        Some(rule) => match rules.get_mut(&number) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.push(rule),
            None => {
                rules.insert(number, vec![rule]);
            }
        },
    }
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            bail!("SCMP_ACT_NOTIFY: seccomp user notification is not supported by feather-oci")
        }
    })
}

fn rule(args: &[LinuxSeccompArg]) -> Result<SeccompRule> {
    let conditions = args
        .iter()
        .map(|arg| {
            let op = match arg.op() {
                LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
                LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
                LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
                LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
                LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
                LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(arg.value()),
            };
            // For SCMP_CMP_MASKED_EQ, `value` is the mask and `valueTwo` the datum.
            let datum = match arg.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => arg.value_two().unwrap_or(0),
                _ => arg.value(),
            };
            if arg.index() > 5 {
                bail!("argument index {} (system calls have 6)", arg.index());
            }
            SeccompCondition::new(arg.index() as u8, SeccompCmpArgLen::Qword, op, datum)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    SeccompRule::new(conditions).map_err(|e| anyhow::anyhow!("{e}"))
}

fn native_arch() -> Result<TargetArch> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => TargetArch::x86_64,
        "aarch64" => TargetArch::aarch64,
        "riscv64" => TargetArch::riscv64,
        other => bail!("linux.seccomp: no filter compiler for {other}"),
    })
}

/// Installs the filters, in order, on the calling thread.
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for program in programs {
        let program = feather_sys::seccomp::from_seccompiler(program.clone());
        feather_sys::seccomp::install_filter(&program)
            .map_err(|e| anyhow::anyhow!("linux.seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_style_profile_compiles_to_allow_plus_errno_filters() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["vmsplice", "vm86"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]
        }))
        .unwrap();
        assert_eq!(compile(&profile).unwrap().len(), 2);
    }

    #[test]
    fn notify_is_refused_by_name() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        }))
        .unwrap();
        let error = format!("{:#}", compile(&profile).unwrap_err());
        assert!(
            error.contains("syscalls[0].action") && error.contains("NOTIFY"),
            "{error}"
        );
    }
}
