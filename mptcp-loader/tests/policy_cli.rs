//! The built binary on policy files and policy/metrics flags: an invalid policy ends `run` with
//! one `error:` line naming the file, line, column and key, before anything is loaded (so
//! these hold for root and non-root alike); `--check-config` prints the policy and touches
//! nothing.

mod netlab;

use std::{fs, path::PathBuf};

use netlab::loader;

/// A policy file with `text`, in a directory of its own that is removed on drop.
struct PolicyFile {
    path: PathBuf,
}

impl PolicyFile {
    fn new(name: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("mptcp-fw-policy-cli-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        Self { path }
    }

    fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The single stderr line of `run --iface lo --config FILE EXTRA...`, which must fail.
fn run_error(file: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["run", "--iface", "lo", "--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = loader(&args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_owned()
}

#[test]
fn a_syntax_error_names_its_line() {
    let file = PolicyFile::new(
        "syntax.toml",
        "mode = \"enforce\"\n\n[add_addr\nports = [443]\n",
    );
    let line = run_error(&file.path, &[]);
    assert!(
        line.starts_with(&format!(
            "error: policy file {}: line 3, column ",
            file.display()
        )),
        "{line}"
    );
}

#[test]
fn an_unknown_key_is_refused_with_the_keys_that_exist() {
    let file = PolicyFile::new("unknown.toml", "mode = \"enforce\"\nfail_closed = true\n");
    assert_eq!(
        run_error(&file.path, &["--check-config"]),
        format!(
            "error: policy file {}: line 2, column 1: unknown field `fail_closed`, expected one of \
             `mode`, `unknown_connections`, `interfaces`, `add_addr`, `join_syn_limit`, `drop_events`",
            file.display()
        )
    );
}

#[test]
fn a_bad_cidr_names_the_key_and_the_fix() {
    let file = PolicyFile::new(
        "cidr.toml",
        "[add_addr]\nprefixes = [\n  \"2001:db8::/32\",\n  \"198.18.3.0/15\",\n]\n",
    );
    assert_eq!(
        run_error(&file.path, &[]),
        format!(
            "error: policy file {}: line 4, column 3: add_addr.prefixes: `198.18.3.0/15` has bits \
             set after the first 15: did you mean 198.18.0.0/15?",
            file.display()
        )
    );
}

#[test]
fn an_interface_outside_iface_is_refused() {
    let file = PolicyFile::new("iface.toml", "[interfaces.eth7]\nmode = \"monitor\"\n");
    assert_eq!(
        run_error(&file.path, &[]),
        format!(
            "error: policy file {}: line 1, column 13: interfaces.eth7: `eth7` is not one of the \
             --iface interfaces (lo)",
            file.display()
        )
    );
    let file = PolicyFile::new("empty.toml", "");
    assert_eq!(
        run_error(&file.path, &["--iface-mode", "eth7=enforce"]),
        "error: --iface-mode: `eth7` is not one of the --iface interfaces (lo)"
    );
}

#[test]
fn a_missing_file_is_one_line() {
    let file = PathBuf::from("/nonexistent/mptcp-fw.toml");
    assert_eq!(
        run_error(&file, &[]),
        "error: could not read the policy file /nonexistent/mptcp-fw.toml: No such file or \
         directory (os error 2)"
    );
}

#[test]
fn check_config_prints_the_merged_policy_and_loads_nothing() {
    let file = PolicyFile::new(
        "good.toml",
        "mode = \"monitor\"\n[add_addr]\nports = [\"none\"]\n[join_syn_limit]\nper_second = 4\n",
    );
    let out = loader(&[
        "run",
        "--iface",
        "lo",
        "--config",
        file.path.to_str().unwrap(),
        "--mode",
        "enforce",
        "--join-syn-burst",
        "9",
        "--check-config",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!(
        "policy OK, from {} and the command line:\n",
        file.display()
    )));
    assert!(
        text.contains("  mode                           enforce\n"),
        "{text}"
    );
    assert!(
        text.contains("  ADD_ADDR ports                 none\n"),
        "{text}"
    );
    assert!(
        text.contains("  MP_JOIN SYN limit per source   4/s burst 9\n"),
        "{text}"
    );
}

#[test]
fn an_invalid_metrics_address_is_refused_by_the_parser() {
    for bad in ["9464", "localhost:9464", "127.0.0.1:99999"] {
        let out = loader(&["run", "--iface", "lo", "--metrics", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.starts_with(&format!(
                "error: invalid value '{bad}' for '--metrics <ADDR:PORT>': invalid socket address syntax"
            )),
            "{stderr}"
        );
    }
}
