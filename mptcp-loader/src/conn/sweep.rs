//! The idle sweep: forgets connections nobody has used for `--idle-timeout` seconds.
//!
//! The fast path removes a connection when the host itself ends its last subflow (its RST, or
//! its SYN on the 4-tuple) or it is fast-closed, and the closed-subflow check
//! ([`crate::conn::closed`]) when the host's kernel confirms its last subflow closed. A connection
//! whose hosts vanished without either, or one forwarded through this host (a gateway), stays
//! until the LRU evicts it, which on a quiet system is never. The sweep bounds that: a connection's last activity is
//! the latest of its subflows' `FlowRef::last_seen_s` and its `ConnState::learned_s` (seconds of
//! CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and, to the tick, of
//! `bpf_ktime_get_coarse_ns`); once that is older than the timeout, its state and its subflows
//! are removed. Subflows whose connection is gone (evicted) are removed after the same timeout.
//!
//! Its two tokens are **not** removed. `last_seen_s` is set when a handshake (MP_CAPABLE, or a
//! validated MP_JOIN) inserts the subflow and refreshed by every ADD_ADDR, but only by a random
//! sample of other segments (`mptcp_common::maps::ACTIVITY_SAMPLE_ONE_IN`),
//! so a connection the sweep forgets may in fact still be alive. Forgetting it must only make the
//! fast path fail open for it: with its tokens still in the token map, a later MP_JOIN SYN naming
//! one passes as `join_state_missing` (the token outlived its connection) instead of being
//! dropped as carrying an unknown token. Tokens go when the fast path sees the connection end
//! (last subflow closed, MP_FASTCLOSE), or when the LRU token map evicts them.
//!
//! [`plan_sweep`] decides on a snapshot of the maps and does no I/O; [`apply_sweep`] carries a
//! plan out, re-reading each entry just before removing it, because the snapshot of a large map
//! is seconds old by then and a connection may have woken up meanwhile.

use std::collections::HashMap;

use mptcp_common::maps::{ConnState, FlowKey, FlowRef};

use crate::{kernel::error::KernelError, kernel::store::FirewallMaps};

/// Longest pause between two sweeps, whatever the timeout.
pub const MAX_SWEEP_INTERVAL_S: u64 = 60;

/// How often to sweep for `timeout_s`: a quarter of it (so an idle connection goes at most
/// 1.25 × timeout after its last segment), at most [`MAX_SWEEP_INTERVAL_S`]. `None` when the
/// sweep is disabled (timeout 0).
#[must_use]
pub fn sweep_interval(timeout_s: u32) -> Option<std::time::Duration> {
    if timeout_s == 0 {
        return None;
    }
    let quarter_ms = u64::from(timeout_s) * 1000 / 4;
    Some(std::time::Duration::from_millis(
        quarter_ms.min(MAX_SWEEP_INTERVAL_S * 1000),
    ))
}

/// Seconds between `then` and `now`; 0 for a time after `now` (the fast path may write a
/// timestamp between our clock read and our map read).
#[must_use]
pub const fn age_s(now_s: u32, then_s: u32) -> u32 {
    now_s.saturating_sub(then_s)
}

/// Whether something last active at `last_active_s` has been idle for longer than `timeout_s`.
#[must_use]
pub const fn is_idle(now_s: u32, last_active_s: u32, timeout_s: u32) -> bool {
    timeout_s > 0 && age_s(now_s, last_active_s) > timeout_s
}

/// A connection to forget, with what belongs to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredConn {
    /// Key of the connection map.
    pub id: u64,
    /// Key-A (the tokens are derived from the keys).
    pub key_a: [u8; 8],
    /// Key-B.
    pub key_b: [u8; 8],
    /// Its subflows, as keyed in the subflow map.
    pub flows: Vec<FlowKey>,
    /// Seconds since its last activity.
    pub idle_s: u32,
}

/// What one sweep removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Idle connections.
    pub expired: Vec<ExpiredConn>,
    /// Idle subflows whose connection is no longer in the map.
    pub orphan_flows: Vec<FlowKey>,
    /// Connections in the snapshot, when [`sweep_maps`] walked the whole connection map (`None`
    /// when heavy churn cut the walk short, and from [`plan_sweep`] alone). The loader counts
    /// evictions from it (see [`crate::observe::loader_counters::ConnMapTally`]).
    pub conns_counted: Option<u64>,
}

/// Decides what to remove, given every connection and subflow and the current time
/// (`now_s`: seconds of CLOCK_MONOTONIC, read after the snapshot). Pure.
#[must_use]
pub fn plan_sweep(
    conns: &[(u64, ConnState)],
    flows: &[(FlowKey, FlowRef)],
    now_s: u32,
    timeout_s: u32,
) -> SweepPlan {
    let mut plan = SweepPlan::default();
    if timeout_s == 0 {
        return plan;
    }
    // Connection id -> (latest activity, its subflows).
    let mut activity: HashMap<u64, (u32, Vec<FlowKey>)> = conns
        .iter()
        .map(|(id, state)| (*id, (state.learned_s, Vec::new())))
        .collect();
    for (key, flow) in flows {
        match activity.get_mut(&flow.conn_id) {
            Some((latest, keys)) => {
                *latest = latest_of(*latest, flow.last_seen_s, now_s);
                keys.push(*key);
            }
            None if is_idle(now_s, flow.last_seen_s, timeout_s) => plan.orphan_flows.push(*key),
            None => {}
        }
    }
    for (id, state) in conns {
        let (latest, keys) = &activity[id];
        if is_idle(now_s, *latest, timeout_s) {
            plan.expired.push(ExpiredConn {
                id: *id,
                key_a: state.key_a,
                key_b: state.key_b,
                flows: keys.clone(),
                idle_s: age_s(now_s, *latest),
            });
        }
    }
    plan
}

/// The more recent of two activity times (the one with the smaller age).
const fn latest_of(a: u32, b: u32, now_s: u32) -> u32 {
    if age_s(now_s, b) < age_s(now_s, a) {
        b
    } else {
        a
    }
}

/// One whole sweep: snapshot the connections and subflows, read the clock (after the snapshot,
/// so no timestamp in it is later than now), plan, apply. Returns the plan (for logging) and
/// what was removed.
///
/// # Errors
/// The first map operation that failed.
pub fn sweep_maps(
    maps: &mut impl FirewallMaps,
    now_s: impl FnOnce() -> u32,
    timeout_s: u32,
) -> Result<(SweepPlan, SweepOutcome), KernelError> {
    let mut outcome = SweepOutcome::default();
    let plan = sweep_maps_into(maps, now_s, timeout_s, &mut outcome)?;
    Ok((plan, outcome))
}

/// [`sweep_maps`], adding what it removes to `outcome` as it goes: on an error, `outcome` still
/// says what was removed until then.
///
/// # Errors
/// The first map operation that failed.
pub fn sweep_maps_into(
    maps: &mut impl FirewallMaps,
    now_s: impl FnOnce() -> u32,
    timeout_s: u32,
    outcome: &mut SweepOutcome,
) -> Result<SweepPlan, KernelError> {
    let (conns, complete) = maps.all_conns_walked()?;
    let flows = maps.all_flows()?;
    let now_s = now_s();
    let mut plan = plan_sweep(&conns, &flows, now_s, timeout_s);
    plan.conns_counted = complete.then(|| u64::try_from(conns.len()).unwrap_or(u64::MAX));
    apply_sweep_into(maps, &plan, now_s, timeout_s, outcome)?;
    Ok(plan)
}

/// What a sweep removed (the loader's counters add these up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Connection entries removed.
    pub conns_expired: u64,
    /// Subflow entries of those connections removed.
    pub flows_expired: u64,
    /// Subflow entries without a connection removed.
    pub flows_orphaned_removed: u64,
    /// Planned connections left alone because they turned out active (or gone) on re-reading.
    pub conns_revived: u64,
}

/// Carries out `plan`. Each connection is re-read (with its subflows) just before it is removed
/// and kept if it became active since the snapshot. Its tokens stay (see the module docs).
///
/// # Errors
/// The first map operation that failed (what was removed until then stays removed).
pub fn apply_sweep(
    maps: &mut impl FirewallMaps,
    plan: &SweepPlan,
    now_s: u32,
    timeout_s: u32,
) -> Result<SweepOutcome, KernelError> {
    let mut outcome = SweepOutcome::default();
    apply_sweep_into(maps, plan, now_s, timeout_s, &mut outcome)?;
    Ok(outcome)
}

/// [`apply_sweep`], adding to `outcome` as it goes (so that, on an error, the removals made
/// until then are still counted: the eviction count relies on every removal being counted).
///
/// # Errors
/// The first map operation that failed.
pub fn apply_sweep_into(
    maps: &mut impl FirewallMaps,
    plan: &SweepPlan,
    now_s: u32,
    timeout_s: u32,
    outcome: &mut SweepOutcome,
) -> Result<(), KernelError> {
    for conn in &plan.expired {
        if !still_idle(maps, conn, now_s, timeout_s)? {
            outcome.conns_revived += 1;
            continue;
        }
        // The connection first: from then on the fast path treats its subflows as unknown.
        if maps.remove_conn(conn.id)? {
            outcome.conns_expired += 1;
        }
        for key in &conn.flows {
            if maps.flow(key)?.is_some_and(|f| f.conn_id == conn.id) && maps.remove_flow(key)? {
                outcome.flows_expired += 1;
            }
        }
    }
    for key in &plan.orphan_flows {
        let Some(flow) = maps.flow(key)? else {
            continue;
        };
        let orphan = maps.conn(flow.conn_id)?.is_none();
        if orphan && is_idle(now_s, flow.last_seen_s, timeout_s) && maps.remove_flow(key)? {
            outcome.flows_orphaned_removed += 1;
        }
    }
    Ok(())
}

/// Whether a planned connection is still there with the same keys and still idle.
fn still_idle(
    maps: &impl FirewallMaps,
    conn: &ExpiredConn,
    now_s: u32,
    timeout_s: u32,
) -> Result<bool, KernelError> {
    let Some(state) = maps.conn(conn.id)? else {
        return Ok(false);
    };
    if state.key_a != conn.key_a || state.key_b != conn.key_b {
        return Ok(false);
    }
    let mut latest = state.learned_s;
    for key in &conn.flows {
        if let Some(flow) = maps.flow(key)? {
            if flow.conn_id == conn.id {
                latest = latest_of(latest, flow.last_seen_s, now_s);
            }
        }
    }
    Ok(is_idle(now_s, latest, timeout_s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conn::install::token_entries, kernel::store::MemoryMaps};
    use mptcp_common::maps::{Token, TokenRef, FAMILY_V4};

    const TIMEOUT: u32 = 100;
    const NOW: u32 = 10_000;

    fn conn(n: u8, learned_s: u32) -> (u64, ConnState) {
        let key_a = [n; 8];
        let state = ConnState {
            key_a,
            key_b: [n.wrapping_add(100); 8],
            learned_s,
            subflows: 1,
            ..ConnState::default()
        };
        (ConnState::id_of(&key_a), state)
    }

    fn flow(port: u16, conn_id: u64, last_seen_s: u32) -> (FlowKey, FlowRef) {
        let mut key = FlowKey {
            family: FAMILY_V4,
            sport: port.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            ..FlowKey::default()
        };
        key.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        key.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let value = FlowRef {
            conn_id,
            last_seen_s,
            ..FlowRef::default()
        };
        (key, value)
    }

    #[test]
    fn interval_is_a_quarter_of_the_timeout_at_most_a_minute() {
        use std::time::Duration;
        assert_eq!(sweep_interval(0), None);
        assert_eq!(sweep_interval(2), Some(Duration::from_millis(500)));
        assert_eq!(sweep_interval(100), Some(Duration::from_secs(25)));
        assert_eq!(sweep_interval(7200), Some(Duration::from_mins(1)));
    }

    #[test]
    fn idle_means_strictly_older_than_the_timeout() {
        assert!(!is_idle(NOW, NOW - TIMEOUT, TIMEOUT));
        assert!(is_idle(NOW, NOW - TIMEOUT - 1, TIMEOUT));
        assert!(!is_idle(NOW, NOW + 5, TIMEOUT), "a time after now is fresh");
        assert!(!is_idle(NOW, 0, 0), "timeout 0 disables");
    }

    #[test]
    fn activity_is_the_latest_of_learned_and_every_subflow() {
        let (busy_id, busy) = conn(1, NOW - 5000); // learned long ago, one subflow active
        let (idle_id, idle) = conn(2, NOW - 5000); // learned long ago, all subflows idle
        let (young_id, young) = conn(3, NOW - 10); // just learned, no subflow yet
        let (bare_id, bare) = conn(4, NOW - 101); // no subflow left, learned long ago
        let flows = [
            flow(1000, busy_id, NOW - 4000),
            flow(1001, busy_id, NOW - 3),
            flow(2000, idle_id, NOW - 200),
            flow(2001, idle_id, NOW - 101),
        ];
        let conns = [
            (busy_id, busy),
            (idle_id, idle),
            (young_id, young),
            (bare_id, bare),
        ];
        let plan = plan_sweep(&conns, &flows, NOW, TIMEOUT);
        assert_eq!(
            plan.expired,
            [
                ExpiredConn {
                    id: idle_id,
                    key_a: idle.key_a,
                    key_b: idle.key_b,
                    flows: vec![flows[2].0, flows[3].0],
                    idle_s: 101,
                },
                ExpiredConn {
                    id: bare_id,
                    key_a: bare.key_a,
                    key_b: bare.key_b,
                    flows: vec![],
                    idle_s: 101,
                },
            ]
        );
        assert!(plan.orphan_flows.is_empty());
    }

    #[test]
    fn orphan_subflows_go_after_the_same_timeout() {
        let (id, state) = conn(1, NOW);
        let flows = [
            flow(1000, id, NOW - 1000), // belongs to a live connection: kept
            flow(3000, 77, NOW - 101),  // connection evicted, idle: removed
            flow(3001, 77, NOW - 100),  // connection evicted, not idle yet: kept
            flow(3002, 78, NOW + 1),    // written after our clock read: kept
        ];
        let plan = plan_sweep(&[(id, state)], &flows, NOW, TIMEOUT);
        assert!(plan.expired.is_empty());
        assert_eq!(plan.orphan_flows, [flows[1].0]);
    }

    #[test]
    fn timeout_zero_plans_nothing() {
        let (id, state) = conn(1, 0);
        let plan = plan_sweep(&[(id, state)], &[flow(1, 9, 0)], NOW, 0);
        assert_eq!(plan, SweepPlan::default());
    }

    fn maps_for(conns: &[(u64, ConnState)], flows: &[(FlowKey, FlowRef)]) -> MemoryMaps {
        let mut maps = MemoryMaps::default();
        for (id, state) in conns {
            maps.conns.insert(*id, *state);
            for (token, entry) in token_entries(&state.key_a, &state.key_b) {
                maps.tokens.insert(token, entry);
            }
        }
        maps.flows.extend(flows.iter().copied());
        maps
    }

    #[test]
    fn apply_removes_the_connection_and_its_subflows_but_keeps_its_tokens() {
        let (idle_id, idle) = conn(2, NOW - 5000);
        let (live_id, live) = conn(3, NOW - 1);
        let flows = [
            flow(2000, idle_id, NOW - 200),
            flow(2001, idle_id, NOW - 300),
            flow(3000, live_id, NOW - 1),
            flow(4000, 99, NOW - 500),
        ];
        let conns = [(idle_id, idle), (live_id, live)];
        let mut maps = maps_for(&conns, &flows);
        let tokens_before = maps.tokens.clone();

        let plan = plan_sweep(
            &maps.all_conns().unwrap(),
            &maps.all_flows().unwrap(),
            NOW,
            TIMEOUT,
        );
        let outcome = apply_sweep(&mut maps, &plan, NOW, TIMEOUT).unwrap();
        assert_eq!(
            outcome,
            SweepOutcome {
                conns_expired: 1,
                flows_expired: 2,
                flows_orphaned_removed: 1,
                conns_revived: 0,
            }
        );
        assert_eq!(maps.conns.keys().copied().collect::<Vec<_>>(), [live_id]);
        assert_eq!(maps.flows.keys().copied().collect::<Vec<_>>(), [flows[2].0]);
        // The forgotten connection may still be alive (activity is sampled): its tokens stay,
        // so a join naming one fails open (join_state_missing) instead of being dropped.
        assert_eq!(maps.tokens, tokens_before);
        let [(token_a, ref_a), _] = token_entries(&idle.key_a, &idle.key_b);
        assert_eq!(maps.tokens[&token_a], ref_a);
        assert!(maps
            .conn(u64::from_ne_bytes(ref_a.conn_id))
            .unwrap()
            .is_none());
        // A second sweep finds nothing more.
        let plan = plan_sweep(
            &maps.all_conns().unwrap(),
            &maps.all_flows().unwrap(),
            NOW,
            TIMEOUT,
        );
        assert_eq!(plan, SweepPlan::default());
    }

    #[test]
    fn apply_keeps_what_woke_up_or_changed_since_the_snapshot() {
        let (woke_id, woke) = conn(2, NOW - 5000);
        let (gone_id, gone) = conn(3, NOW - 5000);
        let (reused_id, reused) = conn(4, NOW - 5000);
        let flows = [flow(2000, woke_id, NOW - 200), flow(5000, 99, NOW - 500)];
        let conns = [(woke_id, woke), (gone_id, gone), (reused_id, reused)];
        let mut maps = maps_for(&conns, &flows);
        let plan = plan_sweep(&conns, &flows, NOW, TIMEOUT);
        assert_eq!(plan.expired.len(), 3);

        // Meanwhile: a segment on the first connection, the second ended by itself, the third's
        // id now holds a connection with another Key-B, and the orphan's connection came back.
        maps.flows.get_mut(&flows[0].0).unwrap().last_seen_s = NOW;
        maps.conns.remove(&gone_id);
        maps.conns.get_mut(&reused_id).unwrap().key_b = [0xee; 8];
        maps.conns.insert(99, ConnState::default());

        let outcome = apply_sweep(&mut maps, &plan, NOW, TIMEOUT).unwrap();
        assert_eq!(
            outcome,
            SweepOutcome {
                conns_revived: 3,
                ..SweepOutcome::default()
            }
        );
        assert_eq!(maps.flows.len(), 2);
        assert!(maps.conns.contains_key(&woke_id) && maps.conns.contains_key(&reused_id));
    }

    #[test]
    fn a_whole_sweep_counts_the_connections_of_its_snapshot() {
        let conns = [conn(2, NOW - 5000), conn(3, NOW - 1)];
        let mut maps = maps_for(&conns, &[]);
        let (plan, outcome) = sweep_maps(&mut maps, || NOW, TIMEOUT).unwrap();
        // Counted before the removal: the evictions are derived from the expirations before it.
        assert_eq!(plan.conns_counted, Some(2));
        assert_eq!(outcome.conns_expired, 1);
        assert_eq!(plan_sweep(&conns, &[], NOW, TIMEOUT).conns_counted, None);
    }

    /// Connection removals succeed, subflow removals fail.
    struct FlowsStuck(MemoryMaps);

    impl FirewallMaps for FlowsStuck {
        fn conn(&self, id: u64) -> Result<Option<ConnState>, KernelError> {
            self.0.conn(id)
        }
        fn update_existing_conn(
            &mut self,
            id: u64,
            state: &ConnState,
        ) -> Result<bool, KernelError> {
            self.0.update_existing_conn(id, state)
        }
        fn insert_new_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError> {
            self.0.insert_new_conn(id, state)
        }
        fn remove_conn(&mut self, id: u64) -> Result<bool, KernelError> {
            self.0.remove_conn(id)
        }
        fn insert_new_flow(&mut self, key: &FlowKey, flow: &FlowRef) -> Result<bool, KernelError> {
            self.0.insert_new_flow(key, flow)
        }
        fn all_conns(&self) -> Result<Vec<(u64, ConnState)>, KernelError> {
            self.0.all_conns()
        }
        fn flow(&self, key: &FlowKey) -> Result<Option<FlowRef>, KernelError> {
            self.0.flow(key)
        }
        fn remove_flow(&mut self, _: &FlowKey) -> Result<bool, KernelError> {
            Err(KernelError::map(mptcp_common::maps::MAP_FLOWS)(
                aya::maps::MapError::KeyNotFound,
            ))
        }
        fn all_flows(&self) -> Result<Vec<(FlowKey, FlowRef)>, KernelError> {
            self.0.all_flows()
        }
        fn token(&self, token: &Token) -> Result<Option<TokenRef>, KernelError> {
            self.0.token(token)
        }
        fn put_token(&mut self, token: &Token, entry: &TokenRef) -> Result<(), KernelError> {
            self.0.put_token(token, entry)
        }
        fn remove_token(&mut self, token: &Token) -> Result<bool, KernelError> {
            self.0.remove_token(token)
        }
    }

    #[test]
    fn a_failed_sweep_still_says_what_it_removed() {
        let (id, state) = conn(2, NOW - 5000);
        let mut maps = FlowsStuck(maps_for(&[(id, state)], &[flow(2000, id, NOW - 200)]));
        let mut outcome = SweepOutcome::default();
        assert!(sweep_maps_into(&mut maps, || NOW, TIMEOUT, &mut outcome).is_err());
        // The connection went before its subflow's removal failed: counted, not lost (an
        // uncounted removal would later pass for an eviction).
        assert!(maps.0.conns.is_empty());
        assert_eq!(outcome.conns_expired, 1);
    }
}
