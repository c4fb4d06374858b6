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
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IPPROTO_MPTCP` (linux/in.h).
const IPPROTO_MPTCP: i32 = 262;
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

fn say(line: &str) {
    let mut out = io::stdout().lock();
    // Nothing useful to do if stdout is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn mptcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(Protocol::from(IPPROTO_MPTCP)),
    )
}

fn server(addr: SocketAddr) -> io::Result<()> {
    let socket = mptcp_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(16)?;
    let listener: TcpListener = socket.into();
    say(&format!("LISTENING {}", listener.local_addr()?));
    let (mut conn, peer) = listener.accept()?;
    say(&format!("ACCEPTED {peer}"));
    conn.set_read_timeout(Some(IO_TIMEOUT * 4))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    say(&format!("RECEIVED {total}"));
    Ok(())
}

fn client(addr: SocketAddr, bytes: u64, hold: Duration) -> io::Result<()> {
    let socket = mptcp_socket(addr)?;
    socket.connect_timeout(&SockAddr::from(addr), IO_TIMEOUT)?;
    let mut conn: TcpStream = socket.into();
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    say(&format!("CONNECTED {}", conn.local_addr()?));

    let chunk: Vec<u8> = (0..1u32 << 16).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    say(&format!("SENT {bytes}"));

    hold_open(hold);
    say(&mptcp_info_line(&conn));

    conn.shutdown(Shutdown::Write)?;
    // Wait for the server's FIN so all data is known to be read.
    let mut sink = [0u8; 4096];
    while conn.read(&mut sink)? > 0 {}
    say("CLOSED");
    Ok(())
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
