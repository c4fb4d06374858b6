//! Installing what a peer learned: the connection entry and subflow the peer's fast path made
//! from the MP_CAPABLE, created here as this host's fast path would have created them from the
//! same segment, then the very install path of this host's own key events
//! ([`install_event`]: midstates, both tokens).

use mptcp_common::maps::{ConnState, FlowRef, ROLE_A, ROLE_B};

use super::record::SharedConn;
use crate::{
    conn::install::{install_event, InstallOutcome},
    conn::keys::token_and_idsn,
    kernel::error::KernelError,
    kernel::store::FirewallMaps,
};

/// What applying one peer's connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The connection was new here: created and installed.
    Installed,
    /// This host already knew it with the same keys (its own fast path saw it too, or the
    /// record came twice); its midstates and tokens were re-asserted.
    AlreadyKnown,
    /// This host tracks a connection with the same Key-A but another Key-B: left as it is (the
    /// fast path's own sighting wins; counted as a conflict).
    KeysDiffer,
    /// The LRU evicted the new entry before it was installed.
    Lost,
}

/// Creates the connection (and its learning subflow) unless it exists, then installs it.
/// `now_s` is CLOCK_MONOTONIC seconds (the maps' clock), `now_ns` the same in ns.
///
/// # Errors
/// When a map cannot be read or written.
pub fn apply_learned(
    maps: &mut impl FirewallMaps,
    conn: &SharedConn,
    now_s: u32,
    now_ns: u64,
) -> Result<Applied, KernelError> {
    let id = ConnState::id_of(&conn.key_a);
    let created = maps.insert_new_conn(
        id,
        &ConnState {
            key_a: conn.key_a,
            key_b: conn.key_b,
            subflows: 1,
            learned_s: now_s,
            token_a: token_and_idsn(&conn.key_a).0,
            token_b: token_and_idsn(&conn.key_b).0,
            ..ConnState::default()
        },
    )?;
    if created {
        let (flow_key, swapped) = conn.flow.canonical();
        let flow = FlowRef {
            conn_id: id,
            last_seen_s: now_s,
            src_role: if swapped { ROLE_B } else { ROLE_A },
            ..FlowRef::default()
        };
        // A subflow entry that exists already belongs to whatever this host's fast path saw
        // on that 4-tuple: left alone.
        maps.insert_new_flow(&flow_key, &flow)?;
    }
    Ok(match install_event(maps, &conn.as_event(now_ns))? {
        InstallOutcome::Installed { .. } if created => Applied::Installed,
        InstallOutcome::Installed { .. } | InstallOutcome::AlreadyInstalled { .. } => {
            Applied::AlreadyKnown
        }
        InstallOutcome::KeysDiffer => Applied::KeysDiffer,
        InstallOutcome::NoConnection => Applied::Lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conn::install::token_entries, kernel::store::MemoryMaps};
    use mptcp_common::maps::{FlowKey, FAMILY_V4, READY_A, READY_B};

    fn shared(key_a: [u8; 8], key_b: [u8; 8]) -> SharedConn {
        let mut flow = FlowKey {
            family: FAMILY_V4,
            sport: 40_000u16.to_be_bytes(),
            dport: 10_000u16.to_be_bytes(),
            ..FlowKey::default()
        };
        // A's address is the larger one: the canonical key is reversed.
        flow.saddr[..4].copy_from_slice(&[198, 18, 9, 1]);
        flow.daddr[..4].copy_from_slice(&[198, 18, 3, 2]);
        SharedConn {
            key_a,
            key_b,
            flow,
            origin: "peer".into(),
            seen_unix_ns: 1,
        }
    }

    #[test]
    fn a_peer_connection_is_installed_as_if_learned_here() {
        let mut maps = MemoryMaps::default();
        let c = shared([1; 8], [2; 8]);
        assert_eq!(
            apply_learned(&mut maps, &c, 50, 50_000_000_000).unwrap(),
            Applied::Installed
        );
        let id = ConnState::id_of(&[1; 8]);
        let state = maps.conns[&id];
        assert_eq!(state.ready, READY_A | READY_B);
        assert_eq!(
            state.mid[usize::from(ROLE_A)],
            mptcp_common::hmac::midstate(&[1; 8], &[2; 8])
        );
        assert_eq!((state.subflows, state.learned_s), (1, 50));
        for (token, entry) in token_entries(&[1; 8], &[2; 8]) {
            assert_eq!(maps.tokens[&token], entry);
        }
        let (key, swapped) = c.flow.canonical();
        assert!(swapped);
        let flow = maps.flows[&key];
        assert_eq!((flow.conn_id, flow.src_role, flow.flags), (id, ROLE_B, 0));
        // The same record again (a catch-up after the stream delivered it): nothing new.
        assert_eq!(
            apply_learned(&mut maps, &c, 60, 60_000_000_000).unwrap(),
            Applied::AlreadyKnown
        );
        assert_eq!(maps.conns[&id].learned_s, 50);
    }

    #[test]
    fn what_this_host_learned_itself_wins() {
        let mut maps = MemoryMaps::default();
        let id = ConnState::id_of(&[1; 8]);
        maps.conns.insert(
            id,
            ConnState {
                key_a: [1; 8],
                key_b: [3; 8],
                subflows: 1,
                ..ConnState::default()
            },
        );
        assert_eq!(
            apply_learned(&mut maps, &shared([1; 8], [2; 8]), 5, 5).unwrap(),
            Applied::KeysDiffer
        );
        assert_eq!(maps.conns[&id].key_b, [3; 8]);
        assert_eq!(maps.conns[&id].ready, 0);
        assert!(maps.flows.is_empty() && maps.tokens.is_empty());
    }
}
