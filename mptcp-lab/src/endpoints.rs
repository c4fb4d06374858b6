//! MPTCP sockets (`IPPROTO_MPTCP`), and the endpoints of the flood benchmark, run inside the
//! lab's namespaces as hidden subcommands of `mptcp-flood` (one line per event on stdout):
//!
//! ```text
//! serve <addr:port>
//!     LISTENING <addr>          listening (IPPROTO_MPTCP); the listener stays open until exit
//!     ACCEPTED <peer>           the first connection
//!     RECEIVED <bytes> <secs>   the peer closed; secs from the first byte to the end
//! send <addr:port> (--bytes N [--hold] | --seconds S)
//!     CONNECTED <local addr>    connected with IPPROTO_MPTCP
//!     SENT <bytes>              N bytes written, or as many as S seconds allowed
//!     (with --hold: waits for a `close` line, or the end of stdin)
//!     CLOSED                    shut down and the peer's FIN read
//! ```
//!
//! `mptcp-peer`, the lab's test peer, speaks the same lines and is built from the same pieces
//! ([`accept_one`], [`read_to_end`], [`connect`], [`write_amount`], [`close`]).

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IPPROTO_MPTCP` (linux/in.h).
const IPPROTO_MPTCP: i32 = 262;
/// How long an endpoint waits for its peer before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How much `send` sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// This many bytes.
    Bytes(u64),
    /// As much as it can for this long.
    For(Duration),
}

/// Prints `line` on stdout at once (the harness reads the lines as they come).
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    // Nothing useful to do if the harness went away.
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

/// Listens on `addr` with MPTCP (`LISTENING <addr>`), accepts one connection
/// (`ACCEPTED <peer>`) and gives it `read_timeout`. The listener is returned with it: it stays
/// open until dropped.
///
/// # Errors
/// On any socket error.
pub fn accept_one(
    addr: SocketAddr,
    backlog: i32,
    read_timeout: Duration,
) -> io::Result<(TcpListener, TcpStream)> {
    let listener = listen(addr, backlog)?;
    say(&format!("LISTENING {}", listener.local_addr()?));
    let (conn, peer) = listener.accept()?;
    say(&format!("ACCEPTED {peer}"));
    conn.set_read_timeout(Some(read_timeout))?;
    Ok((listener, conn))
}

/// An MPTCP listener on `addr` (`SO_REUSEADDR`).
///
/// # Errors
/// On any socket error.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = mptcp_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Reads `conn` until the peer closes it: the bytes read, and when the first of them came.
///
/// # Errors
/// On any socket error (a timeout included).
pub fn read_to_end(conn: &mut TcpStream) -> io::Result<(u64, Option<Instant>)> {
    let mut buf = vec![0u8; 1 << 18];
    let mut total: u64 = 0;
    let mut first: Option<Instant> = None;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok((total, first)),
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `addr` with MPTCP within `timeout`, which then bounds every read and write too
/// (`CONNECTED <local addr>`).
///
/// # Errors
/// On any socket error.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let conn = connect_quietly(addr, timeout)?;
    say(&format!("CONNECTED {}", conn.local_addr()?));
    Ok(conn)
}

/// [`connect`] without the `CONNECTED` line.
///
/// # Errors
/// On any socket error.
pub fn connect_quietly(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = mptcp_socket(addr)?;
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    let conn: TcpStream = socket.into();
    conn.set_write_timeout(Some(timeout))?;
    conn.set_read_timeout(Some(timeout))?;
    Ok(conn)
}

/// Writes `amount` of a fixed byte pattern to `conn` and returns how many bytes that was.
///
/// # Errors
/// On any socket error.
pub fn write_amount(conn: &mut TcpStream, amount: Amount) -> io::Result<u64> {
    let chunk: Vec<u8> = (0..1u32 << 16).map(|i| (i % 251) as u8).collect();
    let mut sent: u64 = 0;
    match amount {
        Amount::Bytes(n) => {
            while sent < n {
                let len = usize::try_from((n - sent).min(chunk.len() as u64)).unwrap_or(0);
                conn.write_all(&chunk[..len])?;
                sent += len as u64;
            }
        }
        Amount::For(duration) => {
            let end = Instant::now() + duration;
            while Instant::now() < end {
                conn.write_all(&chunk)?;
                sent += chunk.len() as u64;
            }
        }
    }
    Ok(sent)
}

/// Shuts down the sending side of `conn` and reads until the peer's FIN, so all data is known
/// to be read (`CLOSED`).
///
/// # Errors
/// On any socket error.
pub fn close(mut conn: TcpStream) -> io::Result<()> {
    conn.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    while conn.read(&mut sink)? > 0 {}
    say("CLOSED");
    Ok(())
}

/// Accepts one MPTCP connection on `addr` and reads it to the end.
///
/// # Errors
/// On any socket error.
pub fn serve(addr: SocketAddr) -> io::Result<()> {
    let (_listener, mut conn) = accept_one(addr, 128, IO_TIMEOUT * 20)?;
    let (total, first) = read_to_end(&mut conn)?;
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    say(&format!("RECEIVED {total} {secs:.6}"));
    Ok(())
}

/// Connects to `addr` with MPTCP, sends `amount`, optionally holds the connection until told,
/// then closes it.
///
/// # Errors
/// On any socket error.
pub fn send(addr: SocketAddr, amount: Amount, hold: bool) -> io::Result<()> {
    let mut conn = connect(addr, IO_TIMEOUT)?;
    let sent = write_amount(&mut conn, amount)?;
    say(&format!("SENT {sent}"));
    if hold {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "close" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    close(conn)
}
