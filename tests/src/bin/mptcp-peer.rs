//! MPTCP test peers, launched inside the lab's namespaces by `mptcp_tests::peers`.
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
//! ```
//! Errors go to stderr with exit code 1.

use std::{
    io::{self, BufRead as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::flood::endpoints::{self, say, Amount};

/// `SOL_MPTCP` (linux/socket.h).
const SOL_MPTCP: i32 = 284;
/// `MPTCP_INFO` (linux/mptcp.h).
const MPTCP_INFO: i32 = 1;
/// How long a peer waits for the other side before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["server", addr] => parse_addr(addr).and_then(server),
        ["client", addr, bytes, hold_ms] => parse_addr(addr).and_then(|addr| {
            let bytes = bytes.parse().map_err(|e| invalid(&format!("bytes: {e}")))?;
            let hold = hold_ms
                .parse()
                .map_err(|e| invalid(&format!("hold-ms: {e}")))?;
            client(addr, bytes, Duration::from_millis(hold))
        }),
        _ => Err(invalid(
            "usage: mptcp-peer server <addr:port> | client <addr:port> <bytes> <hold-ms>",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mptcp-peer: {err}");
            ExitCode::FAILURE
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

fn parse_addr(addr: &str) -> io::Result<SocketAddr> {
    addr.parse().map_err(|e| invalid(&format!("{addr}: {e}")))
}

fn server(addr: SocketAddr) -> io::Result<()> {
    let (_listener, mut conn) = endpoints::accept_one(addr, 16, IO_TIMEOUT * 4)?;
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
