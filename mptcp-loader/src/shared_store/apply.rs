//! Applying what a peer proved:
//! - a learned connection ([`apply_learned`]): the connection entry and subflow the peer's fast
//!   path made from the MP_CAPABLE, created here as this host's fast path would have created
//!   them from the same segment, then the very install path of this host's own key events
//!   ([`install_event`]: midstates, both tokens);
//! - a subflow a join validated ([`apply_join`]): tracked as part of its connection, as this
//!   host's fast path does after a valid join;
//! - an authenticated end ([`apply_end`]): the connection and its tokens removed, as this host's
//!   fast path does on a valid MP_FASTCLOSE (its subflows stay until the idle sweep takes them
//!   as orphans; the fast path treats them as unknown meanwhile).
//!
//! Joins and ends find their connection through the token of Key-A and check its IDSN: a record
//! about another connection whose Key-A has the same token (a stale end, a collision) changes
//! nothing here.

use mptcp_common::maps::{ConnState, FlowRef, FLOW_ESTABLISHED, ROLE_A, ROLE_B};

use super::record::{ConnName, SharedConn, SharedSubflow};
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

/// The connection `name` names here: its id and state, if this host tracks it (found through
/// the token of Key-A, with the same IDSN).
fn find(
    maps: &impl FirewallMaps,
    name: &ConnName,
) -> Result<Option<(u64, ConnState)>, KernelError> {
    let Some(token) = maps.token(&name.token_a)? else {
        return Ok(None);
    };
    if token.role != ROLE_A {
        return Ok(None);
    }
    let id = u64::from_ne_bytes(token.conn_id);
    Ok(maps
        .conn(id)?
        .filter(|state| ConnName::of(&state.key_a) == *name)
        .map(|state| (id, state)))
}

/// What applying a peer's validated subflow did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinApplied {
    /// Tracked here now.
    Added,
    /// The subflow was tracked already (this host saw the join too, or the record came twice,
    /// or the 4-tuple belongs to something this host's fast path saw).
    AlreadyKnown,
    /// This host does not track the connection (not learned yet, or gone): nothing to add to.
    UnknownConn,
}

/// Tracks a subflow a peer's join validated as part of its connection, established (its HMAC
/// proved the keys), as this host's fast path would after the join. `now_s`: CLOCK_MONOTONIC
/// seconds. The connection's subflow count goes up by read-modify-write (the fast path changes
/// it atomically): a lost race leaves it off by one, which the idle sweep bounds.
///
/// # Errors
/// When a map cannot be read or written.
pub fn apply_join(
    maps: &mut impl FirewallMaps,
    name: &ConnName,
    subflow: &SharedSubflow,
    now_s: u32,
) -> Result<JoinApplied, KernelError> {
    let Some((id, _)) = find(maps, name)? else {
        return Ok(JoinApplied::UnknownConn);
    };
    let (key, swapped) = subflow.flow.canonical();
    let flow = FlowRef {
        conn_id: id,
        last_seen_s: now_s,
        src_role: if swapped {
            subflow.src_role ^ 1
        } else {
            subflow.src_role
        } & 1,
        flags: FLOW_ESTABLISHED,
        ..FlowRef::default()
    };
    if !maps.insert_new_flow(&key, &flow)? {
        return Ok(JoinApplied::AlreadyKnown);
    }
    // Read again just before the write: the fast path may have changed the entry meanwhile.
    if let Some(mut state) = maps.conn(id)? {
        state.subflows = state.subflows.saturating_add(1);
        maps.update_existing_conn(id, &state)?;
    }
    Ok(JoinApplied::Added)
}

/// What applying a peer's authenticated end did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndApplied {
    /// The connection and its tokens were removed here.
    Ended,
    /// This host does not track that connection (never learned, gone already, or its token now
    /// names another connection): nothing removed.
    NotHere,
}

/// Forgets the connection a peer saw end, as this host's fast path does on a valid
/// MP_FASTCLOSE: its state, and each of its tokens that still names it.
///
/// # Errors
/// When a map cannot be read or written.
pub fn apply_end(maps: &mut impl FirewallMaps, name: &ConnName) -> Result<EndApplied, KernelError> {
    let Some((id, state)) = find(maps, name)? else {
        return Ok(EndApplied::NotHere);
    };
    if !maps.remove_conn(id)? {
        return Ok(EndApplied::NotHere);
    }
    for key in [&state.key_a, &state.key_b] {
        let token = token_and_idsn(key).0;
        if maps
            .token(&token)?
            .is_some_and(|t| u64::from_ne_bytes(t.conn_id) == id)
        {
            maps.remove_token(&token)?;
        }
    }
    Ok(EndApplied::Ended)
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
            subflows: Vec::new(),
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

    fn join_subflow() -> SharedSubflow {
        let mut flow = FlowKey {
            family: FAMILY_V4,
            sport: 40_001u16.to_be_bytes(),
            dport: 10_000u16.to_be_bytes(),
            ..FlowKey::default()
        };
        // Initiator B (the server) at the larger address: stored reversed.
        flow.saddr[..4].copy_from_slice(&[198, 18, 4, 2]);
        flow.daddr[..4].copy_from_slice(&[198, 18, 2, 1]);
        SharedSubflow {
            flow,
            src_role: ROLE_B,
        }
    }

    #[test]
    fn a_peer_join_is_tracked_with_its_connection() {
        let mut maps = MemoryMaps::default();
        let c = shared([1; 8], [2; 8]);
        let name = ConnName::of(&[1; 8]);
        let sub = join_subflow();
        assert_eq!(
            apply_join(&mut maps, &name, &sub, 7).unwrap(),
            JoinApplied::UnknownConn
        );
        assert!(maps.flows.is_empty());
        apply_learned(&mut maps, &c, 5, 5).unwrap();
        assert_eq!(
            apply_join(&mut maps, &name, &sub, 7).unwrap(),
            JoinApplied::Added
        );
        let (key, swapped) = sub.flow.canonical();
        assert!(swapped);
        let id = ConnState::id_of(&[1; 8]);
        let flow = maps.flows[&key];
        assert_eq!(
            (flow.conn_id, flow.src_role, flow.flags, flow.last_seen_s),
            (id, ROLE_A, FLOW_ESTABLISHED, 7)
        );
        assert_eq!(maps.conns[&id].subflows, 2);
        assert_eq!(
            apply_join(&mut maps, &name, &sub, 8).unwrap(),
            JoinApplied::AlreadyKnown
        );
        assert_eq!(maps.conns[&id].subflows, 2);
    }

    #[test]
    fn an_end_removes_its_own_connection_and_nothing_else() {
        let mut maps = MemoryMaps::default();
        apply_learned(&mut maps, &shared([1; 8], [2; 8]), 5, 5).unwrap();
        apply_learned(&mut maps, &shared([3; 8], [4; 8]), 5, 5).unwrap();
        let ended = ConnName::of(&[1; 8]);
        // A stale end: the token of Key-A [1; 8] now names a newer connection (Key-A [3; 8]),
        // as after a collision. The IDSN tells them apart: nothing is removed.
        let newer = maps.tokens[&token_and_idsn(&[3; 8]).0];
        maps.tokens.insert(ended.token_a, newer);
        assert_eq!(apply_end(&mut maps, &ended).unwrap(), EndApplied::NotHere);
        assert_eq!(maps.conns.len(), 2);
        // Its own token back: the end applies, to it alone.
        let own = token_entries(&[1; 8], &[2; 8])[0].1;
        maps.tokens.insert(ended.token_a, own);
        assert_eq!(apply_end(&mut maps, &ended).unwrap(), EndApplied::Ended);
        assert_eq!(
            maps.conns.keys().copied().collect::<Vec<_>>(),
            [ConnState::id_of(&[3; 8])]
        );
        assert_eq!(maps.tokens.len(), 2, "the other connection's tokens stay");
        assert_eq!(apply_end(&mut maps, &ended).unwrap(), EndApplied::NotHere);
    }
}
