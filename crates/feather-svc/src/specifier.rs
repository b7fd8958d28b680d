//! systemd's `%` specifiers, resolved when a unit is loaded, for the system service manager
//! (so `%u` is root and `%h` root's home, whatever `User=` says, as in systemd).

use std::path::Path;

pub use crate::error::SpecifierError;
use crate::name::{unescape, unescape_path, UnitName};

/// What specifiers resolve against.
pub struct Context<'a> {
    pub unit: &'a UnitName,
    /// The file the unit was loaded from (`%y`), if any.
    pub fragment: Option<&'a Path>,
    /// The tree the units come from; `%H`, `%m`, `%v`, … read it.
    pub root: &'a Path,
}

/// Replaces every `%x` in `text`. An unknown specifier is an error, as in systemd.
pub fn expand(text: &str, context: &Context) -> Result<String, SpecifierError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let unit = context.unit;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(SpecifierError::LonePercent(text.to_owned()));
        };
        let instance = unit.instance().unwrap_or("");
        let value: String = match spec {
            '%' => "%".into(),
            'n' => unit.as_str().into(),
            'N' => unit.stem().into(),
            'p' => unit.prefix().into(),
            'P' => unescape(unit.prefix()),
            'i' => instance.into(),
            'I' => unescape(instance),
            'j' => last_dash_component(unit.prefix()).into(),
            'J' => unescape(last_dash_component(unit.prefix())),
            'f' => match unit.instance() {
                Some(i) => unescape_path(i),
                None => unescape_path(unit.prefix()),
            },
            'y' => context
                .fragment
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            'Y' => context
                .fragment
                .and_then(Path::parent)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            't' => "/run".into(),
            'S' => "/var/lib".into(),
            'C' => "/var/cache".into(),
            'L' => "/var/log".into(),
            'E' => "/etc".into(),
            'T' => "/tmp".into(),
            'V' => "/var/tmp".into(),
            'D' => "/usr/share".into(),
            'd' => format!("/run/credentials/{}", unit.as_str()),
            'h' => "/root".into(),
            's' => "/bin/sh".into(),
            'u' | 'g' => "root".into(),
            'U' | 'G' => "0".into(),
            'H' => read_trimmed(context.root, "etc/hostname"),
            'l' => read_trimmed(context.root, "etc/hostname")
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned(),
            'q' => read_trimmed(context.root, "etc/hostname"),
            'm' => read_trimmed(context.root, "etc/machine-id"),
            'b' => read_trimmed(Path::new("/"), "proc/sys/kernel/random/boot_id").replace('-', ""),
            'v' => read_trimmed(Path::new("/"), "proc/sys/kernel/osrelease"),
            'a' => std::env::consts::ARCH.replace('_', "-"),
            'o' | 'w' | 'B' | 'W' | 'M' | 'A' => os_release(context.root, spec),
            other => {
                return Err(SpecifierError::Unknown {
                    specifier: other,
                    text: text.to_owned(),
                })
            }
        };
        out.push_str(&value);
    }
    Ok(out)
}

fn last_dash_component(prefix: &str) -> &str {
    prefix.rsplit('-').next().unwrap_or(prefix)
}

fn read_trimmed(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_release(root: &Path, spec: char) -> String {
    let key = match spec {
        'o' => "ID",
        'w' => "VERSION_ID",
        'B' => "BUILD_ID",
        'W' => "VARIANT_ID",
        'M' => "IMAGE_ID",
        _ => "IMAGE_VERSION",
    };
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .unwrap_or_default();
    crate::words::parse_environment_file(&text)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_for(unit: &str, text: &str) -> Result<String, SpecifierError> {
        let name = UnitName::parse(unit).unwrap();
        let context = Context {
            unit: &name,
            fragment: Some(Path::new("/lib/systemd/system/x@.service")),
            root: Path::new("/nonexistent"),
        };
        expand(text, &context)
    }

    #[test]
    fn unit_name_specifiers() {
        assert_eq!(
            expand_for("postgresql@15-main.service", "%n|%N|%p|%P|%i|%I|%f|%j").unwrap(),
            "postgresql@15-main.service|postgresql@15-main|postgresql|postgresql|15-main|15/main|/15/main|postgresql"
        );
        assert_eq!(
            expand_for(r"foo@a\x2db.service", "%i %I").unwrap(),
            r"a\x2db a-b"
        );
        assert_eq!(
            expand_for("sys-fs-x.service", "%f %j").unwrap(),
            "/sys/fs/x x"
        );
    }

    #[test]
    fn directory_and_user_specifiers() {
        assert_eq!(
            expand_for("a.service", "%t %S %C %L %E %T %V %h %u %U %%").unwrap(),
            "/run /var/lib /var/cache /var/log /etc /tmp /var/tmp /root root 0 %"
        );
        assert_eq!(
            expand_for("a.service", "%y %Y").unwrap(),
            "/lib/systemd/system/x@.service /lib/systemd/system"
        );
    }

    #[test]
    fn unknown_and_dangling_specifiers_are_errors() {
        assert!(expand_for("a.service", "100%")
            .unwrap_err()
            .to_string()
            .contains("lone '%'"));
        assert!(expand_for("a.service", "%z")
            .unwrap_err()
            .to_string()
            .contains("%z"));
    }
}
