//! The parser never panics, whatever it is fed: random text, and real unit files mutated at
//! random. A bounded property test, so it runs in CI in well under a second per property.

use std::path::Path;

use proptest::prelude::*;

const SEEDS: [&str; 3] = [
    "[Unit]\nDescription=%n on %H\nAfter=a.service b.target\n[Service]\nType=forking\nExecStart=-/usr/sbin/x -g 'daemon on;' \"a b\" \\x41 ; /bin/y\nEnvironment=\"A=b c\" D=e\nLimitNOFILE=1:2\nTimeoutSec=5min 3s\n",
    "[Socket]\nListenStream=[::1]:80\nAccept=yes\n[Install]\nWantedBy=sockets.target\n",
    "[Service]\nExecStart=/bin/sh -c 'echo \\\n  continued'\nRuntimeDirectory=a b/c\nRuntimeDirectoryMode=2755\n",
];

fn parse_everything(text: &str) {
    let path = Path::new("fuzz.service");
    if let Ok(assignments) = feather_svc::syntax::parse(path, text) {
        for name in ["fuzz@inst.service", "fuzz.socket", "fuzz.target"] {
            let mut unit = feather_svc::Unit::new(feather_svc::UnitName::parse(name).unwrap());
            for a in &assignments {
                let _ = unit.apply(a, Path::new("/nonexistent"));
            }
        }
    }
    let _ = feather_svc::words::parse_exec(text);
    let _ = feather_svc::words::parse_environment(text);
    let _ = feather_svc::words::parse_environment_file(text);
    let _ = feather_svc::sysv::parse(Path::new("/etc/init.d/fuzz"), text);
    let _ = feather_svc::values::timespan(text, std::time::Duration::from_secs(1));
    let _ = feather_svc::UnitName::parse(text);
    let _ = feather_svc::name::unescape(text);
    let _ = feather_svc::name::unescape_path(text);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "[\\[\\]=%@;:\\-!+\\\\'\"#\\$\\{\\}a-zA-Z0-9 \t\n\\.\\/x]{0,200}") {
        parse_everything(&text);
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in any::<String>()) {
        parse_everything(&text);
    }

    #[test]
    fn mutated_unit_files_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<char>(), 0u8..3), 1..12),
    ) {
        let mut chars: Vec<char> = SEEDS[seed].chars().collect();
        for (at, c, op) in edits {
            let i = at % (chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = c,
                _ => {}
            }
        }
        parse_everything(&chars.into_iter().collect::<String>());
    }
}
