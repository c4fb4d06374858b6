//! The loop's side of the store: what [`crate::run`]'s map keeper calls. Publishes this host's
//! learns, applies the peers' records through [`super::apply`], counts, and keeps the pinned
//! [`StoreState`] current.

use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use mptcp_common::maps::{ConnState, KeyEvent};

use super::{
    apply::{apply_learned, Applied},
    link::FromStore,
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
        if !self.store.publish_learned(event, seen) {
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
            FromStore::Learned { conn, live } => {
                let now_ns = monotonic_now_ns();
                match apply_learned(maps, &conn, monotonic_now_s(), now_ns) {
                    Ok(applied) => {
                        if live {
                            let delay = unix_now_ns().saturating_sub(conn.seen_unix_ns);
                            self.replication.record_ns(delay);
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
                    }
                    Err(e) => {
                        counters.add(LoaderCounter::StoreApplyFailed, 1);
                        log::warn!(
                            "could not install connection token-A {} from the store: {e}",
                            hex(&conn.token_a())
                        );
                    }
                }
            }
            FromStore::Published { count } => counters.add(LoaderCounter::StorePublished, count),
            FromStore::PublishFailed { count } => {
                counters.add(LoaderCounter::StorePublishFailed, count);
            }
        }
    }

    /// Publishes every connection in the maps with the subflow it is tracked on (each one a
    /// peer may be missing).
    fn republish(&mut self, maps: &KernelMaps, counters: &mut LoaderCounters) {
        let (conns, flows) = match (maps.all_conns(), maps.all_flows()) {
            (Ok(c), Ok(f)) => (c, f),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("could not read the maps to publish them to the store: {e}");
                return;
            }
        };
        let first_flow: std::collections::HashMap<u64, _> = flows
            .iter()
            .rev()
            .map(|(key, f)| (f.conn_id, (*key, f.src_role)))
            .collect();
        let clock = ClockOffset::now();
        let mut queued = 0u64;
        for (id, state) in &conns {
            let Some(event) = event_of(*id, state, first_flow.get(id).copied()) else {
                continue;
            };
            if self
                .store
                .publish_learned(&event, clock.unix_ns(monotonic_now_ns()))
            {
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
                if self.store.touch(&state.key_a, &state.key_b) {
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

/// The key event that would have announced a tracked connection: its keys and one of its
/// subflows oriented A -> B. `None` without a subflow, or for a connection whose keys conflict.
fn event_of(
    id: u64,
    state: &ConnState,
    flow: Option<(mptcp_common::maps::FlowKey, u8)>,
) -> Option<KeyEvent> {
    let (key, src_role) = flow?;
    if ConnState::id_of(&state.key_a) != id
        || state.flags & mptcp_common::maps::CONN_FLAG_KEY_CONFLICT != 0
    {
        return None;
    }
    let flow = if src_role == mptcp_common::maps::ROLE_A {
        key
    } else {
        key.reversed()
    };
    Some(KeyEvent {
        flow,
        key_a: state.key_a,
        key_b: state.key_b,
        ..KeyEvent::default()
    })
}
