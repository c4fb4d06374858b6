//! The lab's one peer binary: MPTCP endpoints and packet forgers launched inside the lab's
//! namespaces by the tests (`mptcp_tests::peers`, `storm`, `forger`, `join_forger`). Each
//! subcommand is a thin command line over `mptcp-lab`, which documents the lines it prints and
//! the commands it reads on stdin.
//!
//! ```text
//! mptcp-peer server <addr:port>
//!     LISTENING <addr:port>      once listening (IPPROTO_MPTCP)
//!     ACCEPTED <peer>            on the first connection
//!     RECEIVED <bytes>           when the peer has closed its side; then closes and exits 0
//! mptcp-peer client <addr:port> <bytes> <hold-ms>
//!     CONNECTED <local addr>     connected with IPPROTO_MPTCP
//!     SENT <bytes>               all bytes written
//!     (holds the connection open for <hold-ms>, or until a `close` line on stdin)
//!     MPTCP subflows=<n> add_addr_signal=<n> add_addr_accepted=<n>   (or `MPTCP fallback`)
//!     CLOSED                     after shutdown and the server's FIN; exits 0
//! mptcp-peer stream <addr:port>              a client that sends when told (mptcp_lab::stream)
//! mptcp-peer storm server|genuine <addr:port> | storm open <addr:port> <n> <per-second>
//!                                            connections held open (mptcp_lab::storm)
//! mptcp-peer forge-add-addr --iface .. [--tx-iface .. --src-mac .. --dst-mac ..] --client ..
//!     --server .. --port ..
//!                                            (mptcp_lab::forge_add_addr)
//! mptcp-peer forge-join --tx-iface .. --src .. --src-mac .. --dst-mac .. --client .. --server ..
//!     --port ..                              (mptcp_lab::forge_join)
//! ```
//! Errors go to stderr with exit code 1.

use std::{
    io::{self, BufRead as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use mptcp_lab::{
    endpoints::{self, say, Amount},
    forge_add_addr::{AddAddrForger, Detour, Target},
    forge_join::{JoinForger, Source},
    storm, stream,
    wire::parse_mac,
};

/// `SOL_MPTCP` (linux/socket.h).
const SOL_MPTCP: i32 = 284;
/// `MPTCP_INFO` (linux/mptcp.h).
const MPTCP_INFO: i32 = 1;
/// How long a peer waits for the other side before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for forged joins that stay half-open next to the genuine ones.
const SERVER_BACKLOG: i32 = 128;

#[derive(Parser)]
#[command(
    name = "mptcp-peer",
    about = "MPTCP peers and packet forgers of the test lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept one MPTCP connection and read it to the end.
    Server { addr: SocketAddr },
    /// Connect, send BYTES, hold the connection for HOLD_MS (or until `close`), report MPTCP_INFO.
    Client {
        addr: SocketAddr,
        bytes: u64,
        hold_ms: u64,
    },
    /// Connect, then send when told (`send N`, `close` on stdin).
    Stream { addr: SocketAddr },
    /// Many MPTCP connections held open, and one that stays active.
    #[command(subcommand)]
    Storm(StormCommand),
    /// Sniff a connection and forge ADD_ADDRs, blind RSTs and foreign MP_CAPABLEs into it.
    ForgeAddAddr {
        /// Client-side interface to sniff and send on.
        #[arg(long)]
        iface: String,
        /// Send the forged frames out of this interface instead (with --src-mac, --dst-mac).
        #[arg(long, requires_all = ["src_mac", "dst_mac"])]
        tx_iface: Option<String>,
        /// Source MAC of detoured frames.
        #[arg(long, value_parser = parse_mac, requires = "tx_iface")]
        src_mac: Option<[u8; 6]>,
        /// Destination MAC of detoured frames (the other box's interface).
        #[arg(long, value_parser = parse_mac, requires = "tx_iface")]
        dst_mac: Option<[u8; 6]>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Sniff a connection's keys and forge MP_JOIN handshakes against its server.
    ForgeJoin {
        /// Interface the forged frames leave by.
        #[arg(long)]
        tx_iface: String,
        /// Forged source IPv4 (not owned by the client).
        #[arg(long)]
        src: Ipv4Addr,
        /// Source MAC of the forged frames.
        #[arg(long, value_parser = parse_mac)]
        src_mac: [u8; 6],
        /// Destination MAC (the server's interface).
        #[arg(long, value_parser = parse_mac)]
        dst_mac: [u8; 6],
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Subcommand)]
enum StormCommand {
    /// Accept and hold every connection; answer `count` with `ACCEPTED <n> <bytes>`.
    Server { addr: SocketAddr },
    /// Open N connections, at most PER_SECOND a second, and hold them until stdin closes.
    Open {
        addr: SocketAddr,
        n: u32,
        per_second: f64,
    },
    /// One connection sending 1000 bytes every 2 ms until `quiet`; `close` ends it.
    Genuine { addr: SocketAddr },
}

#[derive(clap::Args)]
struct TargetArgs {
    /// Client IPv4 address of the initial subflow.
    #[arg(long)]
    client: Ipv4Addr,
    /// Server IPv4 address.
    #[arg(long)]
    server: Ipv4Addr,
    /// Server port.
    #[arg(long)]
    port: u16,
}

impl From<TargetArgs> for Target {
    fn from(t: TargetArgs) -> Target {
        Target {
            client: t.client,
            server: t.server,
            port: t.port,
        }
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Server { addr } => server(addr),
        Command::Client {
            addr,
            bytes,
            hold_ms,
        } => client(addr, bytes, Duration::from_millis(hold_ms)),
        Command::Stream { addr } => stream::client(addr, io::stdin().lock()),
        Command::Storm(role) => {
            storm::raise_fd_limit();
            match role {
                StormCommand::Server { addr } => storm::serve_command(addr, io::stdin().lock()),
                StormCommand::Open {
                    addr,
                    n,
                    per_second,
                } => storm::open_command(addr, n, per_second, io::stdin().lock()),
                StormCommand::Genuine { addr } => storm::genuine_command(addr, io::stdin().lock()),
            }
        }
        Command::ForgeAddAddr {
            iface,
            tx_iface,
            src_mac,
            dst_mac,
            target,
        } => {
            let detour = match (tx_iface, src_mac, dst_mac) {
                (Some(iface), Some(src_mac), Some(dst_mac)) => Some(Detour {
                    iface,
                    src_mac,
                    dst_mac,
                }),
                _ => None,
            };
            AddAddrForger::start_via(&iface, target.into(), detour)
                .and_then(|forger| obey(|line| forger.command(line)))
        }
        Command::ForgeJoin {
            tx_iface,
            src,
            src_mac,
            dst_mac,
            target,
        } => {
            let source = Source {
                tx_iface,
                addr: src,
                mac: src_mac,
                dst_mac,
            };
            JoinForger::start(target.into(), source)
                .and_then(|forger| obey(|line| forger.command(line)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mptcp-peer: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A forger's command loop: `READY`, then one answer line per command line on stdin until
/// `quit` or the end of stdin.
fn obey(command: impl Fn(&str) -> Option<String>) -> io::Result<()> {
    say("READY");
    for line in io::stdin().lock().lines() {
        match command(&line?) {
            None => break,
            Some(answer) if answer.is_empty() => {}
            Some(answer) => say(&answer),
        }
    }
    Ok(())
}

fn server(addr: SocketAddr) -> io::Result<()> {
    let (_listener, mut conn) = endpoints::accept_one(addr, SERVER_BACKLOG, IO_TIMEOUT * 4)?;
    let (total, _) = endpoints::read_to_end(&mut conn)?;
    say(&format!("RECEIVED {total}"));
    Ok(())
}

fn client(addr: SocketAddr, bytes: u64, hold: Duration) -> io::Result<()> {
    let mut conn = endpoints::connect(addr, IO_TIMEOUT)?;
    let sent = endpoints::write_amount(&mut conn, Amount::Bytes(bytes))?;
    say(&format!("SENT {sent}"));
    hold_open(hold);
    say(&mptcp_info_line(&conn));
    endpoints::close(conn)
}

/// Sleeps for `hold`, or less if a `close` line arrives on stdin. End of stdin (e.g. stdin is
/// /dev/null) does not shorten the hold.
fn hold_open(hold: Duration) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "close" => {
                    let _ = tx.send(());
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let deadline = Instant::now() + hold;
    // A disconnected channel (stdin closed) still waits out the hold.
    if rx.recv_timeout(hold).is_err() {
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
}

/// `MPTCP subflows=.. add_addr_signal=.. add_addr_accepted=..` from `MPTCP_INFO`, or
/// `MPTCP fallback` when the kernel returns no info (plain TCP).
fn mptcp_info_line(conn: &TcpStream) -> String {
    // struct mptcp_info starts with: u8 subflows, add_addr_signal, add_addr_accepted, ...
    let mut info = [0u8; 256];
    let mut len = libc::socklen_t::try_from(info.len()).unwrap_or(0);
    // SAFETY: getsockopt writes at most `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return format!("MPTCP error={}", io::Error::last_os_error());
    }
    if len < 3 {
        return "MPTCP fallback".to_owned();
    }
    format!(
        "MPTCP subflows={} add_addr_signal={} add_addr_accepted={}",
        info[0], info[1], info[2]
    )
}
