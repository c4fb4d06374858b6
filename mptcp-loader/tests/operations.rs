//! Operating a real `mptcp-loader run`: it starts with a policy file and `--metrics`, is scraped
//! over TCP, reloads its policy on SIGHUP (and keeps it when the new file is invalid), counts
//! the evictions of a full connection map, and refuses a metrics address that is in use before
//! attaching anything.
//!
//! Runs in two network namespaces created here (198.18.91.0/24 on a veth pair between them),
//! deleted at the end whatever happens. Needs root, `ip`, `nsenter`, `ping`, bpffs on
//! /sys/fs/bpf and the built eBPF object; skipped otherwise.

mod netlab;

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use mptcp_lab::wire::PacketSocket;
use netlab::{veth, Netns};

const METRICS_PORT: u16 = 9464;

/// Root, the built object and ip/nsenter/ping; otherwise skips, or fails in CI and with
/// `MPTCP_TESTS_REQUIRE_BPF=1` ([`mptcp_common::testing::gate`]).
fn can_run(test: &str) -> bool {
    netlab::can_run(test, &["ping"])
}

/// Two namespaces of the lab joined by a veth pair; removed (with the pair) on drop.
struct Lab {
    a: Netns,
    b: Netns,
    dir: PathBuf,
}

const VETH_A: &str = "mfwops-a";
const VETH_B: &str = "mfwops-b";
const ADDR_A: &str = "198.18.91.1";

impl Lab {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let lab = Self {
            a: Netns::new(&format!("ops-{tag}-a")),
            b: Netns::new(&format!("ops-{tag}-b")),
            dir: std::env::temp_dir().join(format!("mptcp-fw-ops-{tag}-{pid}")),
        };
        fs::create_dir_all(&lab.dir).unwrap();
        veth(&lab.a, VETH_A, ADDR_A, &lab.b, VETH_B, "198.18.91.2");
        lab
    }

    /// `mptcp-loader ARGS` in namespace A (network namespace only: bpffs stays visible).
    fn loader(&self, args: &[&str]) -> Command {
        let mut cmd = self.a.loader();
        cmd.args(args);
        cmd
    }

    /// Runs `f` on a thread inside namespace A (sockets it opens live there).
    fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.a.enter(f).unwrap()
    }

    /// Sends raw Ethernet frames out of namespace B's end of the veth pair: they reach A's
    /// XDP program. Paced, so the veth's XDP ring never overflows.
    fn send_from_b(&self, frames: &[Vec<u8>]) {
        self.b
            .enter(|| {
                let tx = PacketSocket::sender(VETH_B)?;
                for frame in frames {
                    tx.send(frame)?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::io::Result::Ok(())
            })
            .unwrap()
            .expect("sending frames out of B");
    }

    fn scrape(&self, port: u16) -> std::io::Result<String> {
        self.in_a(|| {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
    }

    fn xdp_attached(&self) -> bool {
        self.a.ip(&["link", "show", VETH_A]).contains("xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A `run` in the background; killed on drop if it is still there.
struct Run {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Run {
    fn logs(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Polls `probe` until it returns `Some` (30 s at most); fails early if the run exits.
    fn wait_for<T>(&mut self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the run exited ({status}) while waiting for {what}\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of one sample (`name{labels}` exactly as exposed).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

const POLICY: &str = r#"mode = "enforce"
unknown_connections = "pass"

[interfaces.mfwops-a]
mode = "monitor"

[add_addr]
prefixes = ["198.18.0.0/15", "2001:db8::/32"]
ports = ["none", 443]

[join_syn_limit]
per_second = 10
burst = 20
"#;

#[test]
fn a_real_run_is_scraped_and_reloads_its_policy_on_sighup() {
    if !can_run("a_real_run_is_scraped_and_reloads_its_policy_on_sighup") {
        return;
    }
    let lab = Lab::new("run");
    let config = lab.dir.join("mptcp-fw.toml");
    write(&config, POLICY);
    let (stdout, stderr) = (lab.dir.join("stdout"), lab.dir.join("stderr"));
    let port = METRICS_PORT.to_string();
    let child = lab
        .loader(&[
            "run",
            "--iface",
            VETH_A,
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--max-conns",
            "1024",
        ])
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut run = Run {
        child,
        stdout,
        stderr,
    };

    let first = run.wait_for("the first scrape", || lab.scrape(METRICS_PORT).ok());
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(lab.xdp_attached());
    let banner = fs::read_to_string(&run.stdout).unwrap();
    assert!(
        banner.contains(&format!(
            "policy (from {}; reload with SIGHUP): mode enforce; interface modes mfwops-a=monitor",
            config.display()
        )),
        "{banner}"
    );
    assert!(banner.contains(&format!(
        "serving Prometheus metrics on http://127.0.0.1:{port}/metrics"
    )));

    // Traffic through the veth: ICMP is counted as not_tcp by the XDP program.
    netlab::output_ok(
        lab.b
            .exec("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", ADDR_A]),
    );
    let text = run.wait_for("not_tcp >= 3", || {
        let text = lab.scrape(METRICS_PORT).ok()?;
        (sample(&text, "mptcp_fw_packets_total{reason=\"not_tcp\"}")? >= 3).then_some(text)
    });
    for line in [
        "# HELP mptcp_fw_packets_total ",
        "# TYPE mptcp_fw_packets_total counter",
        "# TYPE mptcp_fw_map_entries gauge",
        "mptcp_fw_map_max_entries{map=\"MPTCP_CONNS\"} 1024",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V4\"} 1",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V6\"} 1",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOWPORT\"} 2",
        "mptcp_fw_map_entries{map=\"MPTCP_IFMODES\"} 1",
        "mptcp_fw_policy_enforce 1",
        "mptcp_fw_policy_enforce{iface=\"mfwops-a\"} 0",
        "mptcp_fw_policy_join_syn_rate 10",
        "mptcp_fw_loader_events_total{counter=\"loader_policy_reloads\"} 0",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    // A valid new policy: monitor everywhere, IPv4 only, no port, no join limit.
    write(
        &config,
        "mode = \"monitor\"\n[add_addr]\nprefixes = [\"198.18.0.0/15\"]\nports = [\"none\"]\n",
    );
    run.signal(libc::SIGHUP);
    let text = run.wait_for("the reload", || {
        let text = lab.scrape(METRICS_PORT).ok()?;
        (sample(
            &text,
            "mptcp_fw_loader_events_total{counter=\"loader_policy_reloads\"}",
        )? == 1)
            .then_some(text)
    });
    for line in [
        "mptcp_fw_policy_enforce 0",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V6\"} 0",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOWPORT\"} 1",
        "mptcp_fw_map_entries{map=\"MPTCP_IFMODES\"} 0",
        "mptcp_fw_policy_join_syn_rate 0",
    ] {
        assert!(
            text.contains(line),
            "{line:?} missing after the reload:\n{text}"
        );
    }
    assert!(lab.xdp_attached(), "a reload does not detach");

    // An invalid one (bad CIDR on line 3): rejected with its line, counted, policy kept.
    write(
        &config,
        "mode = \"enforce\"\n[add_addr]\nprefixes = [\"198.18.0.0/33\"]\n",
    );
    run.signal(libc::SIGHUP);
    let text = run.wait_for("the rejected reload", || {
        let text = lab.scrape(METRICS_PORT).ok()?;
        (sample(
            &text,
            "mptcp_fw_loader_events_total{counter=\"loader_policy_reload_errors\"}",
        )? == 1)
            .then_some(text)
    });
    assert!(text.contains("mptcp_fw_policy_enforce 0"), "{text}");
    assert!(
        text.contains("mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V4\"} 1"),
        "{text}"
    );
    let log = fs::read_to_string(&run.stderr).unwrap();
    assert!(
        log.contains(&format!(
            "policy reload rejected, the previous policy stays in force: policy file {}: line 3, column 13: add_addr.prefixes: `198.18.0.0/33`: the prefix length 33 is more than 32",
            config.display()
        )),
        "{log}"
    );
    assert!(log.contains("reloaded the policy from"), "{log}");
    assert!(log.contains("mode enforce -> monitor"), "{log}");

    // `stats` sees the same loader counters.
    let stats = lab.loader(&["stats", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(json["loader_policy_reloads"], 1);
    assert_eq!(json["loader_policy_reload_errors"], 1);

    // SIGTERM: detached, clean exit.
    run.signal(libc::SIGTERM);
    let status = wait_exit(&mut run.child);
    assert!(status.success(), "{}", run.logs());
    assert!(fs::read_to_string(&run.stdout)
        .unwrap()
        .contains("removed the pins under"));
    assert!(!lab.xdp_attached());
}

/// Starts `run --iface VETH_A ARGS` in the lab's namespace A, logging to `NAME.stdout/stderr`.
fn start(lab: &Lab, name: &str, args: &[&str]) -> Run {
    let (stdout, stderr) = (
        lab.dir.join(format!("{name}.stdout")),
        lab.dir.join(format!("{name}.stderr")),
    );
    let mut all = vec!["run", "--iface", VETH_A];
    all.extend_from_slice(args);
    let child = lab
        .loader(&all)
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Run {
        child,
        stdout,
        stderr,
    }
}

/// An upgrade: the first run exits with `--keep-attached`, the next one adopts its pinned maps
/// and links, and brings the policy maps to its own policy (removing what it no longer names).
#[test]
fn a_restart_that_adopts_the_maps_applies_the_new_policy() {
    if !can_run("a_restart_that_adopts_the_maps_applies_the_new_policy") {
        return;
    }
    let lab = Lab::new("adopt");
    let config = lab.dir.join("mptcp-fw.toml");
    write(&config, POLICY);
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let config_arg = config.to_str().unwrap();
    let mut first = start(
        &lab,
        "first",
        &[
            "--config",
            config_arg,
            "--metrics",
            &metrics,
            "--keep-attached",
        ],
    );
    let text = first.wait_for("the first run's metrics", || lab.scrape(METRICS_PORT).ok());
    assert!(
        text.contains("mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V6\"} 1"),
        "{text}"
    );
    first.signal(libc::SIGTERM);
    assert!(wait_exit(&mut first.child).success(), "{}", first.logs());
    assert!(
        lab.xdp_attached(),
        "--keep-attached leaves XDP attached\n{}",
        first.logs()
    );

    write(
        &config,
        "mode = \"monitor\"\n[add_addr]\nprefixes = [\"198.18.0.0/15\"]\n",
    );
    let mut second = start(
        &lab,
        "second",
        &["--config", config_arg, "--metrics", &metrics],
    );
    let text = second.wait_for("the second run's metrics", || lab.scrape(METRICS_PORT).ok());
    for line in [
        "mptcp_fw_policy_enforce 0",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V4\"} 1",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V6\"} 0",
        "mptcp_fw_map_entries{map=\"MPTCP_ALLOWPORT\"} 0",
        "mptcp_fw_map_entries{map=\"MPTCP_IFMODES\"} 0",
        "mptcp_fw_policy_add_addr_ports_restricted 0",
        "mptcp_fw_policy_join_syn_rate 0",
    ] {
        assert!(
            text.contains(line),
            "{line:?} missing after the restart:\n{text}"
        );
    }
    assert!(
        fs::read_to_string(&second.stdout)
            .unwrap()
            .contains("without a gap"),
        "{}",
        second.logs()
    );
    second.signal(libc::SIGTERM);
    assert!(wait_exit(&mut second.child).success(), "{}", second.logs());
    assert!(!lab.xdp_attached());
}

/// A storm of new connections into a small connection map: the run counts the evictions
/// (`loader_conns_evicted`, at each sweep) exactly as the conservation of entries says, in
/// `stats --json`, in the metrics and in its log.
#[test]
fn evictions_of_a_full_connection_map_are_counted() {
    const CONNS: usize = 300;
    const MAX_CONNS: u64 = 64;
    if !can_run("evictions_of_a_full_connection_map_are_counted") {
        return;
    }
    let lab = Lab::new("evict");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    // Sweeps every second; connections are forgotten after 4 s idle.
    let mut run = start(
        &lab,
        "evict",
        &[
            "--max-conns",
            &MAX_CONNS.to_string(),
            "--idle-timeout",
            "4",
            "--metrics",
            &metrics,
        ],
    );
    run.wait_for("the metrics", || lab.scrape(METRICS_PORT).ok());
    // Third ACKs of MP_CAPABLE handshakes, each with its own keys and 4-tuple, to a MAC and an
    // address that are not A's (so A's stack drops them without a reply; its XDP sees them).
    let frames: Vec<Vec<u8>> = (0..CONNS)
        .map(|i| {
            let n = u8::try_from(i % 256).unwrap();
            let hi = u8::try_from(i / 256).unwrap();
            let key_a = [0xa1, hi, n, 1, 2, 3, 4, 5];
            let key_b = [0xb2, hi, n, 5, 4, 3, 2, 1];
            let mut frame = mptcp_common::testing::Frame::v4(
                &[&[30u8, 20, 0x01, 0x01][..], &key_a, &key_b].concat(),
            );
            frame.ports = (20_000 + u16::try_from(i).unwrap(), 443);
            frame.bytes()
        })
        .collect();
    lab.send_from_b(&frames);

    let stats = |lab: &Lab| -> Option<serde_json::Value> {
        let out = lab.loader(&["stats", "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let json = run.wait_for("every connection inserted", || {
        stats(&lab).filter(|j| j["aux_conn_inserted"] == CONNS)
    });
    assert_eq!(json["keys_learned"], CONNS, "{json}");
    // Once a sweep has counted the map after the storm, the counter is exact:
    // inserted - closed - expired - entries.
    let json = run.wait_for("the evictions counted", || {
        let j = stats(&lab)?;
        let n = |key: &str| j[key].as_u64().unwrap();
        let entries = j["maps"]["MPTCP_CONNS"]["entries"].as_u64().unwrap();
        let derived =
            n("aux_conn_inserted") - n("aux_conn_closed") - n("loader_conns_expired") - entries;
        (n("loader_conns_evicted") == derived && derived > 0).then_some(j)
    });
    eprintln!("{json}");
    let evicted = json["loader_conns_evicted"].as_u64().unwrap();
    // At most MAX_CONNS were ever held at once: all the others went by eviction or expiry.
    let expired = json["loader_conns_expired"].as_u64().unwrap();
    assert!(
        evicted + expired >= CONNS as u64 - MAX_CONNS,
        "evicted {evicted}, expired {expired}: {json}"
    );
    let text = lab.scrape(METRICS_PORT).unwrap();
    let exposed = sample(
        &text,
        "mptcp_fw_loader_events_total{counter=\"loader_conns_evicted\"}",
    );
    assert!(exposed >= Some(evicted), "{exposed:?} < {evicted}:\n{text}");
    assert!(
        sample(
            &text,
            "mptcp_fw_aux_events_total{counter=\"aux_conn_inserted\"}"
        ) == Some(CONNS as u64),
        "{text}"
    );
    let log = fs::read_to_string(&run.stderr).unwrap();
    assert!(
        log.contains("the connection map is full: ") && log.contains("--max-conns 64 is too small"),
        "{log}"
    );
    run.signal(libc::SIGTERM);
    assert!(wait_exit(&mut run.child).success(), "{}", run.logs());
    assert!(fs::read_to_string(&run.stdout)
        .unwrap()
        .contains(&format!("loader_conns_evicted={evicted}")));
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not exit within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_metrics_address_in_use_stops_the_run_before_it_attaches() {
    if !can_run("a_metrics_address_in_use_stops_the_run_before_it_attaches") {
        return;
    }
    let lab = Lab::new("busy");
    let taken = lab.in_a(|| std::net::TcpListener::bind("127.0.0.1:9465").unwrap());
    let out = lab
        .loader(&["run", "--iface", VETH_A, "--metrics", "127.0.0.1:9465"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: could not serve metrics on 127.0.0.1:9465 (--metrics): Address already in use \
         (os error 98): pick a free address and port (`ss -ltnp` shows who listens)"
    );
    assert!(!lab.xdp_attached());
    drop(taken);
}
