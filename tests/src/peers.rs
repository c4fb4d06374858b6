//! Handles on the `mptcp-peer` server and client running inside the lab's namespaces.

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::{
    error::{LabError, Result},
    netns::Netns,
    proc::Proc,
};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The MPTCP server: accepts one connection and reads it to the end.
pub struct PeerServer {
    proc: Proc,
    addr: SocketAddr,
}

impl PeerServer {
    /// Starts `mptcp-peer server <addr>` in `ns` and waits until it listens.
    ///
    /// # Errors
    /// When it does not start listening.
    pub fn start(ns: &Netns, peer_bin: &Path, addr: SocketAddr) -> Result<PeerServer> {
        let mut proc = ns.spawn(
            "mptcp server",
            peer_bin,
            &["server".to_owned(), addr.to_string()],
        )?;
        proc.wait_for_prefix("LISTENING", START_TIMEOUT)?;
        Ok(PeerServer { proc, addr })
    }

    /// The listening address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the connection to end and returns the number of bytes received.
    ///
    /// # Errors
    /// When the server does not report in time or fails.
    pub fn finish(mut self, timeout: Duration) -> Result<u64> {
        let n = self.proc.wait_for_prefix("RECEIVED", timeout)?;
        let status = self.proc.wait_exit(Duration::from_secs(5))?;
        if !status.success() {
            return Err(unexpected(&self.proc, "exit", &status.to_string()));
        }
        n.parse()
            .map_err(|_| unexpected(&self.proc, "RECEIVED", &n))
    }
}

/// The MPTCP client: connects, sends, holds the connection open, closes.
pub struct PeerClient {
    proc: Proc,
    local: SocketAddr,
}

/// What the client reported at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReport {
    /// Bytes written.
    pub sent: u64,
    /// The `MPTCP ...` line from `MPTCP_INFO` just before closing, e.g.
    /// `subflows=1 add_addr_signal=1 add_addr_accepted=0` (`subflows` counts the *additional*
    /// subflows), or `fallback`.
    pub mptcp_info: String,
}

impl PeerClient {
    /// Starts `mptcp-peer client` in `ns` and waits until it is connected. It then sends
    /// `bytes` and holds the connection for at most `hold` (see [`PeerClient::release`]).
    ///
    /// # Errors
    /// When it cannot connect.
    pub fn start(
        ns: &Netns,
        peer_bin: &Path,
        server: SocketAddr,
        bytes: u64,
        hold: Duration,
    ) -> Result<PeerClient> {
        let args = [
            "client".to_owned(),
            server.to_string(),
            bytes.to_string(),
            hold.as_millis().to_string(),
        ];
        let mut proc = ns.spawn("mptcp client", peer_bin, &args)?;
        let local = proc.wait_for_prefix("CONNECTED", START_TIMEOUT)?;
        let local = local
            .parse()
            .map_err(|_| unexpected(&proc, "CONNECTED", &local))?;
        Ok(PeerClient { proc, local })
    }

    /// The client's address of the initial subflow (198.18.1.1:<ephemeral>).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until all bytes have been written (not necessarily acknowledged).
    ///
    /// # Errors
    /// When the client does not report in time.
    pub fn wait_sent(&mut self, timeout: Duration) -> Result<u64> {
        let n = self.proc.wait_for_prefix("SENT", timeout)?;
        n.parse().map_err(|_| unexpected(&self.proc, "SENT", &n))
    }

    /// Ends the hold early: the client closes now.
    ///
    /// # Errors
    /// When the client's stdin is gone.
    pub fn release(&mut self) -> Result<()> {
        self.proc.send_line("close")
    }

    /// Waits for the client to close and exit.
    ///
    /// # Errors
    /// When it does not close cleanly in time.
    pub fn finish(mut self, sent: u64, timeout: Duration) -> Result<ClientReport> {
        let info = self.proc.wait_for_prefix("MPTCP", timeout)?;
        self.proc.wait_for_prefix("CLOSED", timeout)?;
        let status = self.proc.wait_exit(Duration::from_secs(5))?;
        if !status.success() {
            return Err(unexpected(&self.proc, "exit", &status.to_string()));
        }
        Ok(ClientReport {
            sent,
            mptcp_info: info,
        })
    }
}

fn unexpected(proc: &Proc, request: &str, line: &str) -> LabError {
    LabError::Unexpected {
        process: proc.name().to_owned(),
        request: request.to_owned(),
        line: format!("{line}\n{}", proc.log()),
    }
}
