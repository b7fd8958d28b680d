//! The shuttle policy as its author sees it: `feather policy ls|check` and `feather audit`.

use crate::support::{Feather, ScratchBase};

const RULES: &str = "\
# the web tier may reach the database's socket; anything else of db is refused
ipc unix:/run/postgresql/.s.PGSQL.5432 @tag:web db allow start=postgresql@15-main
ipc tcp:5432 @anyvm db deny
ipc tcp:5432 @tag:web db ask
invoke viewer @anyvm viewer allow command=/bin/cat
";

#[test]
fn policy_check_says_which_rule_decides_and_exits_by_verdict() {
    let feather = Feather::new("policy-check");
    let base = ScratchBase::new("policy-check");
    feather.ok(&["create", "web1", "--base", base.as_str(), "--tag", "web"]);
    let file = feather.write_policy("10-db", RULES);
    let file = file.display().to_string();

    let allowed = feather.run(&[
        "policy",
        "check",
        "ipc",
        "unix:/run/postgresql/.s.PGSQL.5432",
        "--from",
        "web1",
        "--to",
        "db",
    ]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(
        allowed.stdout.contains(&format!("allowed by {file}:2")),
        "{}",
        allowed.stdout
    );

    // web1 has the tag, but the deny above the ask matches first.
    let denied = feather.run(&[
        "policy", "check", "ipc", "tcp:5432", "--from", "web1", "--to", "db",
    ]);
    assert_eq!(denied.code, 4, "{denied:?}");
    assert!(
        denied
            .stdout
            .contains(&format!("{file}:2: ipc unix:/run/postgresql/.s.PGSQL.5432")),
        "{}",
        denied.stdout
    );
    assert!(
        denied.stdout.contains("does not match the object"),
        "{}",
        denied.stdout
    );
    assert!(
        denied.stdout.contains(&format!("denied by {file}:3")),
        "{}",
        denied.stdout
    );

    let unmatched = feather.run(&[
        "policy", "check", "ipc", "tcp:22", "--from", "@host", "--to", "db",
    ]);
    assert_eq!(unmatched.code, 4, "{unmatched:?}");
    assert!(
        unmatched.stdout.contains("no rule matches (default deny)"),
        "{}",
        unmatched.stdout
    );

    // A VM without the tag does not get the tagged socket.
    let untagged = feather.run(&[
        "policy",
        "check",
        "ipc",
        "unix:/run/postgresql/.s.PGSQL.5432",
        "--from",
        "other",
        "--to",
        "db",
    ]);
    assert_eq!(untagged.code, 4, "{untagged:?}");

    let json = feather.ok(&[
        "policy", "check", "invoke", "viewer", "--from", "web1", "--to", "viewer", "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["verdict"], "allow");
    assert_eq!(json["rule"]["options"]["command"], "/bin/cat");

    let listed = feather.ok(&["policy", "ls"]);
    assert_eq!(
        listed.lines().count(),
        5,
        "a header and four rules: {listed}"
    );
}

#[test]
fn a_malformed_policy_is_reported_with_file_and_line() {
    let feather = Feather::new("policy-malformed");
    feather.write_policy("10-good", "ipc tcp:80 web db allow\n");
    let bad = feather.write_policy("20-bad", "# fine\nipc tcp:80 web db alow\n");
    for args in [&["policy", "check"][..], &["policy", "ls"]] {
        let error = feather.fails(args);
        assert!(error.contains(&format!("{}:2", bad.display())), "{error}");
        assert!(error.contains("unknown verdict \"alow\""), "{error}");
        assert!(error.contains("allows nothing"), "{error}");
    }
    std::fs::write(&bad, "ipc tcp:80 web db allow\n").unwrap();
    assert!(feather.ok(&["policy", "check"]).contains("2 rule(s)"));
}

#[test]
fn bad_requests_and_tags_are_refused_plainly() {
    let feather = Feather::new("policy-bad-input");
    let base = ScratchBase::new("policy-bad-input");
    let error = feather.fails(&[
        "create",
        "t1",
        "--base",
        base.as_str(),
        "--tag",
        "no spaces",
    ]);
    assert!(error.contains("invalid --tag \"no spaces\""), "{error}");
    let error = feather.fails(&["policy", "check", "pipe", "x", "--from", "a", "--to", "b"]);
    assert!(error.contains("unknown kind \"pipe\""), "{error}");
    let error = feather.fails(&[
        "policy", "check", "ipc", "tcp:1", "--from", "Bad/Name", "--to", "b",
    ]);
    assert!(error.contains("invalid VM name"), "{error}");
    assert_eq!(feather.ok(&["audit"]).trim(), "no decisions recorded");
}
