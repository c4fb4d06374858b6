//! Many real MPTCP connections held open, and one that stays active (`mptcp-peer storm ...`, or
//! in this process after [`crate::netns::Netns::enter`]):
//!
//! ```text
//! mptcp-peer storm server <addr:port>
//!     LISTENING <addr:port>      once listening (IPPROTO_MPTCP); then accepts every
//!                                connection, holds it and reads and discards its data;
//!                                answers "count" on stdin with ACCEPTED <n> <bytes>;
//!                                returns when stdin closes
//! mptcp-peer storm open <addr:port> <n> <per_second>
//!     OPENED <n> <seconds>       after opening n connections one after the other, at most
//!                                per_second of them a second (each sends one byte, so its
//!                                MP_CAPABLE third ACK carries both keys);
//!                                holds them all open until stdin closes
//! mptcp-peer storm genuine <addr:port>
//!     CONNECTED <addr:port>      connected; then sends 1000 bytes every 2 ms (an active
//!                                connection) and obeys stdin, one command a line:
//!         quiet                  stops sending, answers QUIET <bytes sent>
//!         close                  closes and returns
//! ```
//!
//! The connections of a storm are kept open on purpose: a connection that ends is removed by the
//! firewall itself; only connections that stay can overfill its maps.

use std::{
    io::{self, BufRead, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::endpoints::{self, say};

/// How long a connection attempt of the storm or the genuine client may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the holding server looks at its stop flag.
const POLL_MS: libc::c_int = 100;
/// What the genuine client sends each period.
const TRICKLE_BYTES: usize = 1000;
/// The genuine client's period.
pub const TRICKLE_PERIOD: Duration = Duration::from_millis(2);

/// Storms hold thousands of sockets: raise the soft limit on open files to the hard one.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// What a [`HoldingServer`] has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: u64,
    /// Bytes read from all of them.
    pub bytes: u64,
    /// Connections the peer has closed.
    pub closed: u64,
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    bytes: AtomicU64,
    closed: AtomicU64,
    stop: AtomicBool,
}

/// A server that accepts every MPTCP connection on its address, holds it and reads and discards
/// its data (one thread polls them all). Stops, closing them, when dropped.
pub struct HoldingServer {
    shared: Arc<Shared>,
    local: SocketAddr,
    worker: Option<JoinHandle<()>>,
}

impl HoldingServer {
    /// Listens on `addr` (backlog 4096) and starts accepting.
    ///
    /// # Errors
    /// When it cannot listen.
    pub fn start(addr: SocketAddr) -> io::Result<HoldingServer> {
        let listener = endpoints::listen(addr, 4096)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let worker = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || serve(&listener, &shared))
        };
        Ok(HoldingServer {
            shared,
            local,
            worker: Some(worker),
        })
    }

    /// The listening address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it has seen so far.
    #[must_use]
    pub fn counts(&self) -> Counts {
        Counts {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            closed: self.shared.closed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HoldingServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The holding server's loop: poll(2) over the listener and every open connection.
fn serve(listener: &TcpListener, shared: &Shared) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(conns.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` holds `nfds` valid pollfd entries.
        if unsafe { libc::poll(fds.as_mut_ptr(), nfds, POLL_MS) } <= 0 {
            continue;
        }
        let mut ended = Vec::new();
        for (i, fd) in fds.iter().enumerate().skip(1) {
            if fd.revents == 0 {
                continue;
            }
            let conn = &mut conns[i - 1];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => {
                        ended.push(i - 1);
                        break;
                    }
                    Ok(n) => {
                        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended.push(i - 1);
                        break;
                    }
                }
            }
        }
        for i in ended.into_iter().rev() {
            conns.swap_remove(i);
            shared.closed.fetch_add(1, Ordering::Relaxed);
        }
        if fds[0].revents != 0 {
            while let Ok((conn, _)) = listener.accept() {
                if conn.set_nonblocking(true).is_ok() {
                    conns.push(conn);
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Opens `n` MPTCP connections to `addr` one after the other, at most `per_second` a second,
/// each sending one byte; returns them (open) and how long that took.
///
/// # Errors
/// When a connection fails.
pub fn open(addr: SocketAddr, n: u32, per_second: f64) -> io::Result<(Vec<TcpStream>, Duration)> {
    let began = Instant::now();
    let mut held = Vec::new();
    for i in 0..n {
        let due = began + Duration::from_secs_f64(f64::from(i) / per_second);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let mut conn = endpoints::connect_quietly(addr, CONNECT_TIMEOUT)?;
        conn.write_all(b"s")?;
        held.push(conn);
    }
    Ok((held, began.elapsed()))
}

/// One MPTCP connection that sends `chunk` bytes every `period` until told to be quiet.
pub struct Trickle {
    local: SocketAddr,
    quiet: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    worker: Option<JoinHandle<io::Result<TcpStream>>>,
    /// The connection once the sending thread has handed it back: open until dropped.
    held: Option<TcpStream>,
}

impl Trickle {
    /// Connects to `addr` and starts sending.
    ///
    /// # Errors
    /// When it cannot connect.
    pub fn connect(addr: SocketAddr, chunk: usize, period: Duration) -> io::Result<Trickle> {
        let mut conn = endpoints::connect_quietly(addr, CONNECT_TIMEOUT)?;
        let local = conn.local_addr()?;
        let quiet = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let worker = {
            let (quiet, sent) = (Arc::clone(&quiet), Arc::clone(&sent));
            let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
            thread::spawn(move || {
                while !quiet.load(Ordering::Relaxed) {
                    conn.write_all(&data)?;
                    sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    thread::sleep(period);
                }
                Ok(conn)
            })
        };
        Ok(Trickle {
            local,
            quiet,
            sent,
            worker: Some(worker),
            held: None,
        })
    }

    /// Its address and port.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Bytes sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending (the connection stays open until dropped); returns the bytes sent.
    ///
    /// # Errors
    /// When a write failed while it was sending.
    pub fn quiet(&mut self) -> io::Result<u64> {
        self.quiet.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let conn = worker
                .join()
                .map_err(|_| io::Error::other("the sending thread panicked"))??;
            self.held = Some(conn);
        }
        Ok(self.sent())
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.quiet.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// `storm server`: a [`HoldingServer`] that answers `count` lines until `input` ends.
///
/// # Errors
/// When it cannot listen or `input` fails.
pub fn serve_command(addr: SocketAddr, input: impl BufRead) -> io::Result<()> {
    let server = HoldingServer::start(addr)?;
    say(&format!("LISTENING {}", server.local_addr()));
    for line in input.lines() {
        match line?.trim() {
            "count" => {
                let c = server.counts();
                say(&format!("ACCEPTED {} {}", c.accepted, c.bytes));
            }
            "" => {}
            other => say(&format!("ERR unknown command {other:?}")),
        }
    }
    Ok(())
}

/// `storm open`: [`open`], `OPENED n secs`, then holds the connections until `input` ends.
///
/// # Errors
/// When a connection fails.
pub fn open_command(
    addr: SocketAddr,
    n: u32,
    per_second: f64,
    input: impl BufRead,
) -> io::Result<()> {
    let (held, took) = open(addr, n, per_second)?;
    say(&format!("OPENED {} {:.2}", held.len(), took.as_secs_f64()));
    for line in input.lines() {
        line?;
    }
    drop(held);
    Ok(())
}

/// `storm genuine`: a [`Trickle`] of 1000 bytes every 2 ms that obeys `quiet` and `close`.
///
/// # Errors
/// When it cannot connect or a write fails.
pub fn genuine_command(addr: SocketAddr, input: impl BufRead) -> io::Result<()> {
    let mut trickle = Trickle::connect(addr, TRICKLE_BYTES, TRICKLE_PERIOD)?;
    say(&format!("CONNECTED {}", trickle.local_addr()));
    for line in input.lines() {
        match line?.trim() {
            "quiet" => {
                let sent = trickle.quiet()?;
                say(&format!("QUIET {sent}"));
            }
            "close" => break,
            "" => {}
            other => say(&format!("ERR unknown command {other:?}")),
        }
    }
    Ok(())
}
