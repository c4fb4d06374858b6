//! A storm of real MPTCP connections for the loader-level exhaustion test
//! (`mptcp-peer storm`, `mptcp_lab::storm`): a server that accepts and holds every connection, a client that
//! opens `n` connections and holds them, one genuine connection that keeps sending, and a
//! trafgen flood of MP_JOIN SYNs with random tokens.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    error::{LabError, Result},
    flood::trafgen_args,
    lab::PATH1,
    netns::Netns,
    proc::Proc,
};
use mptcp_profiles::{self as profiles, Connection, Kind, Settings};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `mptcp-peer storm <args>` in `ns`.
fn spawn(ns: &Netns, peer_bin: &Path, name: &str, args: &[String]) -> Result<Proc> {
    let mut all = vec!["storm".to_owned()];
    all.extend_from_slice(args);
    ns.spawn(name, peer_bin, &all)
}

fn unexpected(proc: &Proc, request: &str, line: &str) -> LabError {
    LabError::Unexpected {
        process: proc.name().to_owned(),
        request: request.to_owned(),
        line: line.to_owned(),
    }
}

/// A server that accepts every connection on its port, holds it and drains its data.
pub struct HoldingServer {
    proc: Proc,
}

impl HoldingServer {
    /// Starts it in `ns` and waits until it listens.
    ///
    /// # Errors
    /// When it does not start listening.
    pub fn start(ns: &Netns, peer_bin: &Path, addr: SocketAddrV4) -> Result<HoldingServer> {
        let mut proc = spawn(
            ns,
            peer_bin,
            &format!("holding server {addr}"),
            &["server".into(), addr.to_string()],
        )?;
        proc.wait_for_prefix("LISTENING", START_TIMEOUT)?;
        Ok(HoldingServer { proc })
    }

    /// Connections accepted so far.
    ///
    /// # Errors
    /// When it does not answer.
    pub fn accepted(&mut self) -> Result<u64> {
        self.proc.send_line("count")?;
        let line = self.proc.wait_for_prefix("ACCEPTED", START_TIMEOUT)?;
        line.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| unexpected(&self.proc, "count", &line))
    }
}

/// `n` connections opened one after the other and held open (until dropped).
pub struct Storm {
    proc: Proc,
}

impl Storm {
    /// Opens `n` connections to `server` from `ns`, at most `per_second` a second, and waits
    /// until all are open; returns the storm and how long opening took.
    ///
    /// # Errors
    /// When the client fails or does not finish within `timeout`.
    pub fn open(
        ns: &Netns,
        peer_bin: &Path,
        server: SocketAddrV4,
        n: u32,
        per_second: u32,
        timeout: Duration,
    ) -> Result<(Storm, Duration)> {
        let mut proc = spawn(
            ns,
            peer_bin,
            &format!("storm of {n} connections"),
            &[
                "open".into(),
                server.to_string(),
                n.to_string(),
                per_second.to_string(),
            ],
        )?;
        let line = proc.wait_for_prefix("OPENED", timeout)?;
        let mut words = line.split_whitespace();
        let opened = words.next().and_then(|w| w.parse::<u32>().ok());
        let seconds = words.next().and_then(|w| w.parse::<f64>().ok());
        match (opened, seconds) {
            (Some(opened), Some(seconds)) if opened == n => {
                Ok((Storm { proc }, Duration::from_secs_f64(seconds)))
            }
            _ => Err(unexpected(&proc, "OPENED", &line)),
        }
    }

    /// Closes every connection and waits for the client to exit.
    ///
    /// # Errors
    /// When it does not exit in time.
    pub fn close(mut self) -> Result<()> {
        self.proc.close_stdin();
        self.proc.wait_exit(Duration::from_secs(30)).map(|_| ())
    }
}

/// One connection that keeps sending 1000 bytes every 2 ms until told to be quiet.
pub struct ActiveClient {
    proc: Proc,
    local: SocketAddr,
}

impl ActiveClient {
    /// Connects from `ns` to `server` and starts sending.
    ///
    /// # Errors
    /// When it does not connect.
    pub fn connect(ns: &Netns, peer_bin: &Path, server: SocketAddrV4) -> Result<ActiveClient> {
        let mut proc = spawn(
            ns,
            peer_bin,
            "active client",
            &["genuine".into(), server.to_string()],
        )?;
        let line = proc.wait_for_prefix("CONNECTED", START_TIMEOUT)?;
        let local = line
            .parse()
            .map_err(|_| unexpected(&proc, "CONNECTED", &line))?;
        Ok(ActiveClient { proc, local })
    }

    /// Its address and port.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops sending; returns the bytes sent.
    ///
    /// # Errors
    /// When it does not answer.
    pub fn quiet(&mut self) -> Result<u64> {
        self.proc.send_line("quiet")?;
        let line = self.proc.wait_for_prefix("QUIET", START_TIMEOUT)?;
        line.parse()
            .map_err(|_| unexpected(&self.proc, "quiet", &line))
    }

    /// Closes the connection and waits for the client to exit.
    ///
    /// # Errors
    /// When it does not exit in time.
    pub fn close(mut self) -> Result<()> {
        self.proc.send_line("close")?;
        self.proc.wait_exit(Duration::from_secs(30)).map(|_| ())
    }
}

/// Writes the trafgen configuration of MP_JOIN SYNs with random tokens (and random source
/// ports, nonces, ISNs) from the client's path-1 address to `server`, and returns its path.
///
/// # Errors
/// When the file cannot be written.
pub fn write_join_flood(dir: &Path, server: SocketAddrV4) -> Result<PathBuf> {
    let conn = Connection {
        src: SocketAddr::V4(SocketAddrV4::new(PATH1.client_addr, 40_000)),
        dst: SocketAddr::V4(server),
        src_mac: profiles::parse_mac(PATH1.client_mac).expect("lab MAC"),
        dst_mac: profiles::parse_mac(PATH1.server_mac).expect("lab MAC"),
        seq: 1,
        ack: 0,
        window: 64_240,
        timestamps: Some((1, 0)),
        key_a: [1; 8],
        key_b: [2; 8],
    };
    let text = profiles::trafgen_config(Kind::JoinSynRandomToken, &conn, &Settings::default())
        .map_err(|e| LabError::parse("the join flood profile", e.to_string()))?;
    let path = dir.join("join_syn_random_token.cfg");
    std::fs::write(&path, text).map_err(LabError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// Sends `count` packets of the trafgen configuration `cfg` out of the client's path-1
/// interface at `rate` packets per second, and waits until trafgen is done.
///
/// # Errors
/// When trafgen fails or does not finish within `timeout`.
pub fn trafgen(client: &Netns, cfg: &Path, rate: u32, count: u64, timeout: Duration) -> Result<()> {
    let args = trafgen_args(cfg, PATH1.client_iface, rate, count);
    let mut proc = client.spawn("trafgen", "trafgen", &args)?;
    let status = proc.wait_exit(timeout)?;
    if status.success() {
        Ok(())
    } else {
        Err(unexpected(&proc, "send the flood", &status.to_string()))
    }
}

/// The resident set size of process `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
///
/// # Errors
/// When the file cannot be read or has no `VmRSS` line.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(LabError::io(format!("reading {path}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LabError::parse(path, "no VmRSS line"))
}
