//! The loop's side of the store: what [`crate::run`]'s map keeper calls. Publishes what this
//! host's fast path proved (learns, validated joins, authenticated ends), applies the peers'
//! records through [`super::apply`], counts, and keeps the pinned [`StoreState`] current.

use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use mptcp_common::maps::{ConnState, FlowKey, FlowRef, KeyEvent, FLOW_ESTABLISHED};

use super::{
    apply::{apply_end, apply_join, apply_learned, Applied, EndApplied, JoinApplied},
    link::FromStore,
    record::{ConnName, Record, SharedConn, SharedEnd, SharedJoin, SharedSubflow},
    SharedStore, StoreOptions,
};
use crate::{
    clock::{monotonic_now_ns, monotonic_now_s, unix_now_ns, ClockOffset},
    conn::keys::hex,
    kernel::pins::{open_or_create_pinned_array, PinDir},
    kernel::store::{FirewallMaps, KernelMaps},
    observe::latency::LatencyStats,
    observe::loader_counters::{LoaderCounter, LoaderCounters},
    observe::store_state::{StoreState, PIN_STORE_STATE},
    shared_store::error::StoreError,
};

/// A replication delay above which the loader says (at debug level) where the time went.
const SLOW_REPLICATION_NS: u64 = 20_000_000;

/// The store, its counters' owner's view of it, and its pinned state.
pub struct StoreKeeper {
    store: SharedStore,
    /// CLOCK_MONOTONIC seconds of the last TTL refresh.
    refreshed_s: u32,
    state: StoreState,
    replication: LatencyStats,
    pin: Array<MapData, StoreState>,
}

impl StoreKeeper {
    /// Starts the connection and creates the pinned state.
    ///
    /// # Errors
    /// A bad option ([`StoreError::Option`]) or the pin.
    pub fn start(options: &StoreOptions, ttl_s: u64, pin_dir: &PinDir) -> Result<Self, StoreError> {
        let store = SharedStore::start(options, ttl_s)?;
        let (pin, _) = open_or_create_pinned_array(pin_dir, PIN_STORE_STATE, 1)?;
        let mut keeper = Self {
            store,
            refreshed_s: 0,
            state: StoreState::default(),
            replication: LatencyStats::default(),
            pin,
        };
        keeper.publish_state();
        Ok(keeper)
    }

    /// `host:port` and this loader's id, for the banner.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "sharing learned connections through the store at {} as {}",
            self.store.address(),
            self.store.id()
        )
    }

    /// The state as last published.
    #[must_use]
    pub fn state(&self) -> StoreState {
        self.state
    }

    /// Publishes a connection this host's fast path learned.
    pub fn learned(&mut self, event: &KeyEvent, counters: &mut LoaderCounters) {
        let seen = ClockOffset::now().unix_ns(event.seen_ns);
        let conn = SharedConn::from_event(event, self.store.id(), seen);
        self.publish(Record::Learn(conn), counters);
    }

    /// Publishes a subflow a join validated on this host's fast path (`KEY_EVENT_JOINED`).
    pub fn joined(&mut self, event: &KeyEvent, counters: &mut LoaderCounters) {
        let seen = ClockOffset::now().unix_ns(event.seen_ns);
        let join = SharedJoin::from_event(event, self.store.id(), seen);
        self.publish(Record::Join(join), counters);
    }

    /// Publishes the end of the connection whose Key-A is `key_a`, which this host
    /// authenticated: its fast path saw an MP_FASTCLOSE with the right key or the host's own
    /// end of the last subflow (`KEY_EVENT_ENDED`), or the host's kernel confirmed the last
    /// subflow closed. Never called for an idle sweep's removal (see the README: a connection
    /// idle here may be busy on another box).
    pub fn ended(&mut self, key_a: &[u8; 8], counters: &mut LoaderCounters) {
        let end = SharedEnd {
            conn: ConnName::of(key_a),
            origin: self.store.id().to_owned(),
            ended_unix_ns: unix_now_ns(),
        };
        self.publish(Record::End(end), counters);
    }

    fn publish(&mut self, record: Record, counters: &mut LoaderCounters) {
        if !self.store.publish(record) {
            counters.add(LoaderCounter::StorePublishFailed, 1);
        }
    }

    /// Waits for the first catch-up (applying what it reads) for at most `timeout`: called
    /// before the programs are attached, so a starting loader enforces with its peers'
    /// connections installed. Returns whether it completed.
    pub async fn catch_up(
        &mut self,
        maps: &mut KernelMaps,
        counters: &mut LoaderCounters,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.store.next()).await else {
                return false;
            };
            let done = matches!(message, FromStore::CaughtUp { .. });
            self.handle(message, maps, counters);
            if done {
                return true;
            }
        }
    }

    /// The next message from the store (for the loop's `select!`).
    pub async fn next(&mut self) -> FromStore {
        self.store.next().await
    }

    /// Applies one message from the store and whatever else is already queued (bounded, so the
    /// loop gets back to its own key events).
    pub fn handle_all(
        &mut self,
        first: FromStore,
        maps: &mut KernelMaps,
        counters: &mut LoaderCounters,
    ) {
        let started = Instant::now();
        self.handle(first, maps, counters);
        while started.elapsed() < Duration::from_millis(20) {
            let Some(message) = self.store.try_next() else {
                break;
            };
            self.handle(message, maps, counters);
        }
        self.publish_state();
    }

    fn handle(&mut self, message: FromStore, maps: &mut KernelMaps, counters: &mut LoaderCounters) {
        match message {
            FromStore::Connected => {
                log::info!("store {}: connected; catching up", self.store.address());
                self.set_connected(true);
                self.state.caught_up = 0;
                // The store may have restarted empty: what this host tracks goes in again.
                self.republish(maps, counters);
            }
            FromStore::Disconnected { reason } => {
                if self.state.connected == 1 {
                    log::warn!(
                        "store {}: connection lost ({reason}); peers' new connections are not installed until it is back (their joins here are judged without their keys); retrying",
                        self.store.address()
                    );
                } else {
                    log::debug!("store {}: {reason}; retrying", self.store.address());
                }
                counters.add(LoaderCounter::StoreDisconnects, 1);
                self.set_connected(false);
                self.state.caught_up = 0;
            }
            FromStore::CaughtUp { conns } => {
                log::info!(
                    "store {}: caught up ({conns} connection(s) in the store)",
                    self.store.address()
                );
                self.state.caught_up = 1;
                self.state.catch_up_conns = conns;
            }
            FromStore::Record {
                record,
                stored_unix_ms,
            } => self.apply(&record, stored_unix_ms, maps, counters),
            FromStore::Published { count, refused } => {
                counters.add(LoaderCounter::StorePublished, count);
                counters.add(LoaderCounter::StoreRefused, refused);
            }
            FromStore::PublishFailed { count } => {
                counters.add(LoaderCounter::StorePublishFailed, count);
            }
        }
    }

    /// Applies one peer's record, counts it, and records the replication delay of a learn read
    /// from the stream.
    fn apply(
        &mut self,
        record: &Record,
        stored_unix_ms: Option<u64>,
        maps: &mut KernelMaps,
        counters: &mut LoaderCounters,
    ) {
        let now_s = monotonic_now_s();
        let result = match record {
            Record::Learn(conn) => self.apply_conn(conn, stored_unix_ms, maps, counters, now_s),
            Record::Join(join) => apply_join(maps, &join.conn, &join.subflow, now_s)
                .map(|applied| count_join(applied, counters)),
            Record::End(end) => apply_end(maps, &end.conn).map(|applied| {
                if applied == EndApplied::Ended {
                    log::info!(
                        "connection {:?}: ended (authenticated by {}); forgotten here too",
                        end.conn,
                        end.origin
                    );
                    counters.add(LoaderCounter::StoreEndsApplied, 1);
                }
            }),
            Record::Touch(_) => Ok(()),
        };
        if let Err(e) = result {
            counters.add(LoaderCounter::StoreApplyFailed, 1);
            log::warn!(
                "could not apply a {} record of the store: {e}",
                record.op().as_str()
            );
        }
    }

    /// A peer's connection, then its validated subflows.
    fn apply_conn(
        &mut self,
        conn: &SharedConn,
        stored_unix_ms: Option<u64>,
        maps: &mut KernelMaps,
        counters: &mut LoaderCounters,
        now_s: u32,
    ) -> Result<(), crate::kernel::error::KernelError> {
        let applied = apply_learned(maps, conn, now_s, monotonic_now_ns())?;
        if let Some(stored_ms) = stored_unix_ms {
            let delay = unix_now_ns().saturating_sub(conn.seen_unix_ns);
            self.replication.record_ns(delay);
            if delay > SLOW_REPLICATION_NS {
                // Where the time went: the store's clock splits it (across hosts the parts
                // include the clocks' differences).
                let stored_ns = stored_ms.saturating_mul(1_000_000);
                log::debug!(
                    "slow replication: connection token-A {} from {} installed {} ms after its keys were seen: {} ms until the store appended it, {} ms from there",
                    hex(&conn.token_a()),
                    conn.origin,
                    delay / 1_000_000,
                    stored_ns.saturating_sub(conn.seen_unix_ns) / 1_000_000,
                    unix_now_ns().saturating_sub(stored_ns) / 1_000_000
                );
            }
        }
        let counter = match applied {
            Applied::Installed => {
                log::debug!(
                    "installed connection token-A {} from {} (learned at {})",
                    hex(&conn.token_a()),
                    conn.origin,
                    crate::conn::install::format_flow(&conn.flow)
                );
                LoaderCounter::StoreApplied
            }
            Applied::AlreadyKnown => LoaderCounter::StoreAlreadyKnown,
            Applied::KeysDiffer | Applied::Lost => LoaderCounter::StoreApplyFailed,
        };
        counters.add(counter, 1);
        for subflow in &conn.subflows {
            count_join(apply_join(maps, &conn.name(), subflow, now_s)?, counters);
        }
        Ok(())
    }

    /// Publishes every connection in the maps with the subflow it is tracked on (each one a
    /// peer may be missing), and its other established subflows.
    fn republish(&mut self, maps: &KernelMaps, counters: &mut LoaderCounters) {
        let (conns, flows) = match (maps.all_conns(), maps.all_flows()) {
            (Ok(c), Ok(f)) => (c, f),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("could not read the maps to publish them to the store: {e}");
                return;
            }
        };
        let mut subflows: std::collections::HashMap<u64, Vec<(FlowKey, FlowRef)>> =
            std::collections::HashMap::new();
        for (key, flow) in &flows {
            subflows
                .entry(flow.conn_id)
                .or_default()
                .push((*key, *flow));
        }
        let seen = ClockOffset::now().unix_ns(monotonic_now_ns());
        let mut queued = 0u64;
        for (id, state) in &conns {
            let Some(conn) = subflows
                .get(id)
                .and_then(|flows| conn_of(*id, state, flows, self.store.id(), seen))
            else {
                continue;
            };
            if self.store.publish(Record::Learn(conn)) {
                queued += 1;
            } else {
                counters.add(LoaderCounter::StorePublishFailed, 1);
            }
        }
        if queued > 0 {
            log::info!("store: publishing the {queued} connection(s) this host tracks");
        }
    }

    /// Refreshes the TTL of the hash of every connection with activity here since the last
    /// refresh (called after each idle sweep), so the store keeps what some box still uses.
    pub fn refresh_active(&mut self, maps: &KernelMaps, counters: &mut LoaderCounters) {
        let now_s = monotonic_now_s();
        let (conns, flows) = match (maps.all_conns(), maps.all_flows()) {
            (Ok(c), Ok(f)) => (c, f),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("could not read the maps to refresh the store's TTLs: {e}");
                return;
            }
        };
        let mut latest: std::collections::HashMap<u64, u32> =
            conns.iter().map(|(id, s)| (*id, s.learned_s)).collect();
        for (_, flow) in &flows {
            if let Some(seen) = latest.get_mut(&flow.conn_id) {
                *seen = (*seen).max(flow.last_seen_s);
            }
        }
        let mut refreshed = 0;
        for (id, state) in &conns {
            if latest[id] >= self.refreshed_s {
                if self
                    .store
                    .publish(Record::Touch(ConnName::of(&state.key_a)))
                {
                    refreshed += 1;
                } else {
                    counters.add(LoaderCounter::StorePublishFailed, 1);
                }
            }
        }
        counters.add(LoaderCounter::StoreRefreshed, refreshed);
        self.refreshed_s = now_s;
    }

    fn set_connected(&mut self, connected: bool) {
        let value = u64::from(connected);
        if self.state.connected != value {
            self.state.connected = value;
            self.state.since_unix_ns = unix_now_ns();
        }
    }

    /// Writes the state to its pin.
    pub fn publish_state(&mut self) {
        self.state.queued = self.store.queued() as u64;
        if let Some(summary) = self.replication.summary() {
            self.state.replication = summary;
        }
        if let Err(e) = self.pin.set(0, self.state, 0) {
            log::warn!("could not publish the store state: {e}");
        }
    }
}

fn count_join(applied: JoinApplied, counters: &mut LoaderCounters) {
    let counter = match applied {
        JoinApplied::Added => LoaderCounter::StoreSubflowsApplied,
        JoinApplied::AlreadyKnown => LoaderCounter::StoreAlreadyKnown,
        JoinApplied::UnknownConn => LoaderCounter::StoreApplyFailed,
    };
    counters.add(counter, 1);
}

/// A tracked connection as shared by `origin`: its keys, its first subflow oriented A -> B (as
/// the key event of its MP_CAPABLE would have it), and its other established subflows. `None`
/// for a connection whose keys conflict (nothing a peer should trust) or without a subflow.
fn conn_of(
    id: u64,
    state: &ConnState,
    flows: &[(FlowKey, FlowRef)],
    origin: &str,
    seen_unix_ns: u64,
) -> Option<SharedConn> {
    if ConnState::id_of(&state.key_a) != id
        || state.flags & mptcp_common::maps::CONN_FLAG_KEY_CONFLICT != 0
    {
        return None;
    }
    let ((first_key, first), rest) = flows.split_first()?;
    let flow = if first.src_role == mptcp_common::maps::ROLE_A {
        *first_key
    } else {
        first_key.reversed()
    };
    let event = KeyEvent {
        flow,
        key_a: state.key_a,
        key_b: state.key_b,
        ..KeyEvent::default()
    };
    let mut conn = SharedConn::from_event(&event, origin, seen_unix_ns);
    conn.subflows = rest
        .iter()
        .filter(|(_, f)| f.flags & FLOW_ESTABLISHED != 0)
        .map(|(key, f)| SharedSubflow {
            flow: *key,
            src_role: f.src_role & 1,
        })
        .collect();
    Some(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::maps::{CONN_FLAG_KEY_CONFLICT, FAMILY_V4, ROLE_A, ROLE_B};

    fn key(last: u8, port: u16) -> FlowKey {
        let mut k = FlowKey {
            family: FAMILY_V4,
            sport: port.to_be_bytes(),
            dport: 10_000u16.to_be_bytes(),
            ..FlowKey::default()
        };
        k.saddr[..4].copy_from_slice(&[198, 18, 1, last]);
        k.daddr[..4].copy_from_slice(&[198, 18, 3, 2]);
        k
    }

    fn flow(src_role: u8, flags: u8) -> FlowRef {
        FlowRef {
            src_role,
            flags,
            ..FlowRef::default()
        }
    }

    #[test]
    fn a_republished_connection_carries_its_established_subflows() {
        let state = ConnState {
            key_a: [1; 8],
            key_b: [2; 8],
            ..ConnState::default()
        };
        let id = ConnState::id_of(&[1; 8]);
        // The learning subflow is stored with B's address first: sent back oriented A -> B.
        let flows = [
            (key(1, 40_000), flow(ROLE_B, FLOW_ESTABLISHED)),
            (key(2, 40_001), flow(ROLE_A, FLOW_ESTABLISHED)),
            (key(3, 40_002), flow(ROLE_A, 0)),
        ];
        let conn = conn_of(id, &state, &flows, "gw1", 7).unwrap();
        assert_eq!(conn.flow, key(1, 40_000).reversed());
        assert_eq!(
            (conn.key_a, conn.key_b, conn.origin.as_str()),
            ([1; 8], [2; 8], "gw1")
        );
        assert_eq!(
            conn.subflows,
            [SharedSubflow {
                flow: key(2, 40_001),
                src_role: ROLE_A
            }],
            "only the established one"
        );
        assert_eq!(conn_of(id, &state, &[], "gw1", 7), None);
        let conflict = ConnState {
            flags: CONN_FLAG_KEY_CONFLICT,
            ..state
        };
        assert_eq!(conn_of(id, &conflict, &flows, "gw1", 7), None);
    }
}
