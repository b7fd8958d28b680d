//! Every unit file and init script installed on this machine parses without error: the
//! parser understands what Debian actually ships, not only the fixtures.

use feather_svc::{sysv, UnitName, UnitPaths};

#[test]
fn every_unit_file_on_this_machine_loads() {
    let paths = UnitPaths::new("/");
    let mut loaded = 0;
    let mut failures = Vec::new();
    for name in paths.all_names() {
        let name = if name.is_template() {
            name.with_instance("feather-test")
        } else {
            name
        };
        match paths.load(&name) {
            Ok(_) => loaded += 1,
            Err(feather_svc::SvcError::Masked { .. }) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} units failed:\n{}",
        failures.len(),
        loaded + failures.len(),
        failures.join("\n")
    );
    // A Debian machine with systemd's package installed has well over a hundred units.
    assert!(
        loaded > 100,
        "only {loaded} units found in {:?}",
        paths.dirs()
    );
}

#[test]
fn every_dropin_and_wants_link_on_this_machine_is_read() {
    let paths = UnitPaths::new("/");
    for name in paths.all_names() {
        // Every `*.conf` in the unit's own `NAME.d/` folders is read, from the folder of
        // highest precedence (systemd's rule: a file name overrides the same name below it).
        let found = paths.dropins(std::slice::from_ref(&name));
        for dir in paths.dirs() {
            let Ok(entries) = std::fs::read_dir(dir.join(format!("{name}.d"))) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                if !file_name.to_string_lossy().ends_with(".conf") {
                    continue;
                }
                assert!(
                    found.iter().any(|f| f.file_name() == Some(&file_name)),
                    "{name}: drop-in {} is not read (read: {found:?})",
                    entry.path().display()
                );
            }
        }
        let (wants, requires) = paths.wants_and_requires(&name);
        for n in wants.iter().chain(&requires) {
            UnitName::parse(n).unwrap();
        }
    }
}

#[test]
fn every_init_script_on_this_machine_parses() {
    let scripts = sysv::scripts(std::path::Path::new("/")).unwrap();
    for script in &scripts {
        assert!(!script.name.is_empty(), "{}", script.path.display());
    }
}
