//! Runs the built `mptcp-loader` binary and checks that command-line and environment problems end
//! with one clear `error:` line and a non-zero exit, never a panic. Needs no root; the checks that
//! depend on privileges pick the expectation that matches the uid they run with.

mod netlab;

use std::process::Output;

use netlab::loader;

/// The single stderr line of a failed command.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure, got {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    lines[0].to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn unknown_interface_is_one_clear_line() {
    // Interfaces are checked before privileges, so this holds for root and non-root alike.
    let out = loader(&["run", "--iface", "mptcp-nope0", "--mode", "enforce"]);
    assert_eq!(
        error_line(&out),
        "error: network interface `mptcp-nope0` does not exist in this network namespace: check `ip link show`"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn non_root_is_told_to_use_root() {
    if is_root() {
        eprintln!("skipped: running as root (the root check is unit-tested in preflight.rs)");
        return;
    }
    let line = error_line(&loader(&["run", "--iface", "lo"]));
    assert!(
        line.starts_with("error: mptcp-loader must run as root"),
        "{line}"
    );
}

#[test]
fn stats_without_a_run_says_so() {
    let out = loader(&[
        "stats",
        "--json",
        "--pin-dir",
        "/nonexistent/mptcp-fw/netns-0",
    ]);
    let line = error_line(&out);
    if is_root() {
        assert_eq!(
            line,
            "error: no mptcp-loader run is active in this network namespace (no pins under \
             /nonexistent/mptcp-fw/netns-0); start `mptcp-loader run --iface IF`"
        );
    } else {
        assert!(
            line.starts_with("error: mptcp-loader must run as root"),
            "{line}"
        );
    }
    assert!(
        out.stdout.is_empty(),
        "--json prints nothing on stdout when it fails"
    );
}

#[test]
fn pin_dir_off_bpffs_is_refused() {
    let problems = (!is_root()).then(|| "needs root to get past the root check".to_owned());
    if !mptcp_common::testing::gate("pin_dir_off_bpffs_is_refused", problems.as_slice()) {
        return;
    }
    let line = error_line(&loader(&[
        "run",
        "--iface",
        "lo",
        "--pin-dir",
        "/proc/self/mptcp-pins",
    ]));
    assert!(
        line.starts_with(
            "error: no BPF filesystem is mounted at /proc/self: run `mount -t bpf bpf /sys/fs/bpf`"
        ),
        "{line}"
    );
}

#[test]
fn stub_object_is_refused_and_leaves_nothing_behind() {
    let bpffs =
        mptcp_loader::kernel::pins::check_bpffs(std::path::Path::new("/sys/fs/bpf")).is_ok();
    if !mptcp_loader::EBPF_OBJ.is_empty() || !is_root() || !bpffs {
        eprintln!(
            "skipped: needs the stub object (AYA_BUILD_SKIP=1), root and bpffs at /sys/fs/bpf"
        );
        return;
    }
    let pin_dir = format!("/sys/fs/bpf/mptcp-loader-cli-test-{}", std::process::id());
    let line = error_line(&loader(&["run", "--iface", "lo", "--pin-dir", &pin_dir]));
    assert!(
        line.starts_with("error: the eBPF object was not built: run `cargo xtask setup`"),
        "{line}"
    );
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "the pin directory is removed on failure"
    );
}

/// The expected line: `when_root` as root, the root check otherwise.
fn assert_root_or(line: &str, when_root: &str) {
    if is_root() {
        assert_eq!(line, when_root);
    } else {
        assert!(
            line.starts_with("error: mptcp-loader must run as root"),
            "{line}"
        );
    }
}

#[test]
fn detach_names_an_unknown_interface_before_anything_else() {
    // Checked before privileges and pins, as for `run`.
    let out = loader(&["detach", "--iface", "mptcp-nope0"]);
    assert_eq!(
        error_line(&out),
        "error: network interface `mptcp-nope0` does not exist in this network namespace: check `ip link show`"
    );
}

#[test]
fn detach_without_pins_says_there_is_nothing_to_detach() {
    let out = loader(&["detach", "--pin-dir", "/nonexistent/mptcp-fw/netns-0"]);
    assert_root_or(
        &error_line(&out),
        "error: nothing to detach: no mptcp-loader pins under /nonexistent/mptcp-fw/netns-0 (see `mptcp-loader status`)",
    );
}

#[test]
fn status_and_conns_without_a_run_say_so() {
    for command in [
        &["status", "--pin-dir", "/nonexistent/mptcp-fw/netns-0"][..],
        &[
            "status",
            "--json",
            "--pin-dir",
            "/nonexistent/mptcp-fw/netns-0",
        ],
        &["conns", "--pin-dir", "/nonexistent/mptcp-fw/netns-0"],
        &[
            "conns",
            "--json",
            "--show-keys",
            "--pin-dir",
            "/nonexistent/mptcp-fw/netns-0",
        ],
    ] {
        let out = loader(command);
        assert_root_or(
            &error_line(&out),
            "error: no mptcp-loader run is active in this network namespace (no pins under \
             /nonexistent/mptcp-fw/netns-0); start `mptcp-loader run --iface IF`",
        );
        assert!(out.stdout.is_empty(), "{command:?}");
    }
}

#[test]
fn events_without_a_run_say_so() {
    // A file is read: no root needed.
    for command in [
        &["events", "--state-dir", "/nonexistent/mptcp-fw-state"][..],
        &[
            "events",
            "--follow",
            "--state-dir",
            "/nonexistent/mptcp-fw-state",
        ],
    ] {
        assert_eq!(
            error_line(&loader(command)),
            "error: no drop events recorded under /nonexistent/mptcp-fw-state (no events.jsonl): \
             `mptcp-loader run` records them there; pass --state-dir if it ran with another one",
            "{command:?}"
        );
    }
}
