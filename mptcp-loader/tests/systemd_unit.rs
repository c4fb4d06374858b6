//! `dist/mptcp-fw.service` and `dist/mptcp-fw.default`: the unit reloads with SIGHUP, restarts
//! on failure, keeps the host's network, its command lines are valid `mptcp-loader` command
//! lines (and the shipped policy passes `--check-config` with the shipped interfaces), and
//! `systemd-analyze verify` accepts it when systemd-analyze is installed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser as _;
use mptcp_loader::cli::Cli;

const INSTALLED_BIN: &str = "/usr/local/sbin/mptcp-loader";

fn dist(file: &str) -> PathBuf {
    // Normalized: systemd ignores paths with `..`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file)
        .canonicalize()
        .unwrap()
}

fn unit() -> String {
    fs::read_to_string(dist("mptcp-fw.service")).unwrap()
}

/// `KEY=value` lines of the unit, continuation-free as ours is.
fn settings(key: &str) -> Vec<String> {
    unit()
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .collect()
}

/// The environment file's variables, unquoted.
fn environment() -> Vec<(String, String)> {
    fs::read_to_string(dist("mptcp-fw.default"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

/// A command line of the unit as systemd runs it: `$VAR` split into words.
fn words(command: &str) -> Vec<String> {
    let env = environment();
    command
        .split_whitespace()
        .flat_map(|word| match word.strip_prefix('$') {
            Some(var) => env.iter().find(|(k, _)| k == var).map_or_else(
                || vec![word.to_owned()],
                |(_, v)| v.split_whitespace().map(str::to_owned).collect(),
            ),
            None => vec![word.to_owned()],
        })
        .collect()
}

#[test]
fn the_unit_reloads_restarts_and_keeps_the_host_network() {
    assert_eq!(
        settings("ExecReload").last().unwrap(),
        "/bin/kill -HUP $MAINPID"
    );
    assert_eq!(settings("Restart"), ["on-failure"]);
    assert!(settings("PrivateNetwork").is_empty());
    let caps = settings("CapabilityBoundingSet").join(" ");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    assert_eq!(settings("ReadWritePaths"), ["/sys/fs/bpf"]);
    assert_eq!(settings("RuntimeDirectory"), ["mptcp-fw"]);
    assert!(settings("ExecStart")[0].contains("--config /etc/mptcp-fw/mptcp-fw.toml"));
}

#[test]
fn the_unit_command_lines_are_valid_and_the_shipped_policy_checks() {
    let commands: Vec<String> = ["ExecStartPre", "ExecStart", "ExecReload"]
        .iter()
        .flat_map(|key| settings(key))
        .filter(|c| c.starts_with(INSTALLED_BIN))
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    for command in &commands {
        let args = words(command);
        if let Err(e) = Cli::try_parse_from(&args) {
            panic!("{command}: {e}");
        }
        if args.iter().any(|a| a == "--check-config") {
            // The shipped policy, with the shipped interfaces.
            let config = dist("mptcp-fw.toml");
            let args: Vec<String> = args[1..]
                .iter()
                .map(|a| match a.as_str() {
                    "/etc/mptcp-fw/mptcp-fw.toml" => config.to_str().unwrap().to_owned(),
                    _ => a.clone(),
                })
                .collect();
            let out = Command::new(env!("CARGO_BIN_EXE_mptcp-loader"))
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{command}: {out:?}");
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify checks that the binaries and the environment file exist: point them here.
    let dir = std::env::temp_dir().join(format!("mptcp-fw-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let text = unit()
        .replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_mptcp-loader"))
        .replace(
            "EnvironmentFile=/etc/default/mptcp-fw",
            &format!("EnvironmentFile={}", dist("mptcp-fw.default").display()),
        );
    let path = dir.join("mptcp-fw.service");
    fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("mptcp-fw.service"),
        "warnings about the unit: {stderr}"
    );
}
