//! `edge check` and start-up: a malformed configuration names the key and its line and exits
//! non-zero; the repository's own edge.yaml is valid.

use std::path::Path;
use std::process::{Command, Output};

fn edge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .output()
        .unwrap()
}

fn check(yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.yaml");
    std::fs::write(&path, yaml).unwrap();
    edge(&["check", "--config", path.to_str().unwrap()])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `edge check`'s stderr for `yaml`, checked to exit 2 naming `key` at `line` and saying `why`.
fn refused(yaml: &str, key: &str, line: &str, why: &str) -> String {
    let output = check(yaml);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{yaml}: {err}");
    assert!(
        err.contains(key) && err.contains(line) && err.contains(why),
        "expected {key} at {line} ({why}): {err}"
    );
    err
}

const GOOD: &str = "origin:\n  url: http://127.0.0.1:9000\n";

#[test]
fn the_repository_edge_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge.yaml");
    let output = edge(&["check", "--config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

#[test]
fn a_minimal_config_is_valid() {
    let output = check(GOOD);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

/// A disk path edge could not keep its store at is named, as `nginx -t` names a cache path it
/// cannot create; a warning, for edge runs on, with the memory tier only.
#[test]
fn check_warns_of_a_disk_path_that_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let under_a_file = file.join("store");
    let yaml = format!(
        "{GOOD}cache:\n  disk:\n    path: {}\n",
        under_a_file.display()
    );
    let output = check(&yaml);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("warning: cache.disk.path") && err.contains("memory tier only"),
        "{err}"
    );
    // One that does not exist yet, under a directory edge may write in, is fine.
    let fine = dir.path().join("new").join("store");
    let output = check(&format!(
        "{GOOD}cache:\n  disk:\n    path: {}\n",
        fine.display()
    ));
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
    assert!(!fine.exists(), "checking creates nothing");
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let output =
        check("origin:\n  url: http://127.0.0.1:9000\ncache:\n  memroy:\n    capacity: 1MiB\n");
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains(":4:"), "line 4 is named: {err}");
    assert!(err.contains("cache.memroy"), "the key is named: {err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn a_bad_size_is_named_with_its_key_and_line() {
    let output =
        check("origin:\n  url: http://127.0.0.1:9000\ncache:\n  max_object_size: 12 parsecs\n");
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains(":4:"), "{err}");
    assert!(err.contains("cache.max_object_size"), "{err}");
    assert!(err.contains("invalid size \"12 parsecs\""), "{err}");
}

#[test]
fn a_bad_duration_a_bad_address_and_a_bad_fraction_are_named() {
    let cases = [
        (
            "origin:\n  url: http://127.0.0.1:9000\n  timeout: soon\n",
            "origin.timeout",
            ":3:",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\nclient_body_timeout: whenever\n",
            "client_body_timeout",
            ":3:",
        ),
        (
            "listen: everywhere\norigin:\n  url: http://127.0.0.1:9000\n",
            "listen",
            ":1:",
        ),
        (
            "origin:\n  url: http://o\ncache:\n  heuristic:\n    fraction: 2\n",
            "cache.heuristic.fraction",
            ":5:",
        ),
        ("origin:\n  url: ftp://127.0.0.1\n", "origin.url", ":2:"),
    ];
    for (yaml, key, line) in cases {
        let output = check(yaml);
        assert_eq!(output.status.code(), Some(2), "{yaml}");
        let err = stderr(&output);
        assert!(
            err.contains(key) && err.contains(line),
            "expected {key} at {line}: {err}"
        );
    }
}

/// Values the parsers take but edge could not run with (found by fuzzing `Config::parse`): they
/// made it panic at start-up, or kill the reload task on SIGHUP.
#[test]
fn an_unusable_origin_host_and_an_endless_duration_are_named() {
    let cases = [
        (
            "origin:\n  url: \"http://a{b\"\n",
            "origin.url",
            ":2:",
            "cannot be sent",
        ),
        (
            "origin:\n  url: http://`x\n",
            "origin.url",
            ":2:",
            "cannot be sent",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\ncache:\n  hit_for_pass: 1001y\n",
            "cache.hit_for_pass",
            ":4:",
            "at most 100 years",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\n  timeout: 300000000000y\n",
            "origin.timeout",
            ":3:",
            "at most 100 years",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\n  max_connections: -1\n",
            "origin.max_connections",
            ":3:",
            "invalid value: integer `-1`, expected a whole number from 0 (no limit)",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\n  max_connections: 2000000\n",
            "origin.max_connections",
            ":3:",
            "expected a whole number from 0 (no limit) to 1048576",
        ),
        (
            "origin:\n  url: http://127.0.0.1:9000\n  max_connections: -1\n",
            "origin.max_connections",
            ":3:",
            "invalid value",
        ),
    ];
    for (yaml, key, line, why) in cases {
        let err = refused(yaml, key, line, why);
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Values found by the operations audit that `check` passed: a disk path that is a file (start-up
/// took it for a broken store and renamed the operator's file aside), an origin URL with
/// credentials (dropped, and the password logged), one address for both listeners (the second
/// failed to bind only at start-up), a key written twice (named on its parent's line), and an
/// item of a list (named on the list's line).
#[test]
fn a_file_as_the_disk_path_credentials_one_address_twice_and_a_repeated_key_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.db");
    std::fs::write(&precious, "operator data\n").unwrap();
    let disk = format!("{GOOD}cache:\n  disk:\n    path: {}\n", precious.display());
    let cases = [
        (disk.as_str(), "cache.disk.path", ":5:", "not a directory"),
        (
            "origin:\n  url: http://user:secret@127.0.0.1:9000\n",
            "origin.url",
            ":2:",
            "user:password@",
        ),
        (
            "origin:\n  url: http://user:secret@127.0.0.1:99999\n",
            "origin.url",
            ":2:",
            "invalid port",
        ),
        (
            "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:8080\norigin:\n  url: http://o\n",
            "admin.listen",
            ":3:",
            "addresses of their own",
        ),
        (
            "origin:\n  url: http://o\nadmin:\n  listen: 127.0.0.1:8080\n",
            "admin.listen",
            ":4:",
            "0.0.0.0:8080",
        ),
        (
            "origin:\n  url: http://o\ncache:\n  collapse_wait: 5s\n  collapse_wait: 6s\n",
            ":5:3: cache.collapse_wait: ",
            ":5:",
            "written twice (first on line 4)",
        ),
        (
            "origin:\n  url: http://o\ncache: {}\nlog: {}\ncache: {}\n",
            ":5:1: cache: ",
            ":5:",
            "written twice (first on line 3)",
        ),
        // An item of a list, on its own line (it was the list's key line).
        (
            "origin:\n  url: http://o\npurge:\n  allow:\n    - 127.0.0.1\n    # a comment\n\n    - nonsense\n",
            "purge.allow[1]",
            ":8:5:",
            "invalid address \"nonsense\"",
        ),
        (
            "origin:\n  url: http://o\nexplain:\n  allow:\n  - ::1\n  - 10.0.0.0/8\n  - 10.0.0.300\nlisten: 127.0.0.1:1\n",
            "explain.allow[2]",
            ":7:3:",
            "invalid address \"10.0.0.300\"",
        ),
        (
            "origin:\n  url: http://o\npurge:\n  allow: [127.0.0.1, nonsense]\n",
            "purge.allow[1]",
            ":4:",
            "invalid address \"nonsense\"",
        ),
    ];
    for (yaml, key, line, why) in cases {
        let err = refused(yaml, key, line, why);
        assert!(!err.contains("secret"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "operator data\n"
    );
    // Listeners on different addresses, or free ports, are fine.
    for listen in [
        "127.0.0.1:8080\nadmin:\n  listen: 127.0.0.2:8080",
        "127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0",
    ] {
        let output = check(&format!("listen: {listen}\n{GOOD}"));
        assert_eq!(
            output.status.code(),
            Some(0),
            "{listen}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn malformed_yaml_names_the_line() {
    let output = check("origin:\n  url: http://127.0.0.1:9000\ncache: [\n  memory\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("edge.yaml:"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_missing_origin_is_reported() {
    let output = check("listen: 127.0.0.1:8080\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("origin"), "{}", stderr(&output));
}

#[test]
fn a_missing_file_is_reported() {
    let output = edge(&["check", "--config", "/nonexistent/edge.yaml"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent/edge.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_and_version() {
    let help = edge(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--config") && text.contains("check") && text.contains("demo"),
        "{text}"
    );
    let version = edge(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `origin.ca_file` is read when the configuration is: a file that is missing, holds no
/// certificate, or holds a broken one is named with the key and line, not found at the first
/// https request.
#[test]
fn an_unusable_origin_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let no_certificate = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge.yaml");
    let cases = [
        (&missing, "cannot read"),
        (&no_certificate, "holds no certificate"),
        (&broken, "certificate 1 is not usable"),
    ];
    for (path, why) in cases {
        let yaml = format!(
            "origin:\n  url: https://127.0.0.1:9443\n  ca_file: {}\n",
            path.display()
        );
        refused(&yaml, "origin.ca_file", ":3:", why);
    }
}

#[test]
fn an_origin_host_header_that_is_not_a_host_is_named() {
    for value in [
        "http://www.example.com",
        "user@www.example.com",
        "\"a b\"",
        "www.example.com/x",
    ] {
        let yaml = format!("origin:\n  url: http://10.0.0.1\n  host_header: {value}\n");
        refused(
            &yaml,
            "origin.host_header",
            ":3:",
            "expected a host and optional port",
        );
    }
    let ok = check("origin:\n  url: http://10.0.0.1\n  host_header: \"[::1]:8080\"\n");
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// `10.0.0.1/8` in an allow list allows all of 10.0.0.0/8, where likely one address was meant.
#[test]
fn an_allowed_network_with_address_bits_set_is_refused() {
    let yaml = format!("{GOOD}purge:\n  allow:\n    - 127.0.0.1\n    - 10.0.0.1/8\n");
    let err = refused(&yaml, "purge.allow[1]", ":5:", "10.0.0.0/8 for the network");
    assert!(err.contains("10.0.0.1/32 for the one address"), "{err}");
    assert!(
        check(&format!(
            "{GOOD}purge:\n  allow: [10.0.0.0/8, 10.0.0.1/32]\n"
        ))
        .status
        .success()
    );
}

/// Either tier may be off (capacity 0), not both: every response would say `stored` and be
/// kept nowhere.
#[test]
fn both_tiers_off_is_refused() {
    let yaml = format!("{GOOD}cache:\n  memory:\n    capacity: 0\n  disk:\n    capacity: 0B\n");
    refused(&yaml, "cache.disk.capacity", ":7:", "turns both tiers off");
    for one in ["memory", "disk"] {
        let yaml = format!("{GOOD}cache:\n  {one}:\n    capacity: 0\n");
        assert!(check(&yaml).status.success(), "{one} alone off");
    }
}

/// A YAML syntax error is named where the parser stopped; a tab in the indentation is said to be
/// one. It was named at the start of the mapping it was in (`1:1`).
#[test]
fn a_tab_in_the_indentation_is_named_on_its_line() {
    let err = refused(
        "origin:\n\turl: http://127.0.0.1:9000\n",
        "origin",
        ":2:1:",
        "a tab: YAML indents with spaces only",
    );
    assert!(!err.contains(":1:1:"), "{err}");
}
