//! The firewall as a component of libxdp's multi-program dispatcher (`mptcp-loader`'s
//! `multiprog` module): the dispatcher of Debian's `libxdp1` loaded through aya with the
//! configuration libxdp reads back, and the real ingress program loaded as the `freplace`
//! component of its first slot, run through the dispatcher by BPF_PROG_TEST_RUN.
//!
//! Some kernels refuse `BPF_PROG_TYPE_EXT` outright (this project's 6.18 sandbox answers EPERM
//! before verifying); there the component test checks that the loader says so and stops.
//! `cargo xtask vm-test` sets `MPTCP_TESTS_REQUIRE_FREPLACE=1`: Debian's kernels must accept it.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "libc's C integer types and raw packet bytes, written as C does"
)]

use aya::programs::{TestRun as _, TestRunOptions};
use mptcp_common::maps::{Config, MODE_ENFORCE};
use mptcp_loader::kernel::firewall::xdp_ingress_program;
use mptcp_loader::kernel::{
    multiprog::{self, Dispatcher, DispatcherConfig, Slot, DISPATCHER_OBJECT, FIREWALL_SLOT},
    KernelError,
};

use super::{add_addr_from, mpc_ab, Frame, Validator, XDP_DROP, XDP_PASS};

fn dispatcher(slots: &[Slot]) -> Dispatcher {
    Dispatcher::load_file(DISPATCHER_OBJECT.as_ref(), slots)
        .unwrap_or_else(|e| panic!("{e} (is Debian's libxdp1 installed? `cargo xtask setup`)"))
}

fn run(d: &Dispatcher, frame: &[u8]) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    d.program()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN of the dispatcher")
        .return_value
}

#[test]
fn dispatcher_holds_the_configuration_libxdp_reads() {
    let other = Slot {
        run_priority: 50,
        chain_call_actions: 1 << XDP_PASS,
        frags: false,
    };
    let d = dispatcher(&[FIREWALL_SLOT, other]);
    let config = d.kernel_config().expect("dispatcher .rodata");
    assert_eq!(config, DispatcherConfig::new(&[FIREWALL_SLOT, other]));
    assert_eq!(
        (
            config.magic,
            config.dispatcher_version,
            config.num_progs_enabled
        ),
        (236, 2, 2)
    );
    assert_eq!(config.run_prios[..2], [multiprog::RUN_PRIORITY, 50]);
    // XDP_PASS continues the chain, and the empty-stub value 31 always does.
    assert_eq!(config.chain_call_actions[0], (1 << 2) | (1 << 31));
    // One component is not frags-aware, so the dispatcher is not either.
    assert_eq!(
        (config.is_xdp_frags, config.program_flags[..2].to_vec()),
        (0, vec![multiprog::BPF_F_XDP_HAS_FRAGS, 0])
    );
    // No component attached yet: every stub returns 31, the chain runs through, the packet
    // passes.
    assert_eq!(run(&d, &Frame::v4(&mpc_ab()).bytes()), XDP_PASS);
}

#[test]
fn the_firewall_runs_as_a_dispatcher_component() {
    let require = std::env::var_os("MPTCP_TESTS_REQUIRE_FREPLACE").is_some();
    let d = dispatcher(&[FIREWALL_SLOT]);
    let mut ebpf =
        multiprog::load_object_as_component(mptcp_loader::EBPF_OBJ).expect("load object");
    let _link = match multiprog::load_component(&mut ebpf, xdp_ingress_program(), &d, 0) {
        Err(KernelError::MultiprogUnsupported { detail }) if !require => {
            assert!(detail.contains("BPF_PROG_TYPE_EXT"), "{detail}");
            eprintln!("this kernel refuses freplace programs, as the loader says: {detail}");
            return;
        }
        result => result.unwrap_or_else(|e| panic!("{e}")),
    };
    let mut v = Validator { ebpf };
    v.set_config(Config {
        mode: MODE_ENFORCE,
        ..Config::default()
    });
    let base = Frame::v4(&mpc_ab());
    assert_eq!(run(&d, &base.bytes()), XDP_PASS, "keys learned, passed");
    let genuine = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    assert_eq!(run(&d, &base.with_opts(&genuine).bytes()), XDP_PASS);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    assert_eq!(
        run(&d, &base.with_opts(&forged).bytes()),
        XDP_DROP,
        "the firewall's drop ends the chain"
    );
    let c = v.counters();
    assert_eq!(
        (c["add_addr_valid"], c["add_addr_bad_hmac_dropped"]),
        (1, 1),
        "{c:?}"
    );
}

/// Brings `lo` of this thread's network namespace up.
fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; results checked.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(sock >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        assert_eq!(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr), 0);
        libc::close(sock);
    }
}

/// Sends Ethernet frames out of `lo`, which loops them back into its receive path, where
/// generic XDP runs.
struct LoopbackSender(std::os::fd::OwnedFd);

impl LoopbackSender {
    fn new() -> Self {
        // SAFETY: socket(2); the result is checked and owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: a zeroed sockaddr_ll naming lo; the frame buffer is valid for its length.
        let sent = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = LO as i32;
            to.sll_halen = 6;
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// The neighbour: xdp-filter's allow-by-default program with every feature, from Debian's
/// `xdp-tools` (at the same path in the vm-test initramfs).
const NEIGHBOUR_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";
const NEIGHBOUR: &str = "xdpfilt_alw_all";
/// What `xdp-loader load` adds to the firewall's dispatcher: xdp-filter's allow-by-default program for IP only
/// (priority 10; passes what its empty lists do not name).
const LIBXDP_ADDED_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_ip.o";

/// A bpffs directory for the neighbour's pinned maps, removed on drop.
struct NeighbourPins(std::path::PathBuf);

impl NeighbourPins {
    fn new() -> Self {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/mptcp-test-multiprog-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("bpffs directory");
        Self(dir)
    }
}

impl Drop for NeighbourPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Frames the kernel dropped because a CPU's receive backlog was full (`/proc/net/softnet_stat`,
/// second column): `lo` queues what it sends there, and generic XDP runs only on what is
/// dequeued, so a flood can lose frames before any XDP program, whoever is attached.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .expect("softnet_stat")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|hex| u64::from_str_radix(hex, 16).expect("hex"))
        .sum()
}

/// `lo`'s index in a fresh network namespace.
const LO: u32 = 1;

/// Every frame the firewall saw (one packet reason each).
fn frames_seen(v: &Validator) -> u64 {
    let c = v.counters();
    mptcp_common::counters::Counter::ALL
        .iter()
        .filter(|r| r.is_packet_reason())
        .map(|r| c.get(r.name()).copied().unwrap_or(0))
        .sum()
}

/// Installs program `name` of `v` on `lo` in generic mode (see [`multiprog::install`]).
fn install_on_lo(v: &mut Validator, name: &'static str, slot: Slot) -> multiprog::Swap {
    let member = multiprog::Member {
        name,
        slot,
        program: extension(v, name),
    };
    multiprog::install(
        "lo",
        LO,
        mptcp_loader::kernel::firewall::XdpAttach::Skb,
        member,
        DISPATCHER_OBJECT.as_ref(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn firewall_component() -> Validator {
    let ebpf = multiprog::load_object_as_component(mptcp_loader::EBPF_OBJ).expect("load object");
    let mut v = Validator { ebpf };
    v.set_config(Config {
        mode: MODE_ENFORCE,
        ..Config::default()
    });
    v
}

fn extension<'a>(v: &'a mut Validator, name: &str) -> &'a mut aya::programs::Extension {
    v.ebpf
        .program_mut(name)
        .expect(name)
        .try_into()
        .expect("an extension")
}

/// Runs `body` in a thread of its own network namespace with `lo` up, if this kernel chains
/// XDP programs; otherwise checks that the loader says why (required to chain where
/// `MPTCP_TESTS_REQUIRE_FREPLACE` is set).
fn in_own_netns_if_chaining(body: fn()) {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) affects this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        loopback_up();
        let require = std::env::var_os("MPTCP_TESTS_REQUIRE_FREPLACE").is_some();
        match multiprog::probe(mptcp_loader::EBPF_OBJ, DISPATCHER_OBJECT.as_ref()) {
            Err(KernelError::MultiprogUnsupported { detail }) if !require => {
                assert!(detail.contains("BPF_PROG_TYPE_EXT"), "{detail}");
                eprintln!("this kernel refuses freplace programs: {detail}");
            }
            result => {
                result.unwrap_or_else(|e| panic!("{e}"));
                body();
            }
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The protocol on a real interface, `lo` of a network namespace of the test's own (a thread
/// in `unshare(CLONE_NEWNET)`): xdp-filter's program joins first (its own priority 10), then the
/// firewall after it (priority 20); frames sent on `lo` reach both (xdp-filter's own counters
/// and the firewall's), a forged ADD_ADDR is dropped; then a second firewall instance (a restart)
/// replaces the first while frames keep coming, and every frame is counted by the one or the
/// other: the interface never ran without the firewall. Then both leave and the interface has
/// no XDP program.
#[test]
fn the_firewall_shares_an_interface_and_is_replaced_without_a_gap() {
    in_own_netns_if_chaining(shares_an_interface);
}

fn shares_an_interface() {
    use mptcp_loader::kernel::netlink;

    let object = std::path::Path::new(DISPATCHER_OBJECT);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("run statistics");

    // xdp-filter's program (Debian's xdp-tools), its maps pinned in a directory of the test's.
    let pins = NeighbourPins::new();
    let mut neighbour = Validator {
        ebpf: aya::EbpfLoader::new()
            .extension(NEIGHBOUR)
            .default_map_pin_directory(&pins.0)
            .load_file(NEIGHBOUR_OBJECT)
            .expect("load xdp-filter's object"),
    };
    // Its compiled-in run configuration (`xdp-loader status` shows it): priority 10, chain
    // on XDP_PASS.
    let neighbour_slot = Slot {
        run_priority: 10,
        chain_call_actions: 1 << XDP_PASS,
        frags: false,
    };
    let first = install_on_lo(&mut neighbour, NEIGHBOUR, neighbour_slot);
    assert_eq!(first.replaced, None);
    assert_eq!(first.components, ["xdpfilt_alw_all"]);

    let mut old = firewall_component();
    let joined = install_on_lo(&mut old, xdp_ingress_program(), FIREWALL_SLOT);
    assert_eq!(joined.replaced, first.dispatcher);
    assert_eq!(joined.components, ["xdpfilt_alw_all", "mptcp_xdp_ingre"]);
    let attached = netlink::xdp_attached(LO).unwrap().expect("XDP on lo");
    assert_eq!(Some(attached.prog_id), joined.dispatcher);
    let installed = multiprog::Installed::read("lo", LO)
        .unwrap()
        .expect("a dispatcher");
    assert_eq!(
        installed
            .components
            .iter()
            .map(|(_, s)| s.run_priority)
            .collect::<Vec<_>>(),
        [10, multiprog::RUN_PRIORITY]
    );
    assert!(!multiprog::dispatcher_dir(LO, first.dispatcher.unwrap()).exists());
    let mut libxdp_added = false;
    // libxdp reads the dispatcher as its own (where xdp-tools is installed: required in vm-test).
    match std::process::Command::new("xdp-loader")
        .args(["status", "lo"])
        .output()
    {
        Ok(out) => {
            let status = String::from_utf8_lossy(&out.stdout);
            eprintln!("xdp-loader status lo:\n{status}");
            let row = |name: &str| {
                status
                    .lines()
                    .find(|l| l.contains(name))
                    .unwrap_or_else(|| panic!("no {name} in\n{status}"))
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            assert_eq!(row("xdp_dispatcher")[1], "xdp_dispatcher", "{status}");
            // `=> PRIO NAME ... CHAIN-ACTIONS`
            assert_eq!(
                row("xdpfilt_alw_all")[1..3],
                ["10", "xdpfilt_alw_all"],
                "{status}"
            );
            let ours = row(&xdp_ingress_program()[..15]);
            assert_eq!(ours[1], "20", "{status}");
            assert!(shows(&ours[2], xdp_ingress_program()), "{status}");
            assert_eq!(
                ours.last().map(String::as_str),
                Some("XDP_PASS"),
                "{status}"
            );
            // And libxdp adds a program of its own to the firewall's dispatcher.
            let out = std::process::Command::new("xdp-loader")
                .args(["load", "-m", "skb", "lo", LIBXDP_ADDED_OBJECT])
                .output()
                .expect("xdp-loader load");
            assert!(
                out.status.success(),
                "xdp-loader load: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            libxdp_added = true;
        }
        Err(e) if std::env::var_os("MPTCP_TESTS_REQUIRE_FREPLACE").is_none() => {
            eprintln!("xdp-loader not run ({e}): install Debian's xdp-tools");
        }
        Err(e) => panic!("xdp-loader: {e}"),
    }

    // Traffic reaches both; the firewall drops a forged ADD_ADDR.
    let sender = LoopbackSender::new();
    let neighbour_passed = |v: &Validator| -> u64 {
        let stats: aya::maps::PerCpuArray<_, [u64; 2]> =
            aya::maps::PerCpuArray::try_from(v.ebpf.map("xdp_stats_map").expect("stats map"))
                .expect("per-CPU array");
        stats
            .get(&XDP_PASS, 0)
            .expect("XDP_PASS record")
            .iter()
            .map(|&[packets, _bytes]| packets)
            .sum()
    };
    let base = Frame::v4(&mpc_ab());
    let genuine = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    sender.send(&base.bytes());
    sender.send(&base.with_opts(&genuine).bytes());
    sender.send(&base.with_opts(&forged).bytes());
    let c = old.counters();
    assert_eq!(
        (c["add_addr_valid"], c["add_addr_bad_hmac_dropped"]),
        (1, 1),
        "{c:?}"
    );
    assert_eq!(frames_seen(&old), 3);
    assert_eq!(
        neighbour_passed(&neighbour),
        3,
        "xdp-filter ran first and passed all three"
    );

    // A restart: another instance replaces the first while frames keep coming.
    let mut new = firewall_component();
    let plain = Frame::v4(&[]).bytes();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let backlog_before = backlog_drops();
    let sent = std::thread::scope(|s| {
        let sending = s.spawn(|| {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 200 {
                sender.send(&plain);
                sent += 1;
            }
            sent
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let restarted = install_on_lo(&mut new, xdp_ingress_program(), FIREWALL_SLOT);
        assert_ne!(restarted.replaced, None);
        let mut expected = vec!["xdpfilt_alw_all", "mptcp_xdp_ingre"];
        if libxdp_added {
            expected.insert(1, "xdpfilt_alw_ip");
        }
        assert_eq!(restarted.components, expected);
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sending.join().unwrap()
    });
    let (by_old, by_new) = (frames_seen(&old) - 3, frames_seen(&new));
    let dropped = backlog_drops() - backlog_before;
    eprintln!(
        "during the restart: {sent} frames sent, {by_old} seen by the old instance, {by_new} by \
         the new one, {dropped} dropped by the kernel before XDP (backlog full)"
    );
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    assert_eq!(
        by_old + by_new + dropped,
        sent,
        "every frame met a firewall"
    );
    assert_eq!(
        neighbour_passed(&neighbour),
        3 + sent - dropped,
        "xdp-filter stayed in place"
    );

    // Both leave; the last one takes the dispatcher with it.
    let left = multiprog::uninstall("lo", LO, xdp_ingress_program(), object).unwrap();
    assert_eq!(left.components[0], "xdpfilt_alw_all");
    let mut gone = multiprog::uninstall("lo", LO, NEIGHBOUR, object).unwrap();
    if libxdp_added {
        assert_eq!(gone.components, ["xdpfilt_alw_ip"]);
        gone = multiprog::uninstall("lo", LO, "xdpfilt_alw_ip", object).unwrap();
    }
    assert_eq!(gone.dispatcher, None);
    assert_eq!(netlink::xdp_attached(LO).unwrap(), None);
    assert!(!multiprog::dispatcher_dir(LO, left.dispatcher.unwrap()).exists());
}

/// A `mptcp-loader run` in this thread's network namespace; killed on drop.
struct LoaderRun {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl LoaderRun {
    fn start(bin: &std::ffi::OsStr, pin_dir: &std::path::Path, tag: &str, extra: &[&str]) -> Self {
        let log = std::path::PathBuf::from(format!("/tmp/mptcp-multiprog-run-{tag}.log"));
        let mut child = std::process::Command::new(bin)
            .args([
                "run",
                "--iface",
                "lo",
                "--xdp-chain",
                "multiprog",
                "--xdp-mode",
                "skb",
            ])
            .args(["--mode", "enforce"])
            .args(extra)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--state-dir")
            .arg(format!("/tmp/mptcp-multiprog-state-{}", std::process::id()))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("run log"))
            .spawn()
            .expect("mptcp-loader run");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Self { child, lines, log }
    }

    /// Waits for its "attached to lo" line (the verifier is slow under emulation).
    fn wait_attached(&mut self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_mins(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("attached to lo") => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "run did not attach ({e}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for run")
    }
}

impl Drop for LoaderRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ingress reasons counted in a run's pinned counter map (egress left out: the frames the
/// test sends on `lo` leave through its egress too).
fn pinned_ingress_frames(pin_dir: &std::path::Path) -> u64 {
    pinned_counters(pin_dir)
        .into_iter()
        .filter(|(c, _)| c.is_packet_reason() && *c != mptcp_common::counters::Counter::Egress)
        .map(|(_, n)| n)
        .sum()
}

fn pinned_counters(pin_dir: &std::path::Path) -> Vec<(mptcp_common::counters::Counter, u64)> {
    let map = aya::maps::MapData::from_pin(pin_dir.join(mptcp_common::maps::MAP_COUNTERS))
        .expect("pinned counters");
    let counters: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).expect("per-CPU");
    mptcp_common::counters::Counter::ALL
        .iter()
        .map(|&c| {
            (
                c,
                counters.get(&(c as u32), 0).expect("counter").iter().sum(),
            )
        })
        .collect()
}

/// Packets xdp-filter's program on `lo` passed (its `xdp_stats_map`, found through the
/// dispatcher's pins).
fn xdp_filter_passed() -> u64 {
    let installed = multiprog::Installed::read("lo", LO)
        .unwrap()
        .expect("a dispatcher");
    let slot = installed
        .components
        .iter()
        .position(|(name, _)| name == NEIGHBOUR)
        .expect("xdp-filter in the dispatcher");
    let info = aya::programs::ProgramInfo::from_pin(
        installed
            .dir
            .join(format!("{}-prog", multiprog::slot_function(slot))),
    )
    .unwrap();
    let map = info
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| aya::maps::MapData::from_id(id).ok())
        .find(|m| {
            m.info()
                .is_ok_and(|i| i.name_as_str() == Some("xdp_stats_map"))
        })
        .expect("xdp_stats_map");
    let stats: aya::maps::PerCpuArray<_, [u64; 2]> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).unwrap();
    stats
        .get(&XDP_PASS, 0)
        .unwrap()
        .iter()
        .map(|&[packets, _]| packets)
        .sum()
}

fn xdp_loader(args: &[&str]) -> String {
    let out = std::process::Command::new("xdp-loader")
        .args(args)
        .output()
        .expect("xdp-loader");
    assert!(
        out.status.success(),
        "xdp-loader {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mptcp-loader run --xdp-chain multiprog` on `lo` of a network namespace of the test's own,
/// where `xdp-loader` already put xdp-filter's program: `xdp-loader status` lists both (10,
/// then the firewall at 20); frames reach both; a forged ADD_ADDR is dropped; the run is
/// killed (SIGKILL) and a new one started while frames keep coming: every frame is counted in
/// the pinned counters, so the interface never ran without the firewall; that run exits with
/// `--keep-attached` and `mptcp-loader detach` takes the firewall out, leaving xdp-filter; a
/// third run's exit without `--keep-attached` does the same.
#[test]
fn run_joins_xdp_filter_and_restarts_without_a_gap() {
    in_own_netns_if_chaining(run_in_a_dispatcher);
}

fn run_in_a_dispatcher() {
    let require = std::env::var_os("MPTCP_TESTS_REQUIRE_FREPLACE").is_some();
    // Without TCX (< 6.6) `run` attaches egress as a clsact filter, and the vm-test initramfs
    // has no kernel modules, so Debian's modular sch_ingress (clsact) is missing there: the
    // run would fail on egress ("Specified qdisc kind is unknown"), not on XDP.
    if aya::util::KernelVersion::current().is_ok_and(|v| v < aya::util::KernelVersion::new(6, 6, 0))
        && require
    {
        eprintln!("run needs clsact on this kernel, which the VM has no module for: not run");
        return;
    }
    let Some(bin) = std::env::var_os("MPTCP_LOADER_BIN") else {
        assert!(!require, "MPTCP_LOADER_BIN is not set");
        eprintln!("MPTCP_LOADER_BIN is not set: not run");
        return;
    };
    let pin_dir = NeighbourPins::new();
    let pins = pin_dir.0.join("fw");

    xdp_loader(&["load", "-m", "skb", "lo", NEIGHBOUR_OBJECT]);
    let mut first = LoaderRun::start(&bin, &pins, "first", &[]);
    eprintln!("{}", first.wait_attached());
    let status = xdp_loader(&["status", "lo"]);
    eprintln!("xdp-loader status lo:\n{status}");
    let order: Vec<&str> = status
        .lines()
        .filter(|l| l.trim_start().starts_with("=>"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or(""))
        .collect();
    assert!(
        order.len() == 2 && shows(order[0], NEIGHBOUR) && shows(order[1], xdp_ingress_program()),
        "{status}"
    );

    let sender = LoopbackSender::new();
    let base = Frame::v4(&mpc_ab());
    let genuine = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    let filter_before = xdp_filter_passed();
    for frame in [&base, &base.with_opts(&genuine), &base.with_opts(&forged)] {
        sender.send(&frame.bytes());
    }
    let count = |name: &str| {
        pinned_counters(&pins)
            .into_iter()
            .find(|(c, _)| c.name() == name)
            .map_or(0, |(_, n)| n)
    };
    assert_eq!(
        (count("add_addr_valid"), count("add_addr_bad_hmac_dropped")),
        (1, 1)
    );
    assert_eq!(
        xdp_filter_passed() - filter_before,
        3,
        "xdp-filter saw the frames first"
    );

    // A crash and a restart while frames keep coming.
    let frames_before = pinned_ingress_frames(&pins);
    let backlog_before = backlog_drops();
    let plain = Frame::v4(&[]).bytes();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, mut second) = std::thread::scope(|s| {
        let sending = s.spawn(|| {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sender.send(&plain);
                sent += 1;
            }
            sent
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        first.stop(libc::SIGKILL);
        let mut second = LoaderRun::start(&bin, &pins, "second", &["--keep-attached"]);
        eprintln!("{}", second.wait_attached());
        std::thread::sleep(std::time::Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (sending.join().unwrap(), second)
    });
    let seen = pinned_ingress_frames(&pins) - frames_before;
    let dropped = backlog_drops() - backlog_before;
    eprintln!(
        "during the restart: {sent} frames sent, {seen} counted by the firewall, {dropped} \
         dropped by the kernel before XDP (backlog full)"
    );
    assert_eq!(seen + dropped, sent, "every frame met the firewall");
    let status = xdp_loader(&["status", "lo"]);
    assert!(
        status.contains(NEIGHBOUR) && status.contains(&xdp_ingress_program()[..15]),
        "{status}"
    );

    // With --keep-attached the run leaves the firewall in the dispatcher; `detach` takes it
    // out and leaves xdp-filter.
    assert!(second.stop(libc::SIGTERM).success());
    let status = xdp_loader(&["status", "lo"]);
    assert!(
        status.contains(&xdp_ingress_program()[..15]),
        "kept attached: {status}"
    );
    let out = std::process::Command::new(&bin)
        .arg("detach")
        .arg("--pin-dir")
        .arg(&pins)
        .output()
        .expect("mptcp-loader detach");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let only_filter = |when: &str| {
        let status = xdp_loader(&["status", "lo"]);
        eprintln!("{when}:\n{status}");
        assert!(
            status.contains(NEIGHBOUR) && !status.contains(&xdp_ingress_program()[..15]),
            "{status}"
        );
    };
    only_filter("after detach");

    // A run's exit without --keep-attached takes it out too.
    let mut third = LoaderRun::start(&bin, &pins, "third", &[]);
    third.wait_attached();
    assert!(xdp_loader(&["status", "lo"]).contains(&xdp_ingress_program()[..15]));
    assert!(third.stop(libc::SIGTERM).success());
    only_filter("after the run");
    xdp_loader(&["unload", "lo", "--all"]);
    assert_eq!(
        mptcp_loader::kernel::netlink::xdp_attached(LO).unwrap(),
        None
    );
}

/// Whether `printed` is `name` as `xdp-loader status` may print it: libxdp shows the name from
/// the program's BTF when it reads it, else the kernel's copy, cut to 15 bytes
/// (BPF_OBJ_NAME_LEN); both were seen in the VMs (6.1 and 6.12).
fn shows(printed: &str, name: &str) -> bool {
    name.starts_with(printed) && printed.len() >= name.len().min(15)
}
