//! The traffic profiles of `mptcp-profiles`, checked by independent tools:
//!
//! - tshark decodes every pcap as intended: checksums good, MPTCP subtype, option lengths,
//!   address ID, announced address, HMAC (right for `add_addr_valid`, wrong for
//!   `add_addr_forged`), random tokens, DSS mapping, a fresh (ID, address) and HMAC in every
//!   `add_addr_random_address` frame, the 24-byte MP_JOIN of `join_ack_forged` with a fresh
//!   160-bit HMAC in every frame; `tshark -V` names the subtypes;
//! - trafgen compiles every `.cfg` and, written to a pcap, produces the same frames as ours
//!   except where the profile says "random", with checksums tshark accepts.
//!
//! Needs tshark and trafgen (netsniff-ng); skipped without them unless
//! `MPTCP_TESTS_REQUIRE_BPF=1`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use mptcp_profiles::{self as profiles, default_announce, Connection, Kind, Piece, Settings};
use mptcp_tests::{
    mptcp_frames::{add_addr, token},
    tools::gate,
};

const COUNT: u32 = 16;

fn missing_tools() -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["tshark", "trafgen"]
        .into_iter()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .map(|tool| format!("`{tool}` is not installed (apt-get install tshark netsniff-ng)"))
        .collect()
}

fn settings(v6: bool) -> Settings {
    Settings {
        count: COUNT,
        announce: default_announce(v6),
        ..Settings::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mptcp-profiles-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const FIELDS: &[&str] = &[
    "ip.checksum.status",
    "tcp.checksum.status",
    "tcp.flags",
    "tcp.options.mptcp.subtype",
    "tcp.option_len",
    "tcp.options.mptcp.echo",
    "tcp.options.mptcp.addrid",
    "tcp.options.mptcp.ipv4",
    "tcp.options.mptcp.ipv6",
    "tcp.options.mptcp.addaddrtrunchmac",
    "tcp.options.mptcp.recvtok",
    "tcp.options.mptcp.sendhmac",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.options.mptcp.datalvllen",
    "tcp.len",
    "_ws.malformed",
];

/// One row per frame: field name -> value, as tshark prints it.
fn tshark_fields(pcap: &Path) -> Vec<std::collections::BTreeMap<&'static str, String>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("running tshark");
    assert!(
        out.status.success(),
        "tshark on {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            FIELDS
                .iter()
                .copied()
                .zip(line.split('|').map(str::to_owned))
                .collect()
        })
        .collect()
}

fn tshark_verbose(pcap: &Path) -> String {
    let out = Command::new("tshark")
        .args(["-n", "-V", "-r"])
        .arg(pcap)
        .output()
        .expect("running tshark");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn u64_of(bytes: &[u8]) -> String {
    u64::from_be_bytes(bytes.try_into().unwrap()).to_string()
}

/// Checks what tshark decodes in the pcap of `kind`.
fn check_decoded(kind: Kind, pcap: &Path, v6: bool) {
    let rows = tshark_fields(pcap);
    assert_eq!(rows.len(), COUNT as usize, "{}", pcap.display());
    let c = Connection::example(v6);
    let s = settings(v6);
    let announce = match s.announce {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let right = add_addr(&c.key_a, &c.key_b, s.addr_id, &announce, None);
    let right_hmac = u64_of(&right[right.len() - 8..]);
    let mut hmacs = std::collections::BTreeSet::new();
    let mut tokens = std::collections::BTreeSet::new();
    let mut announced = std::collections::BTreeSet::new();
    for row in &rows {
        let ctx = format!("{} {row:?}", pcap.display());
        if !v6 {
            assert_eq!(row["ip.checksum.status"], "1", "IP checksum: {ctx}");
        }
        assert_eq!(row["tcp.checksum.status"], "1", "TCP checksum: {ctx}");
        assert_eq!(row["_ws.malformed"], "", "malformed: {ctx}");
        let lens: Vec<&str> = row["tcp.option_len"].split(',').collect();
        match kind {
            Kind::AddAddrRandomAddress => {
                assert_eq!(row["tcp.flags"], "0x0010", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.subtype"], "3", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.echo"], "0", "{ctx}");
                assert_eq!(row["tcp.seq_raw"], c.seq.to_string(), "{ctx}");
                assert_eq!(row["tcp.ack_raw"], c.ack.to_string(), "{ctx}");
                let (addr_field, len) = if v6 {
                    ("tcp.options.mptcp.ipv6", "28")
                } else {
                    ("tcp.options.mptcp.ipv4", "16")
                };
                assert_eq!(lens, ["10", len], "{ctx}");
                // The right HMAC of this frame's own ID and address.
                let id: u8 = row["tcp.options.mptcp.addrid"].parse().expect("address ID");
                let addr: IpAddr = row[addr_field].parse().expect("announced address");
                let addr = match addr {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                let own = add_addr(&c.key_a, &c.key_b, id, &addr, None);
                let hmac = &row["tcp.options.mptcp.addaddrtrunchmac"];
                assert_ne!(*hmac, u64_of(&own[own.len() - 8..]), "{ctx}");
                announced.insert((id, row[addr_field].clone()));
                hmacs.insert(hmac.clone());
            }
            Kind::JoinAckForged => {
                assert_eq!(row["tcp.flags"], "0x0010", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.subtype"], "1", "{ctx}");
                assert_eq!(row["tcp.seq_raw"], c.seq.to_string(), "{ctx}");
                assert_eq!(row["tcp.ack_raw"], c.ack.to_string(), "{ctx}");
                // Timestamps (10), then the third ACK's MP_JOIN (24).
                assert_eq!(lens, ["10", "24"], "{ctx}");
                let hmac = &row["tcp.options.mptcp.sendhmac"];
                assert_eq!(hmac.len(), 40, "160-bit HMAC in hex: {ctx}");
                hmacs.insert(hmac.clone());
            }
            Kind::AddAddrValid | Kind::AddAddrForged => {
                assert_eq!(row["tcp.flags"], "0x0010", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.subtype"], "3", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.echo"], "0", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.addrid"], "9", "{ctx}");
                let (addr_field, len) = if v6 {
                    ("tcp.options.mptcp.ipv6", "28")
                } else {
                    ("tcp.options.mptcp.ipv4", "16")
                };
                assert_eq!(row[addr_field], s.announce.to_string(), "{ctx}");
                // Timestamps (10), then the ADD_ADDR.
                assert_eq!(lens, ["10", len], "{ctx}");
                let hmac = &row["tcp.options.mptcp.addaddrtrunchmac"];
                assert_eq!(
                    *hmac == right_hmac,
                    kind == Kind::AddAddrValid,
                    "HMAC {hmac} vs right {right_hmac}: {ctx}"
                );
                hmacs.insert(hmac.clone());
            }
            Kind::JoinSynRandomToken => {
                assert_eq!(row["tcp.flags"], "0x0002", "{ctx}");
                assert_eq!(row["tcp.options.mptcp.subtype"], "1", "{ctx}");
                // MSS 4, SACK_PERM 2, TS 10, WS 3, MP_JOIN 12.
                assert_eq!(lens, ["4", "2", "10", "3", "12"], "{ctx}");
                let tok = &row["tcp.options.mptcp.recvtok"];
                let real = u32::from_be_bytes(token(&c.key_b)).to_string();
                assert_ne!(*tok, real, "{ctx}");
                tokens.insert(tok.clone());
            }
            Kind::Dss => {
                assert_eq!(row["tcp.options.mptcp.subtype"], "2", "{ctx}");
                assert_eq!(lens, ["10", "26"], "{ctx}");
                assert_eq!(
                    row["tcp.options.mptcp.datalvllen"],
                    s.dss_payload.to_string(),
                    "{ctx}"
                );
                assert_eq!(row["tcp.len"], s.dss_payload.to_string(), "{ctx}");
            }
        }
    }
    match kind {
        Kind::AddAddrValid => assert_eq!(hmacs.len(), 1),
        Kind::AddAddrForged | Kind::JoinAckForged => {
            assert_eq!(hmacs.len(), rows.len(), "HMACs are random");
        }
        Kind::JoinSynRandomToken => assert_eq!(tokens.len(), rows.len(), "tokens are random"),
        Kind::AddAddrRandomAddress => {
            assert_eq!(hmacs.len(), rows.len(), "HMACs are random");
            assert_eq!(
                announced.len(),
                rows.len(),
                "(ID, address) pairs are random"
            );
        }
        Kind::Dss => {}
    }
    let text = tshark_verbose(pcap);
    let subtype = match kind {
        Kind::AddAddrValid | Kind::AddAddrForged | Kind::AddAddrRandomAddress => {
            "Multipath TCP subtype: Add Address (3)"
        }
        Kind::JoinSynRandomToken | Kind::JoinAckForged => {
            "Multipath TCP subtype: Join Connection (1)"
        }
        Kind::Dss => "Multipath TCP subtype: Data Sequence Signal (2)",
    };
    assert_eq!(
        text.matches(subtype).count(),
        COUNT as usize,
        "{}",
        pcap.display()
    );
}

#[test]
fn tshark_decodes_every_pcap_as_intended() {
    if !gate("tshark_decodes_every_pcap_as_intended", &missing_tools()) {
        return;
    }
    for v6 in [false, true] {
        let dir = scratch(if v6 { "pcap6" } else { "pcap4" });
        profiles::write_all(&Connection::example(v6), &settings(v6), &dir).unwrap();
        for kind in Kind::ALL {
            check_decoded(kind, &dir.join(format!("{}.pcap", kind.stem())), v6);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs trafgen on `cfg` writing `COUNT` packets to a pcap and returns its frames. trafgen
/// writes link type 0 into a pcap file; it is set to Ethernet so tshark can read it.
fn trafgen_frames(cfg: &Path, dir: &Path) -> (Vec<Vec<u8>>, PathBuf) {
    let raw = dir.join("trafgen.pcap");
    let out = Command::new("trafgen")
        .arg("--in")
        .arg(cfg)
        .arg("--out")
        .arg(&raw)
        .args(["--num", &COUNT.to_string(), "--cpus", "1", "--no-cpu-stats"])
        .output()
        .expect("running trafgen");
    assert!(
        out.status.success(),
        "trafgen {}: {}{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
    let fixed = dir.join("trafgen-ethernet.pcap");
    std::fs::write(&fixed, &bytes).unwrap();
    (mptcp_tests::capture::read_pcap(&bytes).unwrap(), fixed)
}

#[test]
fn trafgen_configs_compile_to_the_same_frames() {
    if !gate(
        "trafgen_configs_compile_to_the_same_frames",
        &missing_tools(),
    ) {
        return;
    }
    for v6 in [false, true] {
        let dir = scratch(if v6 { "cfg6" } else { "cfg4" });
        let (c, s) = (Connection::example(v6), settings(v6));
        profiles::write_all(&c, &s, &dir).unwrap();
        for kind in Kind::ALL {
            let cfg = dir.join(format!("{}.cfg", kind.stem()));
            let (frames, pcap) = trafgen_frames(&cfg, &dir);
            assert_eq!(frames.len(), COUNT as usize, "{}", cfg.display());
            // Bytes trafgen must reproduce: everything but random pieces and checksums.
            let template = profiles::template(kind, &c, &s).unwrap();
            let ours = &profiles::frames(kind, &c, &s).unwrap()[0];
            let mut fixed = Vec::new();
            for piece in &template.pieces {
                let n = match piece {
                    Piece::Bytes(b, _) => b.len(),
                    Piece::Fill(_, n, _) => *n,
                    Piece::Random { len, .. } => {
                        fixed.extend(std::iter::repeat_n(false, *len));
                        continue;
                    }
                    Piece::Ipv4Checksum | Piece::TcpChecksum => {
                        fixed.extend([false, false]);
                        continue;
                    }
                };
                fixed.extend(std::iter::repeat_n(true, n));
            }
            for frame in &frames {
                assert_eq!(frame.len(), ours.len(), "{}", cfg.display());
                for (i, keep) in fixed.iter().enumerate() {
                    if *keep {
                        assert_eq!(frame[i], ours[i], "{} byte {i}", cfg.display());
                    }
                }
            }
            // For DSS trafgen repeats the first segment (ours advance); tshark checks it all.
            check_decoded(kind, &pcap, v6);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
