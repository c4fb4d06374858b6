//! Helpers for the integration tests of this crate: the built binary, and a small lab for the
//! root-only tests: network namespaces (deleted on drop, with the pins and state the loader left
//! for them), veth pairs, and processes whose output is collected line by line (killed on drop).
//! Addresses are in 198.18.0.0/15 only.

#![allow(dead_code, reason = "each test file uses a part of it")]

use mptcp_loader::kernel::bpf_sys::sys_bpf;
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{channel, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// The loader binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mptcp-loader");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs the loader binary with `args` to completion, here and with logging off.
pub fn loader(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("the mptcp-loader binary runs")
}

/// What keeps a test that loads the eBPF object from running here: not root, or only the stub
/// object (built without bpf-linker or with `AYA_BUILD_SKIP=1`). Empty when it can run.
pub fn load_problems() -> Vec<String> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not root".to_owned());
    }
    if mptcp_loader::EBPF_OBJ.is_empty() {
        problems.push(
            "the eBPF object was not built (AYA_BUILD_SKIP=1 or no bpf-linker): the loader holds \
             the empty stub"
                .to_owned(),
        );
    }
    problems
}

/// Whether the test can load the object here (root and the built object). When it cannot, it
/// skips, or fails in CI and with `MPTCP_TESTS_REQUIRE_BPF=1` ([`mptcp_common::testing::gate`]).
pub fn can_load(test: &str) -> bool {
    mptcp_common::testing::gate(test, &load_problems())
}

/// Whether the test can run here: root, the built object, and `ip`, `nsenter` and `tools`.
/// Skips or fails as [`can_load`].
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    let mut problems = load_problems();
    for tool in ["ip", "nsenter"].iter().chain(tools) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            problems.push(format!("`{tool}` is not installed"));
        }
    }
    mptcp_common::testing::gate(test, &problems)
}

/// Runs a command to completion; panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    output_ok(Command::new(args[0]).args(&args[1..]))
}

/// Runs `cmd` to completion; its stdout. Panics with the command and its stderr when it fails.
pub fn output_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace; deleted on drop together with the loader's pin and state
/// directories for it.
pub struct Netns {
    /// `ip netns` name.
    pub name: String,
    inode: u64,
}

impl Netns {
    /// Creates `mfw-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "mfw-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let inode = std::fs::metadata(format!("/run/netns/{name}"))
            .unwrap()
            .ino();
        let ns = Self { name, inode };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// The loader's default pin directory for this namespace.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/mptcp-fw/netns-{}", self.inode))
    }

    /// The loader's default state directory for this namespace.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/mptcp-fw/netns-{}", self.inode))
    }

    /// `ip netns exec NAME program` (own /sys: for anything but the loader).
    #[must_use]
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `nsenter --net=... mptcp-loader`: the loader in this network namespace, with the host's
    /// bpffs.
    #[must_use]
    pub fn loader(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(BIN)
            .env("RUST_LOG", "info");
        cmd
    }

    /// Runs `mptcp-loader args` here to completion.
    pub fn loader_output(&self, args: &[&str]) -> Output {
        self.loader().args(args).output().unwrap()
    }

    /// `mptcp-loader args` here, which must succeed; its stdout.
    pub fn loader_ok(&self, args: &[&str]) -> String {
        let out = self.loader_output(args);
        assert!(
            out.status.success(),
            "mptcp-loader {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `mptcp-loader args` here, which must fail with one `error:` line; that line.
    pub fn loader_error(&self, args: &[&str]) -> String {
        let out = self.loader_output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mptcp-loader {args:?} succeeded");
        stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in {stderr}"))
            .to_owned()
    }

    /// `mptcp-loader ARGS --json` here, parsed.
    pub fn loader_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.loader_ok(&all)).unwrap()
    }

    /// The id of the XDP program on `iface`, if any.
    pub fn xdp_prog_id(&self, iface: &str) -> Option<u32> {
        xdp_prog_id_in(&self.ip(&["-d", "link", "show", "dev", iface]))
    }

    /// A named counter of `stats --json`.
    pub fn counter(&self, name: &str) -> u64 {
        self.loader_json(&["stats"])[name].as_u64().unwrap()
    }

    /// A kernel SNMP counter (`/proc/net/netstat`, e.g. `MPTcpExt` `AddAddr`) of this namespace.
    pub fn netstat(&self, group: &str, name: &str) -> u64 {
        let out = self.exec("cat").arg("/proc/net/netstat").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{group}:");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        let names = rows[0].split_whitespace();
        let values = rows[1].split_whitespace();
        names
            .zip(values)
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v.parse().unwrap())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // A test that failed half-way may have left its firewall pinned.
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

/// `prog/xdp id N` in `ip -d link show` output.
#[must_use]
pub fn xdp_prog_id_in(out: &str) -> Option<u32> {
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word.starts_with("prog/xdp") && words.next() == Some("id") {
            return words.next().and_then(|id| id.parse().ok());
        }
    }
    None
}

/// A veth pair `a_if` (in `a`, `a_addr/24`) <-> `b_if` (in `b`, `b_addr/24`), both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface]);
        ns.ip(&["link", "set", iface, "up"]);
    }
}

/// A running process whose stdout and stderr lines are collected; killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (tx, lines) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let (tx, log) = (tx.clone(), Arc::clone(&log));
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            log,
        }
    }

    /// Waits for a line matching `pred`; panics with the log after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "{}: no {what} within {timeout:?}; output:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// Sends one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), signal) };
    }

    /// Sends `signal` and waits up to 10 s for it to exit with status 0; panics with its output
    /// otherwise.
    pub fn stop(&mut self, signal: i32) {
        self.signal(signal);
        assert_eq!(
            self.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            self.log()
        );
    }

    /// Waits up to `timeout` for it to exit; its status code (`None`: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads catch the last lines.
                thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; output:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mptcp-loader run ARGS` in `ns` and waits until it has attached to every `--iface`.
pub fn start_run(ns: &Netns, args: &[&str]) -> Proc {
    let mut cmd = ns.loader();
    cmd.arg("run").args(args);
    let mut run = Proc::spawn(&format!("mptcp-loader run {args:?}"), cmd);
    let ifaces = args.windows(2).filter(|w| w[0] == "--iface").count();
    for _ in 0..ifaces {
        run.wait_for("`attached to` line", Duration::from_secs(30), |l| {
            l.starts_with("attached to ")
        });
    }
    run
}

/// Polls `pred` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A test program of our own for the tc hooks, for tests that attach something beside the
/// firewall: `r0 = TC_ACT_UNSPEC; exit` (no verdict), loaded with bpf(2) and counted by the
/// kernel's run statistics (`aya::sys::enable_stats`).
/// `BPF_PROG_LOAD`, `BPF_OBJ_PIN`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
/// `BPF_PROG_TYPE_SCHED_CLS`.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// One `struct bpf_insn` (code, dst_reg, no src_reg, no offset, imm) as its 8 bytes.
fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    u64::from(code) | (u64::from(dst) << 8) | (u64::from(imm.cast_unsigned()) << 32)
}

/// Loads `r0 = -1 (TC_ACT_UNSPEC); exit` as a tc classifier called `name` and pins it at `pin`.
pub fn load_probe(name: &str, pin: &Path) {
    // BPF_ALU64 | BPF_MOV | BPF_K, then BPF_JMP | BPF_EXIT.
    let insns = [insn(0xb7, 0, -1), insn(0x95, 0, 0)];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt, insns, license; prog_name at byte 48.
    attr[0] = u64::from(BPF_PROG_TYPE_SCHED_CLS) | (2 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[6] = u64::from_ne_bytes(prog_name[..8].try_into().unwrap());
    attr[7] = u64::from_ne_bytes(prog_name[8..].try_into().unwrap());
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).expect("loading a two-instruction classifier");
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
    let path = std::ffi::CString::new(pin.to_str().unwrap()).unwrap();
    let mut attr = [0u64; 16];
    // pathname, bpf_fd.
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::try_from(fd.as_raw_fd()).unwrap();
    sys_bpf(BPF_OBJ_PIN, &mut attr).expect("pinning the probe");
}

/// How often the program pinned at `pin` ran (while run statistics are enabled).
pub fn probe_runs(pin: &Path) -> u64 {
    aya::programs::ProgramInfo::from_pin(pin)
        .unwrap()
        .run_count()
}

/// A bpffs directory for the test's own pins, removed on drop.
pub struct PinGuard(pub PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
