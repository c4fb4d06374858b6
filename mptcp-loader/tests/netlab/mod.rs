//! Helpers for the integration tests of this crate: the built binary, and the loader's commands
//! in the lab of the root-only tests. The lab itself (network namespaces, veth pairs, processes,
//! MPTCP peers, forgers) is `mptcp-lab`, shared with the tests crate; this adds what only the
//! loader's tests need: `mptcp-loader` inside a namespace, its pin and state directories removed
//! with the namespace, a `run` started and waited for, a probe program for the tc hooks, and
//! waits that panic instead of returning errors. Addresses are in 198.18.0.0/15 only.

#![allow(dead_code, reason = "each test file uses a part of it")]

use mptcp_loader::kernel::bpf_sys::sys_bpf;
use std::{
    ops::Deref,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The loader binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mptcp-loader");

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

/// A network namespace of the lab (`mptcp_lab::Netns`: deleted on drop with every process in
/// it) with the loader's commands; its pin and state directories are removed on drop too.
pub struct Netns {
    ns: mptcp_lab::Netns,
    inode: u64,
}

impl Deref for Netns {
    type Target = mptcp_lab::Netns;

    fn deref(&self) -> &mptcp_lab::Netns {
        &self.ns
    }
}

impl Netns {
    /// Creates `mptcp-lab-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let ns = mptcp_lab::Netns::create(tag).expect("creating a network namespace");
        let inode = std::fs::metadata(ns.path()).unwrap().ino();
        Self { ns, inode }
    }

    /// `ip -n NAME args`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args).unwrap_or_else(|e| panic!("{e}"))
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
        self.ns.command(program)
    }

    /// `nsenter --net=... mptcp-loader`: the loader in this network namespace, with the host's
    /// bpffs.
    #[must_use]
    pub fn loader(&self) -> Command {
        let mut cmd = self.ns.net_only_command(BIN);
        cmd.env("RUST_LOG", "info");
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
        self.ns.xdp_prog_id(iface).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A named counter of `stats --json`.
    pub fn counter(&self, name: &str) -> u64 {
        self.loader_json(&["stats"])[name].as_u64().unwrap()
    }

    /// `count` pings to `peer`, 50 ms apart, which must all be answered.
    pub fn ping(&self, peer: &str, count: u32) {
        output_ok(self.exec("ping").args([
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            peer,
        ]));
    }

    /// A kernel SNMP counter (`/proc/net/netstat`, e.g. `MPTcpExt` `AddAddr`) of this namespace.
    pub fn netstat(&self, group: &str, name: &str) -> u64 {
        let counters = self.ns.counters().unwrap_or_else(|e| panic!("{e}"));
        counters.get(&format!("{group}{name}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test that failed half-way may have left its firewall pinned. The namespace itself
        // goes right after, with the `ns` field.
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

#[allow(unused_imports, reason = "each test file uses a part of it")]
pub use mptcp_lab::netns::parse_xdp_prog_id as xdp_prog_id_in;

/// A veth pair `a_if` (in `a`, `a_addr/24`) <-> `b_if` (in `b`, `b_addr/24`), both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    mptcp_lab::netns::veth(a, a_if, a_addr, b, b_if, b_addr).unwrap_or_else(|e| panic!("{e}"));
}

/// A process of the lab (`mptcp_lab::Proc`: output read line by line, killed on drop) whose
/// waits panic with its output instead of returning errors.
pub struct Proc(pub mptcp_lab::Proc);

impl Proc {
    /// Spawns `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(name: &str, cmd: Command) -> Self {
        Self(mptcp_lab::Proc::spawn(name, cmd).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Waits for a line matching `pred`; panics with the log after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.0
            .wait_for_line(what, timeout, pred)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends `signal`.
    pub fn signal(&mut self, signal: i32) {
        self.0.signal(signal).unwrap_or_else(|e| panic!("{e}"));
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
        self.0
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("{e}"))
            .code()
    }
}

/// One forged MP_JOIN SYN of [`send_join_syns`]: its source port, sequence number and how many
/// bytes of data it carries.
pub struct JoinSyn {
    pub sport: u16,
    pub seq: u32,
    pub payload: usize,
}

/// Sends from `ns` TCP SYNs to `dst:10000` carrying an MP_JOIN (address ID 2) with `token` and
/// a random nonce, window 65535, data bytes `j`: through a raw IP socket, so the kernel of `ns`
/// adds the IP header (source `src`) and routes them; the TCP checksum is computed here.
pub fn send_join_syns(ns: &Netns, src: &str, dst: &str, token: [u8; 4], syns: &[JoinSyn]) {
    use mptcp_common::packet::TCP_SYN;
    use mptcp_lab::{mptcp_frames::join_syn, wire};
    let (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (src.parse().unwrap(), dst.parse().unwrap());
    let segments: Vec<Vec<u8>> = syns
        .iter()
        .map(|syn| {
            let seg = wire::Segment {
                macs: ([0; 6], [0; 6]),
                src: (src, syn.sport),
                dst: (dst, 10000),
                seq: syn.seq,
                ack: 0,
                flags: TCP_SYN,
                window: 65535,
            };
            let option = join_syn(2, &token, &wire::random_bytes());
            wire::ipv4_frame(&seg, &option, &vec![b'j'; syn.payload]).tcp_segment()
        })
        .collect();
    ns.enter(|| wire::send_tcp_segments(dst, &segments))
        .unwrap()
        .expect("sending the forged SYNs");
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

/// Starts `mptcp-loader run --mode enforce ARGS` in `ns`, recording its drop events into
/// `scratch` (`--pcap`, `--state-dir`), and waits as [`start_run`] does.
pub fn start_recording_run(ns: &Netns, args: &[&str], scratch: &Scratch) -> Proc {
    let (pcap, state_dir) = (scratch.pcap(), scratch.state_dir());
    let mut all = args.to_vec();
    all.extend([
        "--mode",
        "enforce",
        "--pcap",
        &pcap,
        "--state-dir",
        &state_dir,
    ]);
    start_run(ns, &all)
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

/// A temporary directory for a run's pcap (`drops.pcap`) and state directory (`state`),
/// removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// An empty `mptcp-loader-<tag>-<pid>` in the temporary directory.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mptcp-loader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The path for `run --pcap`.
    pub fn pcap(&self) -> String {
        self.0.join("drops.pcap").display().to_string()
    }

    /// The path for `run --state-dir`.
    pub fn state_dir(&self) -> String {
        self.0.join("state").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tshark -r PCAP -T fields -e FIELD...`: its output, and the fields of each frame.
pub fn tshark_fields(pcap: &str, fields: &[&str]) -> (String, Vec<Vec<String>>) {
    let mut cmd = Command::new("tshark");
    cmd.args(["-r", pcap, "-T", "fields"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let text = output_ok(&mut cmd);
    let frames = text
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    (text, frames)
}

/// Whether tshark's `tcp.options.mptcp.recvtok` shows `token` (hex digits): tshark prints it in
/// hex or in decimal, by version.
pub fn recvtok_is(field: &str, token: &str) -> bool {
    let recvtok = field.trim_start_matches("0x");
    recvtok == token || recvtok == u32::from_str_radix(token, 16).unwrap().to_string()
}

/// A bpffs directory for the test's own pins, removed on drop.
pub struct PinGuard(pub PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
