//! Kernel-confirmed ends of subflows the fast path marked closing.
//!
//! The fast path never removes a subflow on a FIN or RST it did not see the host send: an RST
//! far outside the window, or a FIN on a half-closed subflow, changes nothing in the hosts'
//! stacks, and forgetting the subflow on it would let the next forged ADD_ADDR pass. It marks
//! the subflow closing instead ([`FlowRef::closing`]). Where the firewall runs on an endpoint,
//! the host's own kernel knows for sure: this check asks it (`sock_diag`) whether a TCP socket
//! with the subflow's exact 4-tuple still exists, and removes the subflow only when it does not
//! (or the socket is in TIME_WAIT or CLOSE), and the connection with its last subflow. Subflows
//! with no local address (the firewall forwards them, as a gateway) are left to the idle sweep
//! and the LRU: nothing on this host can confirm their end.
//!
//! [`plan_closed`] decides on a snapshot and does no I/O; [`apply_closed`] re-reads each entry,
//! asks [`SocketTable`] and removes.

use std::{collections::HashSet, io};

use mptcp_common::maps::{ConnState, FlowKey, FlowRef, FAMILY_V4};

use crate::{kernel::error::KernelError, kernel::store::FirewallMaps};

/// How often the check runs (seconds).
pub const CLOSED_CHECK_INTERVAL_S: u64 = 10;

/// What the host's kernel says about a subflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubflowSocket {
    /// Neither address is this host's: the kernel cannot tell (a forwarded subflow).
    NotLocal,
    /// A TCP socket with this 4-tuple is open.
    Open,
    /// No such socket, or one in TIME_WAIT or CLOSE: the subflow is over.
    Gone,
}

/// The host's TCP sockets, as far as the check needs them.
pub trait SocketTable {
    /// Whether the subflow (canonical orientation) is still open on this host.
    ///
    /// # Errors
    /// When the kernel cannot be asked.
    fn subflow(&self, key: &FlowKey) -> io::Result<SubflowSocket>;
}

/// Subflows to ask about: marked closing, of a connection still tracked. Pure.
#[must_use]
pub fn plan_closed(conns: &[(u64, ConnState)], flows: &[(FlowKey, FlowRef)]) -> Vec<FlowKey> {
    let tracked: HashSet<u64> = conns.iter().map(|(id, _)| *id).collect();
    flows
        .iter()
        .filter(|(_, flow)| flow.closing != 0 && tracked.contains(&flow.conn_id))
        .map(|(key, _)| *key)
        .collect()
}

/// What one check removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosedOutcome {
    /// Subflows the kernel confirmed closed, removed.
    pub subflows_closed: u64,
    /// Connections removed with their last subflow (and their tokens).
    pub conns_closed: u64,
    /// Subflows marked closing that the kernel cannot confirm (no local address).
    pub not_local: u64,
    /// Key-A of each connection removed: ends the host's kernel confirmed, which a shared store
    /// tells the other boxes.
    pub ended_keys_a: Vec<[u8; 8]>,
}

/// Asks the kernel about each planned subflow; removes the ones that are over, and each
/// connection with its last subflow (its tokens too, those that name it). The connection's
/// subflow count is decremented by read-modify-write: the fast path only raises it when a join
/// validates, so a lost race leaves it one too high, which delays the connection's removal to
/// this check or the idle sweep, never hastens it.
///
/// # Errors
/// The first map operation that failed (what was removed until then stays removed, and is in
/// `outcome`).
pub fn apply_closed(
    maps: &mut impl FirewallMaps,
    sockets: &impl SocketTable,
    planned: &[FlowKey],
    outcome: &mut ClosedOutcome,
) -> Result<(), KernelError> {
    for key in planned {
        let Some(flow) = maps.flow(key)? else {
            continue;
        };
        if flow.closing == 0 {
            continue;
        }
        match sockets.subflow(key) {
            Ok(SubflowSocket::Open) => continue,
            Ok(SubflowSocket::NotLocal) => {
                outcome.not_local += 1;
                continue;
            }
            Ok(SubflowSocket::Gone) => {}
            Err(e) => {
                log::debug!("sock_diag lookup failed, the subflow stays: {e}");
                continue;
            }
        }
        if !maps.remove_flow(key)? {
            continue;
        }
        outcome.subflows_closed += 1;
        let Some(mut conn) = maps.conn(flow.conn_id)? else {
            continue;
        };
        conn.subflows = conn.subflows.saturating_sub(1);
        if conn.subflows > 0 {
            maps.update_existing_conn(flow.conn_id, &conn)?;
            continue;
        }
        if maps.remove_conn(flow.conn_id)? {
            outcome.conns_closed += 1;
            outcome.ended_keys_a.push(conn.key_a);
        }
        for token in [conn.token_a, conn.token_b] {
            if maps
                .token(&token)?
                .is_some_and(|t| u64::from_ne_bytes(t.conn_id) == flow.conn_id)
            {
                maps.remove_token(&token)?;
            }
        }
    }
    Ok(())
}

/// The host's sockets in the loader's network namespace, through `sock_diag`.
pub struct KernelSockets {
    local: Vec<(u8, [u8; 16])>,
}

impl KernelSockets {
    /// Reads this namespace's local addresses (once per check: addresses come and go).
    ///
    /// # Errors
    /// When `getifaddrs` fails.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            local: crate::kernel::netlink::local_addresses()?,
        })
    }

    fn is_local(&self, family: u8, addr: &[u8; 16]) -> bool {
        self.local.iter().any(|(f, a)| *f == family && a == addr)
    }
}

impl SocketTable for KernelSockets {
    fn subflow(&self, key: &FlowKey) -> io::Result<SubflowSocket> {
        let ends = [
            (&key.saddr, key.sport, &key.daddr, key.dport),
            (&key.daddr, key.dport, &key.saddr, key.sport),
        ];
        let mut local = false;
        for (addr, port, peer, peer_port) in ends {
            if !self.is_local(key.family, addr) {
                continue;
            }
            local = true;
            let v4 = key.family == FAMILY_V4;
            let state = crate::kernel::netlink::tcp_socket_state(v4, addr, port, peer, peer_port)?;
            if state.is_some_and(|s| !matches!(s, TCP_TIME_WAIT | TCP_CLOSE | TCP_LISTEN)) {
                return Ok(SubflowSocket::Open);
            }
        }
        Ok(if local {
            SubflowSocket::Gone
        } else {
            SubflowSocket::NotLocal
        })
    }
}

/// TCP states (`include/net/tcp_states.h`) that mean the subflow is over. A lookup without an
/// established socket falls back to the listener, which is no subflow either.
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::store::MemoryMaps;
    use mptcp_common::maps::{TokenRef, RST_SEEN};
    use std::collections::HashMap;

    struct FakeSockets(HashMap<FlowKey, SubflowSocket>);

    impl SocketTable for FakeSockets {
        fn subflow(&self, key: &FlowKey) -> io::Result<SubflowSocket> {
            Ok(self.0.get(key).copied().unwrap_or(SubflowSocket::NotLocal))
        }
    }

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey {
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        k.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        k.sport = port.to_be_bytes();
        k.dport = 443u16.to_be_bytes();
        k
    }

    fn flow(conn_id: u64, closing: u8) -> FlowRef {
        FlowRef {
            conn_id,
            closing,
            ..FlowRef::default()
        }
    }

    fn conn(subflows: u32) -> ConnState {
        ConnState {
            subflows,
            token_a: [1, 1, 1, 1],
            token_b: [2, 2, 2, 2],
            ..ConnState::default()
        }
    }

    #[test]
    fn only_closing_subflows_of_tracked_connections_are_asked_about() {
        let conns = [(7, conn(2))];
        let flows = [
            (key(1), flow(7, RST_SEEN)),
            (key(2), flow(7, 0)),
            (key(3), flow(8, RST_SEEN)), // its connection is gone: the idle sweep's
        ];
        assert_eq!(plan_closed(&conns, &flows), vec![key(1)]);
    }

    #[test]
    fn the_kernel_decides_and_the_last_subflow_takes_its_connection() {
        let mut maps = MemoryMaps::default();
        maps.conns.insert(7, conn(2));
        maps.flows.insert(key(1), flow(7, RST_SEEN));
        maps.flows.insert(key(2), flow(7, RST_SEEN));
        maps.flows.insert(key(3), flow(7, RST_SEEN));
        for (token, role) in [([1, 1, 1, 1], 0), ([2, 2, 2, 2], 1)] {
            let conn_id = 7u64.to_ne_bytes();
            maps.tokens.insert(token, TokenRef { conn_id, role });
        }
        // A token of another connection with the same value is not touched (after a collision).
        let sockets = FakeSockets(HashMap::from([
            (key(1), SubflowSocket::Gone),
            (key(2), SubflowSocket::Open),
            (key(3), SubflowSocket::NotLocal),
        ]));
        let mut outcome = ClosedOutcome::default();
        let planned = [key(1), key(2), key(3)];
        apply_closed(&mut maps, &sockets, &planned, &mut outcome).unwrap();
        assert_eq!(
            outcome,
            ClosedOutcome {
                subflows_closed: 1,
                conns_closed: 0,
                not_local: 1,
                ended_keys_a: Vec::new(),
            }
        );
        assert_eq!(maps.conns[&7].subflows, 1);
        // The open one closes too: the connection and its tokens go.
        let sockets = FakeSockets(HashMap::from([(key(2), SubflowSocket::Gone)]));
        let mut outcome = ClosedOutcome::default();
        apply_closed(&mut maps, &sockets, &[key(2)], &mut outcome).unwrap();
        assert_eq!((outcome.subflows_closed, outcome.conns_closed), (1, 1));
        assert_eq!(outcome.ended_keys_a, [conn(2).key_a]);
        assert!(maps.conns.is_empty() && maps.tokens.is_empty());
        assert_eq!(maps.flows.len(), 1, "the forwarded one stays");
    }

    #[test]
    fn a_token_another_connection_holds_stays() {
        let mut maps = MemoryMaps::default();
        maps.conns.insert(7, conn(1));
        maps.flows.insert(key(1), flow(7, RST_SEEN));
        let other = TokenRef {
            conn_id: 9u64.to_ne_bytes(),
            role: 0,
        };
        maps.tokens.insert([1, 1, 1, 1], other);
        let sockets = FakeSockets(HashMap::from([(key(1), SubflowSocket::Gone)]));
        let mut outcome = ClosedOutcome::default();
        apply_closed(&mut maps, &sockets, &[key(1)], &mut outcome).unwrap();
        assert_eq!(maps.tokens[&[1, 1, 1, 1]], other);
    }
}
