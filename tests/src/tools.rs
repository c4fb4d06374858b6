//! The external pieces a lab run needs, where they are, and the skip-or-fail gate.

use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

/// The one skip policy of every root-only test (also the loader's): `MPTCP_TESTS_REQUIRE_BPF=1`
/// or `CI=true` turns every skip into a failure.
pub use mptcp_common::testing::{gate, skips_are_failures, REQUIRE_ENV};
/// Overrides the `mptcp-peer` binary.
pub const PEER_BIN_ENV: &str = "MPTCP_PEER_BIN";

/// Programs launched inside the namespaces.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The `mptcp-peer` binary of this crate: every peer and forger of the lab.
    pub peer_bin: PathBuf,
}

impl Tools {
    /// Tools with the given peer binary (integration tests pass
    /// `env!("CARGO_BIN_EXE_mptcp-peer")`); `$MPTCP_PEER_BIN` wins if set.
    #[must_use]
    pub fn new(peer_bin: impl Into<PathBuf>) -> Tools {
        let peer_bin = env::var_os(PEER_BIN_ENV).map_or_else(|| peer_bin.into(), PathBuf::from);
        Tools { peer_bin }
    }

    /// Tools for a binary of this crate (the demo): `mptcp-peer` is next to the executable.
    #[must_use]
    pub fn next_to_current_exe() -> Tools {
        let peer = env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("mptcp-peer")))
            .unwrap_or_else(|| PathBuf::from("mptcp-peer"));
        Tools::new(peer)
    }

    /// What is missing to run the lab, as human-readable reasons (empty = ready).
    #[must_use]
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            missing.push("not root (namespaces, veths and XDP need root)".to_owned());
        }
        if !succeeds("ip", &["mptcp", "limits", "show"]) {
            missing.push(
                "`ip mptcp` does not work (iproute2 too old, or MPTCP not in the kernel)"
                    .to_owned(),
            );
        }
        if std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_err() {
            missing.push("the kernel has no MPTCP (/proc/sys/net/mptcp/enabled)".to_owned());
        }
        for (program, args, package) in [
            ("tcpdump", &["--version"][..], "tcpdump"),
            ("nsenter", &["--version"][..], "util-linux"),
        ] {
            if !succeeds(program, args) {
                missing.push(format!(
                    "`{program}` is not installed (apt-get install {package})"
                ));
            }
        }
        if !self.peer_bin.is_file() {
            missing.push(format!("mptcp-peer is not at {}", self.peer_bin.display()));
        }
        missing
    }
}

/// Whether `program args` runs and exits 0 (its output discarded).
#[must_use]
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
