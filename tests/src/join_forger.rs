//! Handle on `mptcp-peer forge-join` (`mptcp_lab::forge_join`), the MP_JOIN forger running in
//! the client namespace (AF_PACKET sockets).
//!
//! Start it **before** the client connects: it learns both keys of the connection by sniffing
//! the MP_CAPABLE third ACK, like the ADD_ADDR forger. It then sends, on request:
//!
//! - [`JoinForger::syn_unknown_token`]: SYNs with MP_JOIN whose token names no connection (a
//!   blind join);
//! - [`JoinForger::join`]: whole join handshakes with the server's right token. The forger sends
//!   the SYN from an address the client kernel does not own ([`FORGER_ADDR`]), sniffs the
//!   server's SYN/ACK on the wire and answers with a third ACK whose 160-bit HMAC is random
//!   ([`AckHmac::Bad`]) or right ([`AckHmac::Good`], the positive control, after which it resets
//!   the subflow it opened). A wrong third-ACK HMAC reaches the kernel's HMAC check only
//!   because the SYN left a pending join request behind.
//!
//! The lab must route the server's answers to [`FORGER_ADDR`] back to the client's interface:
//! see [`crate::join_scenario::prepare_lab`].

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use crate::{
    error::{LabError, Result},
    forger,
    lab::LabPath,
    netns::Netns,
    proc::Proc,
};

/// Source address of the forged joins: inside the client's path-2 subnet, owned by nobody.
pub const FORGER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 66);

pub use mptcp_lab::forge_join::AckHmac;

/// What one forger command sent, from its `SENT ...` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinInjection {
    /// Handshakes (or blind SYNs) asked for.
    pub requested: u32,
    /// SYNs with MP_JOIN sent.
    pub syns: u32,
    /// SYN/ACKs with MP_JOIN sniffed in answer (join handshakes only).
    pub synacks: u32,
    /// Of those, SYN/ACKs whose 64-bit HMAC the forger could verify with the sniffed keys.
    pub synack_hmac_ok: u32,
    /// Third ACKs sent.
    pub acks: u32,
    /// RSTs sent (after a good third ACK).
    pub rsts: u32,
    /// The whole line.
    pub detail: String,
}

impl JoinInjection {
    /// Parses `SENT n=.. kind=.. [syns=..] ...` (fields it does not know are ignored).
    fn parse(line: &str) -> Option<JoinInjection> {
        let rest = line.strip_prefix("SENT ")?;
        let mut out = JoinInjection {
            detail: line.to_owned(),
            ..JoinInjection::default()
        };
        let mut blind = false;
        for word in rest.split_whitespace() {
            let (key, value) = word.split_once('=')?;
            let number = || value.parse::<u32>().ok();
            match key {
                "n" => out.requested = number()?,
                "kind" => blind = value == "syn-unknown-token",
                "syns" => out.syns = number()?,
                "synacks" => out.synacks = number()?,
                "synack_hmac_ok" => out.synack_hmac_ok = number()?,
                "acks" => out.acks = number()?,
                "rsts" => out.rsts = number()?,
                _ => {}
            }
        }
        if blind {
            out.syns = out.requested;
        }
        Some(out)
    }
}

/// The running forger.
pub struct JoinForger {
    proc: Proc,
}

impl JoinForger {
    /// Starts the forger in `ns`, the client namespace. It sniffs every interface there for the
    /// MP_CAPABLE handshake of `client` -> `server`, and sends its frames out of `path`'s client
    /// interface (from [`FORGER_ADDR`], to the server's MAC on that path).
    ///
    /// # Errors
    /// When the forger does not start.
    pub fn start(
        ns: &Netns,
        peer_bin: &Path,
        path: &LabPath,
        client: Ipv4Addr,
        server: SocketAddrV4,
    ) -> Result<JoinForger> {
        let args = vec![
            "forge-join".into(),
            "--tx-iface".into(),
            path.client_iface.into(),
            "--src".into(),
            FORGER_ADDR.to_string(),
            "--src-mac".into(),
            path.client_mac.into(),
            "--dst-mac".into(),
            path.server_mac.into(),
        ];
        let proc = forger::spawn(ns, "MP_JOIN forger", peer_bin, args, client, server)?;
        Ok(JoinForger { proc })
    }

    /// What the forger has learned (`STATE keys=yes token_a=.. token_b=..`).
    ///
    /// # Errors
    /// When the forger does not answer.
    pub fn state(&mut self) -> Result<String> {
        forger::state(&mut self.proc)
    }

    /// Sends `count` SYNs with MP_JOIN and random tokens (none of the connection's two).
    ///
    /// # Errors
    /// When the forger reports an error.
    pub fn syn_unknown_token(&mut self, count: u32) -> Result<JoinInjection> {
        self.command(&format!("syn-unknown {count}"), Duration::from_secs(10))
    }

    /// Runs `count` join handshakes with the right token and a `hmac` third ACK.
    ///
    /// # Errors
    /// When the forger reports an error (e.g. the keys were not sniffed).
    pub fn join(&mut self, hmac: AckHmac, count: u32) -> Result<JoinInjection> {
        // Up to 3 s per handshake for the SYN/ACK.
        let timeout = Duration::from_secs(10 + 4 * u64::from(count));
        self.command(&format!("join {} {count}", hmac.word()), timeout)
    }

    fn command(&mut self, request: &str, timeout: Duration) -> Result<JoinInjection> {
        self.proc.send_line(request)?;
        let line = self
            .proc
            .wait_for_line(&format!("an answer to `{request}`"), timeout, |l| {
                l.starts_with("SENT ") || l.starts_with("ERR ")
            })?;
        JoinInjection::parse(&line).ok_or_else(|| LabError::Unexpected {
            process: self.proc.name().to_owned(),
            request: request.to_owned(),
            line,
        })
    }

    /// Tells the forger to quit and waits for it (it is killed if it does not).
    pub fn quit(self) {
        forger::quit(self.proc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let blind = JoinInjection::parse(
            "SENT n=5 kind=syn-unknown-token keys_known=yes tokens=22e1ad19,8c2bc885",
        )
        .unwrap();
        assert_eq!((blind.requested, blind.syns, blind.acks), (5, 5, 0));
        let join = JoinInjection::parse(
            "SENT n=3 kind=join-bad syns=3 synacks=2 synack_hmac_ok=2 acks=2 rsts=0 \
             token=afa61a76 ports=21909,42342,21605",
        )
        .unwrap();
        assert_eq!(
            (join.requested, join.syns, join.synacks, join.acks),
            (3, 3, 2, 2)
        );
        assert_eq!(join.synack_hmac_ok, 2);
        assert!(JoinInjection::parse("ERR keys unknown").is_none());
        assert!(JoinInjection::parse("SENT n=x").is_none());
    }
}
