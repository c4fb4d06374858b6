//! `mptcp-record`: records the Linux MPTCP captures of `tests/fixtures/` again, from the real
//! kernel stack in a private network namespace, and writes their expected values.
//!
//! ```text
//! mptcp-record --out DIR            record both captures into DIR, with a .expected beside each
//! mptcp-record --describe-only DIR  only (re)write the .expected of every *.pcap in DIR
//! ```
//!
//! Both captures are taken as the checked-in ones were: tcpdump on `lo` inside a namespace of
//! their own (so only the lab's traffic is in them), the in-kernel path manager, MPTCP v1, the
//! `mptcp-peer` client and server of this crate. The keys are random, so a new recording has
//! other keys, tokens and HMACs than the checked-in one; the tests read the keys and counts from
//! the `.expected` file beside each capture, which this program writes from tshark's dissection
//! (Wireshark's MPTCP dissector, not this project's parser).
//!
//! - `linux-<major.minor>-mptcp-mixed.pcap`: endpoints `127.0.0.2 signal`, `127.0.0.3 port
//!   10100 signal` and `2001:db8::2 signal`, announced in both directions (client and server
//!   share the namespace and so its endpoints); one IPv4 connection to 127.0.0.1:10000 and one
//!   IPv6 connection to [2001:db8::1]:10001. ADD_ADDRs of every length with HMAC and their
//!   echoes, IPv6 addresses announced on IPv4 connections and back, MP_JOINs started by either
//!   side (to 127.0.0.3:10100, where the kernel listens, they complete; elsewhere they are
//!   answered with RST).
//! - `linux-<major.minor>-mptcp-v6-backup-csum.pcap`: an IPv6 connection without endpoints; an
//!   IPv4 connection with the endpoint `127.0.0.4 subflow backup` (a backup MP_JOIN), whose
//!   endpoint is then changed to `nobackup` (MP_PRIO on the joined subflow); an IPv4 connection
//!   with DSS checksums (`net.mptcp.checksum_enabled=1`).
//!
//! Needs root, iproute2, tcpdump and tshark (`cargo xtask setup`); run it with
//! `cargo xtask record-fixtures`, which builds it and `mptcp-peer` first.

use std::{
    env,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use mptcp_common::testing::{pcap_frames, Expected};
use mptcp_tests::{
    capture::Capture,
    peers::{PeerClient, PeerServer},
    teardown,
    tools::{succeeds, Tools},
    Netns,
};

/// Bytes each client sends.
const BYTES: u64 = 20_000;
/// How long each client holds its connection open: long enough for every announcement, its
/// echo, the joins it triggers and one ADD_ADDR retransmission.
const HOLD: Duration = Duration::from_millis(1500);
/// Time for the last FINs and RSTs to be written after both peers have exited.
const SETTLE: Duration = Duration::from_millis(500);
const FINISH: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: mptcp-record --out DIR | --describe-only DIR";

fn main() -> ExitCode {
    teardown::exit_code("mptcp-record", run())
}

fn run() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--out", dir] => record(Path::new(dir)),
        ["--describe-only", dir] => {
            let mut pcaps: Vec<PathBuf> = fs::read_dir(dir)
                .with_context(|| format!("reading {dir}"))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
                .collect();
            pcaps.sort();
            ensure!(!pcaps.is_empty(), "no .pcap files in {dir}");
            for pcap in &pcaps {
                write_expected(pcap)?;
            }
            Ok(())
        }
        ["-h" | "--help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn record(out: &Path) -> Result<()> {
    let tools = Tools::next_to_current_exe();
    let missing = tools.missing();
    ensure!(missing.is_empty(), "cannot record: {}", missing.join("; "));
    ensure!(
        succeeds("tshark", &["--version"]),
        "cannot record: `tshark` is not installed (apt-get install tshark)"
    );
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    teardown::install_signal_teardown().context("installing the SIGINT/SIGTERM handler")?;
    teardown::reap_stale_namespaces();
    let kernel = kernel_version()?;

    let mixed = out.join(format!("linux-{kernel}-mptcp-mixed.pcap"));
    record_mixed(&tools, &mixed)?;
    let expected = write_expected(&mixed)?;
    ensure!(
        expected.add_addr_hmac > 0 && expected.add_addr_echo > 0 && expected.mp_join_syn > 0,
        "{}: expected ADD_ADDRs, echoes and MP_JOINs, got {expected:?}",
        mixed.display()
    );
    ensure!(
        expected.connections.len() == 2,
        "{}: expected 2 connections, got {expected:?}",
        mixed.display()
    );

    let other = out.join(format!("linux-{kernel}-mptcp-v6-backup-csum.pcap"));
    record_backup_csum(&tools, &other)?;
    let expected = write_expected(&other)?;
    ensure!(
        expected.connections.len() == 3 && expected.mp_join_syn > 0,
        "{}: expected 3 connections and a join, got {expected:?}",
        other.display()
    );
    for (what, filter) in [
        (
            "a backup MP_JOIN SYN",
            "tcp.options.mptcp.subtype == 1 && tcp.flags.syn == 1 && tcp.flags.ack == 0 && \
             tcp.options.mptcp.backup.flag == 1",
        ),
        ("an MP_PRIO", "tcp.options.mptcp.subtype == 5"),
        (
            "an MP_CAPABLE with checksums",
            "tcp.options.mptcp.subtype == 0 && tcp.options.mptcp.checksumreq.flags == 1",
        ),
    ] {
        ensure!(
            tshark_count(&other, filter)? > 0,
            "{}: no {what} in the capture",
            other.display()
        );
    }
    println!(
        "recorded {} and {} (with their .expected) on Linux {kernel}",
        mixed.display(),
        other.display()
    );
    Ok(())
}

/// The namespace both recordings use: loopback with the extra addresses, MPTCP on, the
/// in-kernel path manager, room for every announcement and join.
fn namespace() -> Result<Netns> {
    let ns = Netns::create("record")?;
    ns.sysctl("net.mptcp.enabled", "1")?;
    ns.sysctl("net.mptcp.checksum_enabled", "0")?;
    // The in-kernel path manager (0) is the default; say so (absent before Linux 6.x: fine).
    let _ = ns.sysctl("net.mptcp.pm_type", "0");
    for addr in ["127.0.0.2/8", "127.0.0.3/8", "127.0.0.4/8"] {
        ns.ip(&["addr", "add", addr, "dev", "lo"])?;
    }
    for addr in ["2001:db8::1/128", "2001:db8::2/128"] {
        ns.ip(&["addr", "add", addr, "dev", "lo", "nodad"])?;
    }
    ns.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "8",
        "add_addr_accepted",
        "8",
    ])?;
    Ok(ns)
}

fn record_mixed(tools: &Tools, path: &Path) -> Result<()> {
    let ns = namespace()?;
    for endpoint in [
        &["127.0.0.2", "id", "1", "signal"][..],
        &["127.0.0.3", "id", "2", "port", "10100", "signal"],
        &["2001:db8::2", "id", "3", "signal"],
    ] {
        ns.ip(&[&["mptcp", "endpoint", "add"][..], endpoint].concat())?;
    }
    let capture = Capture::start_whole_frames(&ns, "lo", path, "tcp")?;
    connection(&ns, tools, "127.0.0.1:10000", None)?;
    connection(&ns, tools, "[2001:db8::1]:10001", None)?;
    finish_capture(capture)
}

fn record_backup_csum(tools: &Tools, path: &Path) -> Result<()> {
    let ns = namespace()?;
    let capture = Capture::start_whole_frames(&ns, "lo", path, "tcp")?;
    connection(&ns, tools, "[2001:db8::1]:10001", None)?;
    ns.ip(&[
        "mptcp",
        "endpoint",
        "add",
        "127.0.0.4",
        "id",
        "4",
        "subflow",
        "backup",
    ])?;
    connection(
        &ns,
        tools,
        "127.0.0.1:10002",
        Some(&["mptcp", "endpoint", "change", "id", "4", "nobackup"]),
    )?;
    ns.ip(&["mptcp", "endpoint", "flush"])?;
    ns.sysctl("net.mptcp.checksum_enabled", "1")?;
    connection(&ns, tools, "127.0.0.1:10003", None)?;
    finish_capture(capture)
}

/// One MPTCP connection from `mptcp-peer client` to `mptcp-peer server` at `server`, both in
/// `ns`: the client sends, holds the connection open (half-way through, `ip` runs
/// `midway`, if given), and closes; the server reads to the end and closes.
fn connection(ns: &Netns, tools: &Tools, server: &str, midway: Option<&[&str]>) -> Result<()> {
    let addr: SocketAddr = server
        .parse()
        .with_context(|| format!("address {server}"))?;
    let server = PeerServer::start(ns, &tools.peer_bin, addr)?;
    let mut client = PeerClient::start(ns, &tools.peer_bin, addr, BYTES, HOLD)?;
    let sent = client.wait_sent(FINISH)?;
    if let Some(args) = midway {
        thread::sleep(HOLD / 2);
        ns.ip(args)?;
    }
    let report = client.finish(sent, FINISH)?;
    let received = server.finish(FINISH)?;
    ensure!(
        received == sent,
        "{addr}: the server received {received} of {sent} bytes"
    );
    println!(
        "{addr}: {sent} bytes, client {}",
        report.mptcp_info.trim_start_matches("MPTCP ")
    );
    thread::sleep(SETTLE);
    Ok(())
}

fn finish_capture(capture: Capture) -> Result<()> {
    let report = capture.stop()?;
    ensure!(
        report.dropped_by_kernel.unwrap_or(0) == 0,
        "{}: tcpdump lost packets ({:?} dropped by the kernel)",
        report.path.display(),
        report.dropped_by_kernel
    );
    println!(
        "{}: {} frames, {} ADD_ADDR options (with echoes)",
        report.path.display(),
        report.frames,
        report.add_addrs.len()
    );
    Ok(())
}

/// Writes `<stem>.expected` beside `pcap` from tshark's dissection and returns what it wrote,
/// read back through the parser the tests use.
fn write_expected(pcap: &Path) -> Result<Expected> {
    let text = describe(pcap)?;
    let expected =
        Expected::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", pcap.display()))?;
    let path = pcap.with_extension("expected");
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(expected)
}

/// The `.expected` text of a capture: counts and keys read by tshark.
fn describe(pcap: &Path) -> Result<String> {
    let name = pcap
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let frames = pcap_frames(&pcap.display().to_string()).len();
    let mut text = format!(
        "# Expected values of {name} ({frames} frames), read by tshark (Wireshark's MPTCP\n\
         # dissector, not this project's parser). Written by `cargo xtask record-fixtures`.\n"
    );
    for (name, filter) in [
        (
            "add_addr_hmac",
            "tcp.options.mptcp.subtype == 3 && tcp.options.mptcp.echo == 0",
        ),
        (
            "add_addr_echo",
            "tcp.options.mptcp.subtype == 3 && tcp.options.mptcp.echo == 1",
        ),
        (
            "mp_join_syn",
            "tcp.options.mptcp.subtype == 1 && tcp.flags.syn == 1 && tcp.flags.ack == 0",
        ),
    ] {
        let _ = writeln!(text, "{name} {}", tshark_count(pcap, filter)?);
    }
    // Both keys travel in the MP_CAPABLE third ACK (and again in the first data segment).
    let keys = tshark(
        pcap,
        "tcp.options.mptcp.subtype == 0 && tcp.options.mptcp.recvkey",
        &[
            "-T",
            "fields",
            "-e",
            "tcp.options.mptcp.sendkey",
            "-e",
            "tcp.options.mptcp.recvkey",
        ],
    )?;
    let mut seen = Vec::new();
    for line in keys.lines() {
        let hex = |field: &str| -> Result<String> {
            let field = field.trim();
            let value = match field.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => field.parse(),
            }
            .with_context(|| format!("tshark key {field:?}"))?;
            Ok(format!("{value:016x}"))
        };
        let (a, b) = line
            .split_once('\t')
            .with_context(|| format!("tshark keys line {line:?}"))?;
        let pair = (hex(a)?, hex(b)?);
        if !seen.contains(&pair) {
            let _ = writeln!(text, "connection {} {}", pair.0, pair.1);
            seen.push(pair);
        }
    }
    Ok(text)
}

/// Frames of `pcap` that match the display `filter`.
fn tshark_count(pcap: &Path, filter: &str) -> Result<usize> {
    let out = tshark(pcap, filter, &["-T", "fields", "-e", "frame.number"])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

fn tshark(pcap: &Path, filter: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("tshark")
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", filter])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running tshark (apt-get install tshark)")?;
    ensure!(
        out.status.success(),
        "tshark -r {} -Y {filter:?}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `6.18` of `6.18.44-...` (the running kernel, as in the capture names).
fn kernel_version() -> Result<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok(format!("{major}.{minor}")),
        _ => bail!("unexpected kernel release {release:?}"),
    }
}
