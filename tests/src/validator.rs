//! Driving the real validator: `mptcp-loader run` inside the server namespace, its
//! `stats --json`, and its shutdown on SIGINT.
//!
//! What the tests expect of the loader (the contract, also in tests/README.md):
//! - `mptcp-loader run --iface <if> [--iface <if>...] --mode enforce|monitor` attaches the XDP
//!   program to every interface and then logs, on stdout or stderr, a line containing the word
//!   `attached` and the interface name, once per interface (or one line naming them all).
//!   `RUST_LOG=info` is set unless the caller set `RUST_LOG`. After that line, `ip link` must
//!   show `prog/xdp` on the interface.
//! - `mptcp-loader stats --json`, run in the same network namespace while `run` is alive,
//!   prints one JSON document to stdout in which every counter appears under its
//!   `mptcp_common::counters::Counter::name()` as a non-negative integer, summed over CPUs. Any
//!   nesting is accepted (`{"add_addr_valid": 1, ...}`, `{"counters": {...}}`,
//!   `[{"name": "add_addr_valid", "value": 1}]`, `{"add_addr_valid": {"total": 1}}`).
//! - SIGINT makes `run` detach and exit 0 within 10 s; the XDP program is gone afterwards.
//! - Both commands are started with `nsenter --net=/run/netns/<ns>`: the network namespace is
//!   the server's, the mount namespace is the caller's, so `/sys/fs/bpf` is the host's bpffs
//!   and pins made by `run` are visible to `stats`. `MPTCP_LOADER_EXEC=ip-netns` switches to
//!   `ip netns exec` instead (private mount namespace, fresh /sys without bpffs).

use std::{
    collections::{BTreeMap, VecDeque},
    env,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use mptcp_common::counters::Counter;
use serde_json::Value;

use crate::{
    error::{LabError, Result},
    netns::Netns,
    proc::{run_checked, Proc},
    tools::gate,
};

/// Environment variable naming the loader binary.
pub const LOADER_BIN_ENV: &str = "MPTCP_LOADER_BIN";
/// Environment variable choosing how the loader enters the namespace: `nsenter` (default) or
/// `ip-netns`.
pub const LOADER_EXEC_ENV: &str = "MPTCP_LOADER_EXEC";
/// Name of the loader binary.
pub const LOADER_BIN_NAME: &str = "mptcp-loader";

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `--mode` of `mptcp-loader run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop ADD_ADDRs with a wrong HMAC.
    Enforce,
    /// Only count them.
    Monitor,
}

impl Mode {
    /// The CLI spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// Where the loader binary is: `$MPTCP_LOADER_BIN`, else `mptcp-loader` next to the running
/// executable or its parent directory (a test binary lives in `target/release/deps/`), else
/// `<workspace>/target/release/mptcp-loader`. `None` when none exists. A relative
/// `$MPTCP_LOADER_BIN` is taken from the workspace root, where it was most likely typed (cargo
/// runs test binaries in their package's directory).
#[must_use]
pub fn locate_loader() -> Option<PathBuf> {
    if let Some(path) = env::var_os(LOADER_BIN_ENV) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        return Some(path).filter(|p| p.is_file());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(LOADER_BIN_NAME));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release")
            .join(LOADER_BIN_NAME),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// The loader binary for `test`, or `None` (after printing why, see [`gate`]) when the test
/// cannot run here: `problems` already found by the caller, plus a missing loader.
#[must_use]
pub fn loader_or_skip(test: &str, mut problems: Vec<String>) -> Option<PathBuf> {
    let loader = locate_loader();
    if loader.is_none() {
        problems.push(format!(
            "the mptcp-loader binary was not found (set {LOADER_BIN_ENV}, or build it with \
             `cargo xtask build` / `cargo build --release -p mptcp-loader`)"
        ));
    }
    if gate(test, &problems) {
        loader
    } else {
        None
    }
}

/// [`Validator::start_with`] for `test`; a loader built without its eBPF object (no
/// bpf-linker) counts as "cannot run here" like a missing binary (`None`, see [`gate`]).
///
/// # Panics
/// When the loader fails to start for any other reason.
#[must_use]
pub fn start_or_skip(
    test: &str,
    ns: &Netns,
    bin: &Path,
    ifaces: &[&str],
    mode: Mode,
    options: &[&str],
) -> Option<Validator> {
    match Validator::start_with(ns, bin, ifaces, mode, options) {
        Ok(v) => Some(v),
        Err(err @ LabError::Exited { .. })
            if err.to_string().contains("eBPF object was not built") =>
        {
            let _ = gate(
                test,
                &[format!("{} has no eBPF object: {err}", bin.display())],
            );
            None
        }
        Err(err) => panic!("starting {} in {}: {err}", bin.display(), ns.name()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExecMode {
    Nsenter,
    IpNetns,
}

impl ExecMode {
    fn from_env() -> ExecMode {
        match env::var(LOADER_EXEC_ENV).as_deref() {
            Ok("ip-netns") => ExecMode::IpNetns,
            _ => ExecMode::Nsenter,
        }
    }

    fn command(self, ns: &Netns, bin: &Path) -> Command {
        match self {
            ExecMode::Nsenter => ns.net_only_command(bin),
            ExecMode::IpNetns => ns.command(bin),
        }
    }
}

/// A running `mptcp-loader run`.
pub struct Validator {
    proc: Proc,
    bin: PathBuf,
    exec: ExecMode,
    ifaces: Vec<String>,
    attach_lines: Vec<String>,
}

impl Validator {
    /// Starts `mptcp-loader run --iface .. --mode ..` in `ns` and waits until it has said that
    /// it attached to every interface and `ip link` shows XDP on each.
    ///
    /// # Errors
    /// When the loader exits, does not report attaching within 30 s, or XDP is not there.
    pub fn start(ns: &Netns, bin: &Path, ifaces: &[&str], mode: Mode) -> Result<Validator> {
        Validator::start_with(ns, bin, ifaces, mode, &[])
    }

    /// [`Validator::start`] with more `run` options (`--max-conns 64`, ...).
    ///
    /// # Errors
    /// As [`Validator::start`].
    pub fn start_with(
        ns: &Netns,
        bin: &Path,
        ifaces: &[&str],
        mode: Mode,
        options: &[&str],
    ) -> Result<Validator> {
        let exec = ExecMode::from_env();
        let mut cmd = exec.command(ns, bin);
        cmd.arg("run");
        for iface in ifaces {
            cmd.args(["--iface", iface]);
        }
        cmd.args(["--mode", mode.as_str()]);
        cmd.args(options);
        if env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let proc = Proc::spawn(&format!("mptcp-loader run [{}]", ns.name()), cmd)?;
        let mut validator = Validator {
            proc,
            bin: bin.to_owned(),
            exec,
            ifaces: ifaces.iter().map(|s| (*s).to_owned()).collect(),
            attach_lines: Vec::new(),
        };
        validator.wait_attached(ns)?;
        Ok(validator)
    }

    fn wait_attached(&mut self, ns: &Netns) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut pending: Vec<String> = self.ifaces.clone();
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .proc
                .wait_for_line("`attached` lines naming every interface", left, |l| {
                    l.to_ascii_lowercase().contains("attached")
                })
                .map_err(|err| self.explain_attach_failure(ns, err))?;
            pending.retain(|iface| !mentions(&line, iface));
            self.attach_lines.push(line);
        }
        for iface in &self.ifaces {
            if ns.xdp_prog_id(iface)?.is_none() {
                return Err(LabError::Unexpected {
                    process: self.proc.name().to_owned(),
                    request: format!("attach to {iface}"),
                    line: format!(
                        "it said {:?} but `ip link show {iface}` has no prog/xdp",
                        self.attach_lines
                    ),
                });
            }
        }
        Ok(())
    }

    /// Adds what `ip link` shows to a wait error, to tell "did not attach" from "did not say so".
    fn explain_attach_failure(&self, ns: &Netns, err: LabError) -> LabError {
        let xdp: Vec<String> = self
            .ifaces
            .iter()
            .map(|i| match ns.xdp_prog_id(i) {
                Ok(Some(id)) => format!("{i}: prog/xdp id {id}"),
                Ok(None) => format!("{i}: no XDP program"),
                Err(e) => format!("{i}: {e}"),
            })
            .collect();
        match err {
            LabError::Timeout { what, after, log } => LabError::Timeout {
                what,
                after,
                log: format!("{log}(ip link: {})", xdp.join("; ")),
            },
            other => other,
        }
    }

    /// The lines in which the loader said it attached.
    #[must_use]
    pub fn attach_lines(&self) -> &[String] {
        &self.attach_lines
    }

    /// Everything the loader printed so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The loader's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether the loader is still running (`None`), or how it ended.
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.proc.try_wait()
    }

    /// Runs `mptcp-loader conns --json` in `ns` and parses it (an array of connections).
    ///
    /// # Errors
    /// When the command fails or does not print JSON.
    pub fn conns(&self, ns: &Netns) -> Result<Value> {
        let mut cmd = self.exec.command(ns, &self.bin);
        cmd.args(["conns", "--json"]);
        let out = run_checked(&mut cmd)?;
        serde_json::from_str(out.trim())
            .map_err(|e| LabError::parse("`mptcp-loader conns --json` output", format!("{e}")))
    }

    /// Runs `mptcp-loader stats --json` in `ns` and parses it.
    ///
    /// # Errors
    /// When the command fails or prints no JSON with known counters.
    pub fn stats(&self, ns: &Netns) -> Result<ValidatorStats> {
        let mut cmd = self.exec.command(ns, &self.bin);
        cmd.args(["stats", "--json"]);
        let out = run_checked(&mut cmd)?;
        ValidatorStats::parse(&out)
    }

    /// SIGINT, then waits up to 10 s (SIGKILL after that). Reports whether it exited by itself
    /// and whether XDP is gone from every interface.
    ///
    /// # Errors
    /// When signalling or waiting fails.
    pub fn stop(mut self, ns: &Netns) -> Result<StopReport> {
        let (status, graceful) = self.proc.stop(libc::SIGINT, STOP_GRACE)?;
        let still_attached = self
            .ifaces
            .iter()
            .filter(|i| matches!(ns.xdp_prog_id(i), Ok(Some(_))))
            .cloned()
            .collect();
        Ok(StopReport {
            status,
            graceful,
            still_attached,
            log: self.proc.log(),
        })
    }
}

impl Drop for Validator {
    /// On an early return or a panic, still let the loader detach and unpin (SIGINT) before the
    /// process handle kills it.
    fn drop(&mut self) {
        if matches!(self.proc.try_wait(), Ok(None)) {
            let _ = self.proc.stop(libc::SIGINT, STOP_GRACE);
        }
    }
}

/// How `run` ended.
#[derive(Debug)]
pub struct StopReport {
    /// Exit status.
    pub status: ExitStatus,
    /// Whether it exited within the grace period after SIGINT (else it was killed).
    pub graceful: bool,
    /// Interfaces that still have an XDP program afterwards.
    pub still_attached: Vec<String>,
    /// Everything it printed.
    pub log: String,
}

impl StopReport {
    /// Asserts that SIGINT stopped the run cleanly and it left no XDP program behind; `why`
    /// (the scenario's context) ends each failure message.
    #[track_caller]
    pub fn assert_clean(&self, why: &str) {
        assert!(
            self.graceful && self.status.success(),
            "SIGINT did not stop the loader cleanly: {}\n{why}",
            self.status
        );
        assert!(
            self.still_attached.is_empty(),
            "XDP left on {:?} after the loader exited\n{why}",
            self.still_attached
        );
    }
}

/// Whether `line` names `iface` as a word (so `sveth1` does not match `sveth10`).
fn mentions(line: &str, iface: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .any(|word| word == iface)
}

/// The validator's counters, by `Counter::name()`.
#[derive(Clone, Debug)]
pub struct ValidatorStats {
    /// Counters found in the JSON.
    pub counters: BTreeMap<String, u64>,
    /// The whole document.
    pub json: Value,
}

impl ValidatorStats {
    /// Parses `stats --json` output (see the module docs for the accepted shapes).
    ///
    /// # Errors
    /// When it is not JSON or names none of the known counters.
    pub fn parse(text: &str) -> Result<ValidatorStats> {
        let json: Value = serde_json::from_str(text.trim()).map_err(|e| {
            LabError::parse("`mptcp-loader stats --json` output", format!("{e}: {text}"))
        })?;
        let counters = extract_counters(&json);
        if counters.is_empty() {
            return Err(LabError::parse(
                "`mptcp-loader stats --json` output",
                format!("no known counter name in {text}"),
            ));
        }
        Ok(ValidatorStats { counters, json })
    }

    /// A counter's value (0 when absent).
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters.get(counter.name()).copied().unwrap_or(0)
    }

    /// Counter names of `mptcp_common` that the JSON did not contain.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        Counter::ALL
            .iter()
            .map(|c| c.name())
            .filter(|n| !self.counters.contains_key(*n))
            .collect()
    }
}

fn is_counter_name(name: &str) -> bool {
    Counter::ALL.iter().any(|c| c.name() == name)
}

/// A number, or an object with one of the usual total fields.
fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        ["total", "value", "count", "sum"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_u64))
    })
}

/// Breadth-first, so a top-level total wins over a nested breakdown of the same name.
fn extract_counters(root: &Value) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let mut queue = VecDeque::from([root]);
    while let Some(v) = queue.pop_front() {
        match v {
            Value::Object(map) => {
                if let (Some(name), Some(count)) =
                    (map.get("name").and_then(Value::as_str), as_count(v))
                {
                    if is_counter_name(name) {
                        found.entry(name.to_owned()).or_insert(count);
                    }
                }
                for (k, child) in map {
                    match as_count(child) {
                        Some(count) if is_counter_name(k) => {
                            found.entry(k.clone()).or_insert(count);
                        }
                        _ => queue.push_back(child),
                    }
                }
            }
            Value::Array(items) => queue.extend(items),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_nested_and_listed_shapes() {
        for text in [
            r#"{"add_addr_valid": 2, "add_addr_bad_hmac_dropped": 5}"#,
            r#"{"mode": "enforce", "counters": {"add_addr_valid": 2, "add_addr_bad_hmac_dropped": 5}}"#,
            r#"[{"name": "add_addr_valid", "value": 2}, {"name": "add_addr_bad_hmac_dropped", "value": 5}]"#,
            r#"{"add_addr_valid": {"total": 2, "per_cpu": [1, 1]}, "add_addr_bad_hmac_dropped": {"total": 5}}"#,
        ] {
            let s = ValidatorStats::parse(text).unwrap();
            assert_eq!(s.get(Counter::AddAddrValid), 2, "{text}");
            assert_eq!(s.get(Counter::AddAddrBadHmacDropped), 5, "{text}");
            assert_eq!(s.get(Counter::Malformed), 0);
            assert!(s.missing().contains(&"malformed"));
        }
    }

    #[test]
    fn top_level_wins_over_breakdowns() {
        let s = ValidatorStats::parse(
            r#"{"per_iface": {"sveth1": {"add_addr_valid": 1}}, "add_addr_valid": 3}"#,
        )
        .unwrap();
        assert_eq!(s.get(Counter::AddAddrValid), 3);
    }

    #[test]
    fn rejects_unknown_documents() {
        assert!(ValidatorStats::parse("not json").is_err());
        assert!(ValidatorStats::parse(r#"{"foo": 1}"#).is_err());
    }

    #[test]
    fn interface_mentions_are_whole_words() {
        assert!(mentions(
            "INFO attached mptcp_xdp to sveth1 (drv mode)",
            "sveth1"
        ));
        assert!(mentions("attached to sveth1,sveth2", "sveth2"));
        assert!(!mentions("attached to sveth10", "sveth1"));
    }
}
