//! Handle on `mptcp-peer forge-add-addr` (`mptcp_lab::forge_add_addr`), the forger running in
//! the client namespace (AF_PACKET sockets).
//!
//! Start it **before** the client connects: it learns the connection (4-tuple, seq/ack,
//! timestamps, and the keys of the MP_CAPABLE third ACK) by sniffing both directions on the
//! client's path-1 interface. It then sends, on request, pure ACKs shaped like Linux's own
//! ADD_ADDR out of that interface with an AF_PACKET socket: right 4-tuple, seq = snd_nxt,
//! ack = rcv_nxt, IP and TCP checksums computed,
//! `NOP NOP TS` (Linux drops segments without TS on a TS connection) and a 16-byte ADD_ADDR
//! (E=0, no port) whose HMAC is either random ([`HmacKind::Bad`]) or computed from the sniffed
//! keys ([`HmacKind::Good`], the positive control: same framing, the kernel must accept it).
//!
//! It also sends, on request, one segment meant to change what a middlebox believes about the
//! connection ([`Attack`]): a blind RST, or an MP_CAPABLE third ACK carrying other keys. Both
//! have a sequence number half the sequence space away from `snd_nxt`, outside any receive
//! window, so the server's Linux discards them and the connection lives on.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use crate::{
    error::{LabError, Result},
    netns::Netns,
    proc::Proc,
};

pub use mptcp_lab::forge_add_addr::HmacKind;

/// What one `inject` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Segments sent.
    pub sent: u32,
    /// HMAC kind.
    pub kind: HmacKind,
    /// Address ID announced.
    pub id: u8,
    /// Address announced.
    pub addr: Ipv4Addr,
    /// The forger's full report line (`SENT n=.. sport=.. seq=.. ack=.. ts=..`).
    pub detail: String,
}

/// A state-changing segment the forger sends into the live connection, from the client's side
/// of the initial subflow. Its sequence number is `snd_nxt + 2^31`: outside the server's receive
/// window, so Linux discards it (a RST silently; anything else with a duplicate ACK) before
/// looking at its options. Only a middlebox that believes it changes anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// A RST (no ACK, no options): all it needs is the 4-tuple.
    BlindRst,
    /// An MP_CAPABLE third ACK (kind 30, length 20, version 1, flags H) with 16 random key bytes
    /// instead of the connection's keys, `NOP NOP TS` in front like Linux's own.
    ForeignCapable,
}

impl Attack {
    fn command(self) -> &'static str {
        match self {
            Attack::BlindRst => "rst",
            Attack::ForeignCapable => "capable",
        }
    }
}

/// What one [`Forger::attack`] sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttackSent {
    /// Which segment.
    pub attack: Attack,
    /// Its sequence number.
    pub seq: u32,
    /// The keys of the foreign MP_CAPABLE (sender's, receiver's); `None` for the RST.
    pub keys: Option<([u8; 8], [u8; 8])>,
    /// The forger's report line (`SENT n=1 kind=.. sport=.. seq=.. ..`).
    pub detail: String,
}

/// The running forger.
pub struct Forger {
    proc: Proc,
}

impl Forger {
    /// Starts the forger in `ns` sniffing `iface` for client -> server segments of
    /// `client -> server`, and waits until it sniffs.
    ///
    /// # Errors
    /// When the forger fails to start.
    pub fn start(
        ns: &Netns,
        peer_bin: &Path,
        iface: &str,
        client: Ipv4Addr,
        server: SocketAddrV4,
    ) -> Result<Forger> {
        let proc = spawn(
            ns,
            "ADD_ADDR forger",
            peer_bin,
            vec!["forge-add-addr".into(), "--iface".into(), iface.into()],
            client,
            server,
        )?;
        Ok(Forger { proc })
    }

    /// [`Forger::start`], sniffing `iface` but sending out of `via`'s client interface to its
    /// server MAC: a segment of the sniffed subflow reaching another box (an ECMP rehash).
    ///
    /// # Errors
    /// When the forger fails to start.
    pub fn start_via(
        ns: &Netns,
        peer_bin: &Path,
        iface: &str,
        via: &crate::lab::LabPath,
        client: Ipv4Addr,
        server: SocketAddrV4,
    ) -> Result<Forger> {
        let args = [
            "forge-add-addr",
            "--iface",
            iface,
            "--tx-iface",
            via.client_iface,
            "--src-mac",
            via.client_mac,
            "--dst-mac",
            via.server_mac,
        ];
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let proc = spawn(
            ns,
            "ADD_ADDR forger (detour)",
            peer_bin,
            args,
            client,
            server,
        )?;
        Ok(Forger { proc })
    }

    /// Sends `count` forged ADD_ADDRs announcing `addr` with address ID `id`, 20 ms apart.
    /// The forger first waits until the client has been quiet for 150 ms, so the seq/ack/TS it
    /// uses are the latest.
    ///
    /// # Errors
    /// When the forger reports an error (e.g. the connection was not seen) or fails.
    pub fn inject(
        &mut self,
        kind: HmacKind,
        id: u8,
        addr: Ipv4Addr,
        count: u32,
    ) -> Result<Injection> {
        let request = format!("inject {} {id} {addr} {count}", kind.word());
        self.proc.send_line(&request)?;
        let line = self.proc.wait_for_line(
            "an answer to inject",
            Duration::from_secs(30) + Duration::from_millis(50 * u64::from(count)),
            |l| l.starts_with("SENT ") || l.starts_with("ERR "),
        )?;
        let sent = line
            .strip_prefix("SENT n=")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| LabError::Unexpected {
                process: self.proc.name().to_owned(),
                request,
                line: line.clone(),
            })?;
        Ok(Injection {
            sent,
            kind,
            id,
            addr,
            detail: line,
        })
    }

    /// Sends one state-changing segment ([`Attack`]) into the connection, once it has been quiet
    /// for 150 ms (as [`Forger::inject`]).
    ///
    /// # Errors
    /// When the forger reports an error (e.g. the connection was not seen) or fails.
    pub fn attack(&mut self, attack: Attack) -> Result<AttackSent> {
        let request = attack.command().to_owned();
        self.proc.send_line(&request)?;
        let line =
            self.proc
                .wait_for_line("an answer to an attack", Duration::from_secs(30), |l| {
                    l.starts_with("SENT ") || l.starts_with("ERR ")
                })?;
        let unexpected = || LabError::Unexpected {
            process: self.proc.name().to_owned(),
            request: request.clone(),
            line: line.clone(),
        };
        let seq = report_field(&line, "seq")
            .and_then(|v| v.parse().ok())
            .ok_or_else(unexpected)?;
        let keys = match attack {
            Attack::BlindRst => None,
            Attack::ForeignCapable => Some(
                report_key(&line, "key_a")
                    .zip(report_key(&line, "key_b"))
                    .ok_or_else(unexpected)?,
            ),
        };
        if !line.starts_with("SENT n=1 ") {
            return Err(unexpected());
        }
        Ok(AttackSent {
            attack,
            seq,
            keys,
            detail: line,
        })
    }

    /// What the forger has learned about the connection (`STATE sport=.. keys=yes ...`).
    ///
    /// # Errors
    /// When the forger does not answer.
    pub fn state(&mut self) -> Result<String> {
        state(&mut self.proc)
    }

    /// Tells the forger to quit and waits for it (it is killed if it does not).
    pub fn quit(self) {
        quit(self.proc);
    }
}

/// The value of `name=value` in a forger's report line.
fn report_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// An 8-byte key reported as 16 hex digits under `name`.
fn report_key(line: &str, name: &str) -> Option<[u8; 8]> {
    let hex = report_field(line, name)?;
    if hex.len() != 16 {
        return None;
    }
    let mut key = [0u8; 8];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

// What both forgers (`forge-add-addr`, `forge-join`) have in common: the connection named by
// `--client/--server/--port`, `READY` once sniffing, `state` answered with a `STATE` line, and
// `quit`.

/// Starts a forger in `ns` with its own `args` (the subcommand first) followed by the
/// connection `client -> server`, and waits for its `READY`.
pub(crate) fn spawn(
    ns: &Netns,
    name: &str,
    peer_bin: &Path,
    mut args: Vec<String>,
    client: Ipv4Addr,
    server: SocketAddrV4,
) -> Result<Proc> {
    args.extend([
        "--client".into(),
        client.to_string(),
        "--server".into(),
        server.ip().to_string(),
        "--port".into(),
        server.port().to_string(),
    ]);
    let mut proc = ns.spawn(name, peer_bin, &args)?;
    proc.wait_for_line("READY", Duration::from_secs(10), |l| l == "READY")?;
    Ok(proc)
}

/// Asks a forger what it has learned: its `STATE ...` line.
pub(crate) fn state(proc: &mut Proc) -> Result<String> {
    proc.send_line("state")?;
    proc.wait_for_prefix("STATE", Duration::from_secs(5))
}

/// Tells a forger to quit and waits for it (it is killed if it does not).
pub(crate) fn quit(mut proc: Proc) {
    let _ = proc.send_line("quit");
    proc.close_stdin();
    let _ = proc.wait_timeout(Duration::from_secs(5));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attack_reports() {
        let line = "SENT n=1 kind=capable sport=40000 seq=2147483748 ack=7 snd_nxt=100 \
                    key_a=0102030405060708 key_b=a1a2a3a4a5a6a7a8";
        assert_eq!(report_field(line, "seq"), Some("2147483748"));
        assert_eq!(report_field(line, "ack"), Some("7"));
        assert_eq!(report_field(line, "snd"), None);
        assert_eq!(report_key(line, "key_a"), Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(
            report_key(line, "key_b"),
            Some([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8])
        );
        assert_eq!(report_key("key_a=0102", "key_a"), None);
        assert_eq!(report_key("key_a=zz02030405060708", "key_a"), None);
    }
}
