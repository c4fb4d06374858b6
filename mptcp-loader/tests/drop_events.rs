//! Drop events end to end: blind MP_JOIN SYNs (tokens no connection has) sent from a client
//! namespace to a server namespace whose interface `run --mode enforce --pcap FILE` protects
//! (198.18.96.0/24). Each drop becomes one JSON line in the events file, which `events --follow`
//! prints as it grows, and one frame in the pcap file, which tshark decodes as an MP_JOIN with
//! the forged token.
//!
//! Needs root, `ip`, `nsenter`, `tshark` and the built eBPF object; skipped
//! otherwise. The namespaces are deleted whatever happens.

mod netlab;

use std::{process::Command, time::Duration};

use netlab::{
    can_run, eventually, recvtok_is, send_join_syns, start_recording_run, tshark_fields, veth,
    JoinSyn, Netns, Proc, Scratch, BIN,
};

const CLIENT: &str = "198.18.96.1";
const SERVER: &str = "198.18.96.2";

#[test]
fn drops_are_recorded_as_json_lines_and_pcap_frames() {
    if !can_run(
        "drops_are_recorded_as_json_lines_and_pcap_frames",
        &["tshark"],
    ) {
        return;
    }
    let client_ns = Netns::new("ec");
    let server_ns = Netns::new("es");
    veth(&client_ns, "c0", CLIENT, &server_ns, "s0", SERVER);
    let scratch = Scratch::new("drops");
    let (pcap_arg, state_arg) = (scratch.pcap(), scratch.state_dir());
    let mut run = start_recording_run(&server_ns, &["--iface", "s0"], &scratch);
    // `events --follow` started before the drops prints them as they come.
    let mut follow = Proc::spawn("events --follow", {
        let mut cmd = Command::new(BIN);
        cmd.args(["events", "--follow", "--state-dir", &state_arg]);
        cmd
    });

    let token = "deadbeef";
    let syns: Vec<JoinSyn> = (0..3)
        .map(|i| JoinSyn {
            sport: 40000 + i,
            seq: 1000 + u32::from(i),
            payload: 0,
        })
        .collect();
    let token_bytes = u32::from_str_radix(token, 16).unwrap().to_be_bytes();
    send_join_syns(&client_ns, CLIENT, SERVER, token_bytes, &syns);
    eventually("3 dropped join SYNs", Duration::from_secs(15), || {
        server_ns.counter("join_syn_unknown_token_dropped") == 3
    });

    let mut followed = Vec::new();
    for _ in 0..3 {
        let line = follow.wait_for("a JSON line", Duration::from_secs(10), |l| {
            l.starts_with('{')
        });
        followed.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    for (i, event) in followed.iter().enumerate() {
        assert_eq!(event["reason"], "join_syn_unknown_token_dropped", "{event}");
        assert_eq!(event["dropped"], true);
        assert_eq!(event["token"], token);
        assert_eq!(event["iface"], "s0");
        assert_eq!(
            (event["src"].as_str(), event["dst"].as_str()),
            (Some(CLIENT), Some(SERVER))
        );
        assert_eq!(event["sport"], 40000 + i);
        assert_eq!(event["dport"], 10000);
        assert!(event["announced_addr"].is_null());
        let time = event["time"].as_str().unwrap();
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
    }
    // Not a root-only file: the plain `events` prints the same lines.
    let printed = Command::new(BIN)
        .args(["events", "--state-dir", &state_arg])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).lines().count(), 3);

    run.stop(libc::SIGINT);
    drop(follow);

    // tshark reads the pcap back and decodes the MP_JOIN option with the forged token.
    let (text, frames) = tshark_fields(
        &pcap_arg,
        &[
            "ip.src",
            "tcp.options.mptcp.subtype",
            "tcp.options.mptcp.recvtok",
        ],
    );
    assert_eq!(frames.len(), 3, "{text}");
    for fields in &frames {
        assert_eq!(fields[0], CLIENT, "{text}");
        assert_eq!(fields[1], "1", "MP_JOIN subtype: {text}");
        assert!(recvtok_is(&fields[2], token), "{text}");
    }
}
