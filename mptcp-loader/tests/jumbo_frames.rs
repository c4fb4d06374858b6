//! Multi-buffer XDP: at MTU 9000 a veth hands XDP frames larger than about 3500 bytes over in
//! several buffers, and accepts a native XDP program only if it is frags-aware
//! (`BPF_F_XDP_HAS_FRAGS`; without it `bpf_link_create` fails with ERANGE). A client namespace
//! and a server namespace joined by a veth pair at MTU 9000 (198.18.101.0/24); `run --xdp-mode
//! native --mode enforce` protects the server's end. Genuine traffic in 9000-byte frames passes:
//! pings of 8000 bytes, and a real MPTCP transfer (the lab's IPPROTO_MPTCP sockets, opened in
//! the namespaces) whose data segments fill the MTU. Forged traffic is dropped: blind MP_JOIN SYNs, one of them carrying
//! 8000 bytes of payload (a multi-buffer frame, parsed in its first buffer); its drop event
//! gives the whole frame's length and a snapshot tshark decodes (`bpf_xdp_load_bytes` across
//! buffers), and the server's stack never sees either.
//!
//! Needs root, `ip`, `nsenter`, `ping`, `tshark` and the built eBPF object; skipped
//! otherwise. The namespaces are deleted whatever happens.

mod netlab;

use std::{net::SocketAddr, path::Path, time::Duration};

use mptcp_lab::{
    endpoints::{self, Amount},
    storm::HoldingServer,
};
use netlab::{
    can_run, eventually, output_ok, recvtok_is, send_join_syns, start_recording_run, tshark_fields,
    veth, JoinSyn, Netns, Scratch,
};

const CLIENT: &str = "198.18.101.1";
const SERVER: &str = "198.18.101.2";
const PORT: u16 = 10000;
/// Bytes of the MPTCP transfer.
const TRANSFER: u64 = 4 << 20;

#[test]
fn native_xdp_at_mtu_9000_passes_genuine_and_drops_forged_frames() {
    let test = "native_xdp_at_mtu_9000_passes_genuine_and_drops_forged_frames";
    if !can_run(test, &["ping", "tshark"]) {
        return;
    }
    let client_ns = Netns::new("jc");
    let server_ns = Netns::new("js");
    veth(&client_ns, "j0", CLIENT, &server_ns, "j1", SERVER);
    client_ns.ip(&["link", "set", "dev", "j0", "mtu", "9000"]);
    server_ns.ip(&["link", "set", "dev", "j1", "mtu", "9000"]);
    let scratch = Scratch::new("jumbo");
    let (pcap_arg, state_arg) = (scratch.pcap(), scratch.state_dir());

    let mut run = start_recording_run(
        &server_ns,
        &["--iface", "j1", "--xdp-mode", "native"],
        &scratch,
    );
    assert!(
        run.log().contains("attached to j1 (native XDP ingress"),
        "{}",
        run.log()
    );

    // Genuine: 8000-byte pings (8042-byte frames), not fragmented.
    output_ok(client_ns.exec("ping").args([
        "-q", "-c", "5", "-i", "0.05", "-W", "2", "-M", "do", "-s", "8000", SERVER,
    ]));
    // Genuine: an MPTCP transfer in segments that fill the MTU.
    let server_addr = SocketAddr::new(SERVER.parse().unwrap(), PORT);
    let server = server_ns
        .enter(|| HoldingServer::start(server_addr))
        .unwrap()
        .expect("the MPTCP server listens");
    let data_before = server_ns.counter("mptcp_other");
    client_ns
        .enter(|| {
            let mut conn = endpoints::connect_quietly(server_addr, Duration::from_secs(30))?;
            endpoints::write_amount(&mut conn, Amount::Bytes(TRANSFER))?;
            // Closed at once, like any sender: the kernel still delivers what is queued.
            conn.shutdown(std::net::Shutdown::Write)
        })
        .unwrap()
        .expect("the MPTCP transfer");
    eventually("the server to see the end", Duration::from_secs(30), || {
        server.counts().closed == 1
    });
    assert_eq!(server.counts().bytes, TRANSFER);
    let data_segments = server_ns.counter("mptcp_other") - data_before;
    assert!(
        server_ns.counter("keys_learned") >= 1,
        "the fast path learned the connection's keys"
    );
    // Each data segment carries at most one MSS (8948 bytes at MTU 9000).
    assert!(
        data_segments >= TRANSFER / 8948,
        "{data_segments} MPTCP segments for {TRANSFER} bytes"
    );

    // Forged: blind MP_JOIN SYNs, one in a single buffer, one of 8066 bytes.
    let token = "feedf00d";
    let token_bytes = u32::from_str_radix(token, 16).unwrap().to_be_bytes();
    for (sport, payload) in [(41000, 0), (41001, 8000)] {
        let syn = JoinSyn {
            sport,
            seq: 1000,
            payload,
        };
        send_join_syns(&client_ns, CLIENT, SERVER, token_bytes, &[syn]);
    }
    eventually("2 dropped join SYNs", Duration::from_secs(15), || {
        server_ns.counter("join_syn_unknown_token_dropped") == 2
    });
    assert_eq!(
        server_ns.netstat("MPTcpExt", "MPJoinNoTokenFound"),
        0,
        "a forged join reached the server's stack"
    );
    let events = std::fs::read_to_string(Path::new(&state_arg).join("events.jsonl")).unwrap();
    let frame_lens: Vec<u64> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|e| assert_eq!(e["token"], token, "{e}"))
        .map(|e| e["frame_len"].as_u64().unwrap())
        .collect();
    run.stop(libc::SIGINT);
    // Ethernet 14, IPv4 20, TCP 20 + 12 of MP_JOIN, then the payload: the whole frame, not its
    // first buffer.
    assert_eq!(frame_lens, [66, 66 + 8000], "{events}");

    // The snapshots, read with bpf_xdp_load_bytes, decode as the forged MP_JOINs.
    let (text, frames) = tshark_fields(
        &pcap_arg,
        &["frame.len", "frame.cap_len", "tcp.options.mptcp.recvtok"],
    );
    assert_eq!(frames.len(), 2, "{text}");
    for (fields, len) in frames.iter().zip(["66", "8066"]) {
        assert_eq!(fields[0], len, "{text}");
        assert_eq!(fields[1], if len == "66" { "66" } else { "128" }, "{text}");
        assert!(recvtok_is(&fields[2], token), "{text}");
    }
    eprintln!(
        "native XDP at MTU 9000: {TRANSFER} bytes in {data_segments} MPTCP segments passed, \
         forged join SYNs of 66 and 8066 bytes dropped and recorded"
    );
}
