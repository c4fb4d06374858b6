//! `mptcp-profiles`: writes packet-generator profiles for one MPTCP connection.
//!
//! ```text
//! mptcp-profiles --src IP:PORT --dst IP:PORT --seq N --ack N --key-a HEX --key-b HEX --out DIR
//!                [--count N] [--tsval N --tsecr N] [--window N] [--src-mac MAC] [--dst-mac MAC]
//!                [--addr-id N] [--announce IP] [--dss-payload N] [--seed N]
//! ```
//!
//! Writes `add_addr_valid`, `add_addr_forged`, `join_syn_random_token`, `dss`,
//! `add_addr_random_address` and `join_ack_forged`, each as a trafgen configuration (`.cfg`) and
//! a classic pcap (`.pcap`), into DIR. `join_ack_forged` is meant for the 4-tuple of a pending
//! MP_JOIN (give the join's `--src`, `--seq`, `--ack` and timestamps). See
//! the library docs (`mptcp_profiles`) and the README's "Traffic profiles" section.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use mptcp_profiles::{default_announce, parse_key, parse_mac, Connection, Kind, Settings};

#[derive(Parser)]
#[command(
    about = "Write trafgen configurations and pcaps of valid and forged ADD_ADDRs (one address, \
             or a random address per packet), MP_JOIN SYNs with random tokens, MP_JOIN third ACKs \
             with random HMACs and DSS traffic for one MPTCP connection"
)]
struct Args {
    /// Sender (host A) address and port: every profile is sent from here.
    #[arg(long, value_name = "IP:PORT")]
    src: SocketAddr,
    /// Receiver (host B) address and port; MP_JOIN SYNs go to this port.
    #[arg(long, value_name = "IP:PORT")]
    dst: SocketAddr,
    /// A's next sequence number (B's rcv_nxt).
    #[arg(long)]
    seq: u32,
    /// A's acknowledgement number (B's snd_nxt).
    #[arg(long)]
    ack: u32,
    /// A's MPTCP key, 16 hex digits (the announcer's key: the ADD_ADDR HMAC is keyed
    /// key A || key B).
    #[arg(long, value_name = "HEX", value_parser = parse_key)]
    key_a: [u8; 8],
    /// B's MPTCP key, 16 hex digits.
    #[arg(long, value_name = "HEX", value_parser = parse_key)]
    key_b: [u8; 8],
    /// Output folder (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Frames per pcap.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// A's latest TSval: adds NOP NOP TS to ADD_ADDR and DSS segments (needed on connections
    /// that use timestamps, i.e. every Linux connection by default).
    #[arg(long, requires = "tsecr")]
    tsval: Option<u32>,
    /// The TSecr to send with --tsval (B's latest TSval).
    #[arg(long, requires = "tsval")]
    tsecr: Option<u32>,
    /// Window A advertises.
    #[arg(long, default_value_t = 502)]
    window: u16,
    /// Ethernet source.
    #[arg(long, value_name = "MAC", value_parser = parse_mac, default_value = "02:00:00:00:01:01")]
    src_mac: [u8; 6],
    /// Ethernet destination.
    #[arg(long, value_name = "MAC", value_parser = parse_mac, default_value = "02:00:00:00:01:02")]
    dst_mac: [u8; 6],
    /// Address ID of the ADD_ADDRs and MP_JOINs (add_addr_random_address draws its own).
    #[arg(long, default_value_t = 9)]
    addr_id: u8,
    /// Address the ADD_ADDRs announce [default: 198.18.3.66, or 2001:db8:3::66 on IPv6].
    #[arg(long, value_name = "IP")]
    announce: Option<std::net::IpAddr>,
    /// Payload bytes per DSS segment.
    #[arg(long, default_value_t = 1000)]
    dss_payload: u16,
    /// Seed of the random bytes in the pcaps.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let conn = Connection {
        src: args.src,
        dst: args.dst,
        src_mac: args.src_mac,
        dst_mac: args.dst_mac,
        seq: args.seq,
        ack: args.ack,
        window: args.window,
        timestamps: args.tsval.zip(args.tsecr),
        key_a: args.key_a,
        key_b: args.key_b,
    };
    let settings = Settings {
        count: args.count,
        addr_id: args.addr_id,
        announce: args
            .announce
            .unwrap_or_else(|| default_announce(args.src.is_ipv6())),
        dss_payload: args.dss_payload,
        seed: args.seed,
        ..Settings::default()
    };
    match mptcp_profiles::write_all(&conn, &settings, &args.out) {
        Ok(files) => {
            for kind in Kind::ALL {
                println!("{:<24} {}", kind.stem(), kind.summary());
            }
            for file in files {
                println!("wrote {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("mptcp-profiles: {msg}");
            ExitCode::FAILURE
        }
    }
}
