//! Restarting without a gap, against the real kernel and the real Linux MPTCP stack.
//!
//! A client namespace and a server namespace joined by a veth pair (198.18.92.0/24); `run`
//! protects the server's end in enforce mode. A real MPTCP connection (the lab's peers,
//! IPPROTO_MPTCP sockets opened in the namespaces) carries data; the lab's ADD_ADDR forger
//! (`mptcp_lab::forge_add_addr`) sniffs its keys and sequence numbers on the client side and
//! injects ADD_ADDRs with a wrong HMAC.
//! The loader is SIGKILLed mid-traffic; the programs stay attached through their pinned links,
//! the forged ADD_ADDRs are still dropped, the connection's keys stay in the pinned map; a new
//! `run` adopts all that while the XDP program on the interface never changes, and keeps
//! counting.
//!
//! Needs root, `ip`, `nsenter` and the built eBPF object; skipped otherwise. The
//! namespaces (and whatever the loader pinned for them) are deleted whatever happens.

mod netlab;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use mptcp_lab::{
    forge_add_addr::{AddAddrForger, HmacKind, Target},
    storm::{HoldingServer, Trickle},
};
use netlab::{can_run, eventually, start_run, veth, Netns};

const CLIENT: &str = "198.18.92.1";
const SERVER: &str = "198.18.92.2";
const PORT: u16 = 10000;

/// The client sends 1000 bytes every 300 ms (quiet gaps let the forger inject with the latest
/// sequence numbers).
const CLIENT_CHUNK: usize = 1000;
const CLIENT_PERIOD: Duration = Duration::from_millis(300);

fn inject_bad(forger: &AddAddrForger, id: u8, count: u32) {
    let addr = Ipv4Addr::new(198, 18, 93, id);
    let answer = forger.inject(HmacKind::Bad, id, addr, count, Duration::from_millis(20));
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("SENT ")),
        "{answer:?}"
    );
}

#[test]
fn sigkill_and_restart_keep_the_firewall_and_its_connections() {
    if !can_run(
        "sigkill_and_restart_keep_the_firewall_and_its_connections",
        &[],
    ) {
        return;
    }
    let client_ns = Netns::new("rc");
    let server_ns = Netns::new("rs");
    veth(&client_ns, "c0", CLIENT, &server_ns, "s0", SERVER);

    let mut run = start_run(&server_ns, &["--iface", "s0", "--mode", "enforce"]);
    let server_addr = SocketAddr::new(SERVER.parse().unwrap(), PORT);
    let server = server_ns
        .enter(|| HoldingServer::start(server_addr))
        .unwrap()
        .expect("the MPTCP server listens");
    let target = Target {
        client: CLIENT.parse().unwrap(),
        server: SERVER.parse().unwrap(),
        port: PORT,
    };
    let forger = client_ns
        .enter(|| AddAddrForger::start("c0", target))
        .unwrap()
        .expect("the forger sniffs c0");
    let client = client_ns
        .enter(|| Trickle::connect(server_addr, CLIENT_CHUNK, CLIENT_PERIOD))
        .unwrap()
        .expect("the MPTCP client connects");
    // Bytes the server has received so far.
    let received = || server.counts().bytes;

    // The connection is tracked, its midstates installed by the first run.
    let mut conns = serde_json::Value::Null;
    eventually("the connection in `conns`", Duration::from_secs(10), || {
        conns = server_ns.loader_json(&["conns"]);
        conns
            .as_array()
            .is_some_and(|c| c.len() == 1 && c[0]["midstates_installed"] == true)
    });
    let tokens = (conns[0]["token_a"].clone(), conns[0]["token_b"].clone());
    assert!(
        conns[0].get("key_a").is_none(),
        "keys only with --show-keys"
    );
    let status = server_ns.loader_json(&["status"]);
    let xdp_before = status["interfaces"][0]["xdp"].clone();
    let tc_before = status["interfaces"][0]["tc_egress"].clone();
    let prog_before = server_ns.xdp_prog_id("s0").expect("XDP attached");
    assert_eq!(xdp_before["prog_id"], prog_before);
    eprintln!("before the SIGKILL: XDP {xdp_before}, TCX {tc_before}, tokens {tokens:?}");

    // Watch the interface's XDP program from the SIGKILL until the new run has adopted it.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (watching, ns) = (Arc::clone(&watching), server_ns.name().to_owned());
        thread::spawn(move || {
            let mut seen = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let out = netlab::sh(&["ip", "-n", &ns, "-d", "link", "show", "dev", "s0"]);
                seen.push(netlab::xdp_prog_id_in(&out));
                thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };

    let received_before_kill = received();
    run.signal(libc::SIGKILL);
    assert_eq!(run.wait_exit(Duration::from_secs(15)), None, "killed");
    drop(run);

    // No loader process: still attached, through the same links.
    let status = server_ns.loader_json(&["status"]);
    assert_eq!(status["loader_process"], false, "{status}");
    assert_eq!(status["interfaces"][0]["xdp"], xdp_before);
    assert_eq!(status["interfaces"][0]["tc_egress"], tc_before);
    let text = server_ns.loader_ok(&["status"]);
    assert!(
        text.contains("no loader process: programs attached by pinned links"),
        "{text}"
    );
    // The connection and its keys are still in the pinned maps.
    let conns = server_ns.loader_json(&["conns", "--show-keys"]);
    assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
    assert_eq!(
        (conns[0]["token_a"].clone(), conns[0]["token_b"].clone()),
        tokens
    );
    assert_eq!(conns[0]["key_a"].as_str().unwrap().len(), 16, "{conns}");

    // Forged ADD_ADDRs while no loader runs: dropped before the server's stack sees them.
    let dropped_before = server_ns.counter("add_addr_bad_hmac_dropped");
    let add_addr_before = server_ns.netstat("MPTcpExt", "AddAddr");
    inject_bad(&forger, 7, 3);
    eventually("3 more drops", Duration::from_secs(15), || {
        server_ns.counter("add_addr_bad_hmac_dropped") == dropped_before + 3
    });
    assert_eq!(server_ns.netstat("MPTcpExt", "AddAddr"), add_addr_before);
    eprintln!(
        "while no loader ran: add_addr_bad_hmac_dropped {dropped_before} -> {}",
        dropped_before + 3
    );

    // A new run adopts everything: same links, same programs (same object), same connection.
    let mut run = start_run(&server_ns, &["--iface", "s0", "--mode", "enforce"]);
    let adopted = run.log();
    assert!(
        adopted
            .contains("attached to s0 without a gap, through the links pinned by an earlier run")
            && adopted.contains("program kept"),
        "{adopted}"
    );
    watching.store(false, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(seen.len() > 10, "{} samples", seen.len());
    assert!(
        seen.iter().all(|id| *id == Some(prog_before)),
        "the XDP program changed or went away during the restart: {seen:?}"
    );
    eprintln!(
        "XDP program {prog_before} on s0 in all {} samples from the SIGKILL to the adoption",
        seen.len()
    );
    let status = server_ns.loader_json(&["status"]);
    assert_eq!(status["loader_process"], true);
    assert_eq!(status["pid"], run.pid());
    assert_eq!(status["runs"], 2);
    assert_eq!(status["interfaces"][0]["xdp"], xdp_before);
    assert_eq!(status["interfaces"][0]["tc_egress"], tc_before);
    let conns = server_ns.loader_json(&["conns"]);
    assert_eq!(
        (conns[0]["token_a"].clone(), conns[0]["token_b"].clone()),
        tokens
    );

    // It keeps counting, and the data keeps flowing.
    inject_bad(&forger, 8, 2);
    eventually("2 more drops", Duration::from_secs(15), || {
        server_ns.counter("add_addr_bad_hmac_dropped") == dropped_before + 5
    });
    assert_eq!(server_ns.netstat("MPTcpExt", "AddAddr"), add_addr_before);
    eventually("more data at the server", Duration::from_secs(15), || {
        received() > received_before_kill + 2000
    });
    // The events queued while no loader ran waited in the pinned ring buffer.
    let mut events = Vec::new();
    eventually("5 drop events recorded", Duration::from_secs(15), || {
        let out = server_ns.loader_ok(&["events"]);
        events = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["reason"] == "add_addr_bad_hmac_dropped")
            .collect();
        events.len() == 5
    });
    for (event, id) in events.iter().zip([7, 7, 7, 8, 8]) {
        assert_eq!(event["announced_id"], id, "{event}");
        assert_eq!(event["announced_addr"], format!("198.18.93.{id}"));
        assert_eq!(
            (event["src"].as_str(), event["dst"].as_str()),
            (Some(CLIENT), Some(SERVER))
        );
        assert_eq!(event["dropped"], true);
        assert_eq!(event["iface"], "s0");
    }

    // SIGINT: detaches and removes the pins.
    run.stop(libc::SIGINT);
    assert!(run.log().contains("detached from s0"), "{}", run.log());
    assert_eq!(server_ns.xdp_prog_id("s0"), None);
    assert!(!server_ns.pin_dir().exists());
    drop((client, forger, server));
}

#[test]
fn keep_attached_detach_and_the_refusals() {
    if !can_run("keep_attached_detach_and_the_refusals", &[]) {
        return;
    }
    let ns = Netns::new("ka");
    let peer = Netns::new("kp");
    veth(&ns, "v0", "198.18.94.1", &peer, "p0", "198.18.94.2");
    veth(&ns, "v1", "198.18.95.1", &peer, "p1", "198.18.95.2");

    let mut run = start_run(&ns, &["--iface", "v0", "--keep-attached"]);
    let prog = ns.xdp_prog_id("v0").expect("attached");
    // A second run while this one lives: refused on the pin directory, or on the interface
    // when it uses another pin directory.
    let line = ns.loader_error(&["run", "--iface", "v0"]);
    assert!(
        line.contains(&format!(
            "another mptcp-loader run is active in this network namespace (pid {}",
            run.pid()
        )),
        "{line}"
    );
    let other = format!("/sys/fs/bpf/mptcp-fw/test-other-{}", std::process::id());
    let line = ns.loader_error(&["run", "--iface", "v0", "--pin-dir", &other]);
    assert!(
        line.starts_with(&format!(
            "error: v0 is already protected by the mptcp-loader firewall pinned under {} (mptcp-loader run pid {})",
            ns.pin_dir().display(),
            run.pid()
        )),
        "{line}"
    );
    let line = ns.loader_error(&["detach"]);
    assert!(
        line.contains(&format!("mptcp-loader run pid {} owns", run.pid())),
        "{line}"
    );

    run.stop(libc::SIGTERM);
    assert!(run.log().contains("left v0 attached"), "{}", run.log());
    assert_eq!(ns.xdp_prog_id("v0"), Some(prog), "still attached");
    let status = ns.loader_json(&["status"]);
    assert_eq!(status["loader_process"], false);
    assert!(status["uptime_s"].is_u64());

    // Adopted pinned links hold v0: a run elsewhere, or one that forgets v0, is refused.
    let line = ns.loader_error(&["run", "--iface", "v0", "--pin-dir", &other]);
    assert!(
        line.contains("(no loader process: programs attached by pinned links)"),
        "{line}"
    );
    let line = ns.loader_error(&["run", "--iface", "v1"]);
    assert!(
        line.contains("is attached to v0, which this run does not name: add `--iface v0`"),
        "{line}"
    );
    let mode = status["interfaces"][0]["xdp_mode"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_mode = if mode == "native" { "skb" } else { "native" };
    let line = ns.loader_error(&["run", "--iface", "v0", "--xdp-mode", other_mode]);
    assert!(
        line.contains("cannot be applied without detaching"),
        "{line}"
    );
    assert_eq!(
        ns.xdp_prog_id("v0"),
        Some(prog),
        "refused runs change nothing"
    );
    assert!(!PathBuf::from(&other).exists());
    assert!(
        !PathBuf::from(format!("/run/mptcp-fw/test-other-{}", std::process::id())).exists(),
        "a refused run leaves no state directory either"
    );

    // Pinned maps of other sizes, or of another layout, are refused rather than reused.
    let line = ns.loader_error(&["run", "--iface", "v0", "--max-conns", "1024"]);
    assert!(
        line.contains("(MPTCP_CONNS holds 65536 entries, this run asks for 1024)"),
        "{line}"
    );
    let layout = ns.pin_dir().join("layout");
    std::fs::remove_file(&layout).unwrap();
    let mut record = aya::maps::Array::<aya::maps::MapData, u64>::create(1, 0).unwrap();
    record.set(0, 0x1234, 0).unwrap();
    record.pin(&layout).unwrap();
    let line = ns.loader_error(&["run", "--iface", "v0"]);
    assert!(
        line.starts_with(&format!(
            "error: pinned maps under {} have another layout (built by another version: layout \
             0x0000000000001234, this loader's is 0x",
            ns.pin_dir().display()
        )) && line.ends_with("run `mptcp-loader detach` first"),
        "{line}"
    );
    assert_eq!(
        ns.xdp_prog_id("v0"),
        Some(prog),
        "refused runs change nothing"
    );

    // detach: one interface, or all.
    let line = ns.loader_error(&["detach", "--iface", "v1"]);
    assert!(
        line.contains("is not attached to v1 (it is attached to: v0)"),
        "{line}"
    );
    let line = ns.loader_error(&["detach", "--iface", "mptcp-nope0"]);
    assert!(line.contains("`mptcp-nope0` does not exist"), "{line}");
    let out = ns.loader_ok(&["detach", "--iface", "v0"]);
    assert!(out.contains("detached from v0"), "{out}");
    assert_eq!(ns.xdp_prog_id("v0"), None);
    assert!(
        !ns.pin_dir().exists(),
        "the last interface takes the pins with it"
    );
    let line = ns.loader_error(&["detach"]);
    assert!(line.starts_with("error: nothing to detach"), "{line}");
    for command in ["status", "conns"] {
        let line = ns.loader_error(&[command]);
        assert!(
            line.contains("no mptcp-loader run is active"),
            "{command}: {line}"
        );
    }
}

#[test]
fn a_firewall_pinned_elsewhere_is_still_recognised() {
    if !can_run("a_firewall_pinned_elsewhere_is_still_recognised", &[]) {
        return;
    }
    let ns = Netns::new("pe");
    let peer = Netns::new("pp");
    veth(&ns, "e0", "198.18.98.1", &peer, "e1", "198.18.98.2");
    let parent = PathBuf::from(format!("/sys/fs/bpf/mfw-elsewhere-{}", std::process::id()));
    let dir = parent.join("fw").display().to_string();
    let state = std::env::temp_dir().join(format!("mfw-elsewhere-{}", std::process::id()));
    let state_arg = state.display().to_string();
    let mut run = start_run(
        &ns,
        &[
            "--iface",
            "e0",
            "--pin-dir",
            &dir,
            "--state-dir",
            &state_arg,
        ],
    );
    let prog = ns.xdp_prog_id("e0").expect("attached");
    // The default pin directory's run does not find those pins, but knows the program.
    let line = ns.loader_error(&["run", "--iface", "e0"]);
    assert_eq!(
        line,
        format!(
            "error: e0 is already protected by another mptcp-loader firewall (XDP program \
             {prog}), pinned outside /sys/fs/bpf/mptcp-fw: stop its run, or remove it with \
             `mptcp-loader detach --iface e0 --pin-dir DIR` giving its pin directory"
        )
    );
    run.stop(libc::SIGINT);
    let _ = std::fs::remove_dir_all(&parent);
    let _ = std::fs::remove_dir_all(&state);
    assert_eq!(ns.xdp_prog_id("e0"), None);
}
