//! The map work of `run`'s event loop (`MapKeeper`): installs the connections that key
//! events announce, records drop events, sweeps idle and closed connections, counts LRU
//! evictions, and publishes the install latency and the loader's own counters for `stats`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use mptcp_common::{
    counters::Counter,
    maps::{KeyEvent, KEY_EVENT_ENDED, KEY_EVENT_JOINED, MAP_COUNTERS},
};

use crate::{
    cli::error::LoaderError,
    cli::run::RunPlan,
    clock::{monotonic_now_ns, monotonic_now_s, ClockOffset},
    conn::closed::{apply_closed, plan_closed, ClosedOutcome, KernelSockets},
    conn::install::{format_flow, install_event, parse_key_event, InstallOutcome},
    conn::keys::{hex, token_and_idsn},
    conn::sweep::{sweep_maps_into, SweepOutcome},
    errors::OsError,
    kernel::error::KernelError,
    kernel::firewall::Firewall,
    kernel::pins::{open_or_create_pinned_array, PinDir, PIN_INSTALL_LATENCY, PIN_LOADER_COUNTERS},
    kernel::preflight::interface_name,
    kernel::store::{counter_total, FirewallMaps as _, KernelMaps},
    observe::events::{parse_drop_event, DropEventSink},
    observe::latency::{LatencyStats, LatencySummary},
    observe::loader_counters::{ConnMapTally, LoaderCounter, LoaderCounters, LOADER_COUNTER_COUNT},
    observe::stats::read_loader_counters_at,
    shared_store::{keeper::StoreKeeper, link::FromStore},
};

/// The loop's map work: installs what key events announce, records drop events, sweeps idle
/// connections, counts evictions, and publishes the install latency and its own counters for
/// `stats`.
pub(crate) struct MapKeeper {
    maps: KernelMaps,
    /// The fast path's counters (the pinned map), for the eviction count.
    bpf_counters: PerCpuArray<MapData, u64>,
    /// Capacity of the connection map, for the eviction log line.
    max_conns: u32,
    pub(crate) latency: LatencyStats,
    latency_pin: Array<MapData, LatencySummary>,
    pub(crate) counters: LoaderCounters,
    counters_pin: Array<MapData, u64>,
    interface_names: HashMap<u32, String>,
    pub(crate) drops: DropEventSink,
    /// The shared store (`--store`): publishes what is learned here, installs the peers'.
    pub(crate) store: Option<StoreKeeper>,
}

impl MapKeeper {
    /// Takes the maps it works on out of `firewall`; reopens the loader's own pins (counters
    /// continue from an adopted run's values).
    pub(crate) fn new(
        firewall: &mut Firewall,
        pin_dir: &PinDir,
        plan: &RunPlan,
    ) -> Result<Self, LoaderError> {
        // Read before the array is reopened: one of another length (another version's) is
        // replaced, and its values must still continue. `loader_conns_expired` in particular
        // goes with the adopted fast-path counters, or the eviction count would take the
        // earlier run's expirations for evictions.
        let previous: Vec<u64> = read_loader_counters_at(pin_dir.path())
            .unwrap_or_else(|e| {
                log::warn!("the loader counters start from 0: {e}");
                Vec::new()
            })
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let (counters_pin, _) =
            open_or_create_pinned_array(pin_dir, PIN_LOADER_COUNTERS, LOADER_COUNTER_COUNT)?;
        let counters = LoaderCounters::continuing(&previous);
        let counters_path = pin_dir.pin_path(MAP_COUNTERS);
        let open_error = |source| KernelError::OpenPin {
            path: counters_path.clone(),
            source,
        };
        let bpf_counters = MapData::from_pin(&counters_path)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(open_error)?;
        Ok(Self {
            maps: firewall.take_maps()?,
            bpf_counters,
            max_conns: plan.sizes.conns,
            latency: LatencyStats::default(),
            latency_pin: open_or_create_pinned_array(pin_dir, PIN_INSTALL_LATENCY, 1)?.0,
            counters,
            counters_pin,
            interface_names: HashMap::new(),
            drops: DropEventSink::open(
                &plan.state_dir,
                plan.events_max_bytes,
                plan.pcap.as_deref(),
            )?,
            store: match &plan.store {
                // A hash outlives its connection's idle timeout a little (the sweep's period).
                Some(options) => Some(StoreKeeper::start(
                    options,
                    u64::from(plan.idle_timeout_s.max(60)) * 5 / 4,
                    pin_dir,
                )?),
                None => None,
            },
        })
    }

    /// Waits (at most the catch-up timeout) for the store's first catch-up; logs when it could
    /// not be had (the run goes on with what the maps hold, and catches up when it connects).
    pub(crate) async fn catch_up_with_store(&mut self, plan: &RunPlan) {
        let (Some(store), Some(options)) = (&mut self.store, &plan.store) else {
            return;
        };
        let timeout = Duration::from_secs(options.catch_up_timeout_s);
        if !store
            .catch_up(&mut self.maps, &mut self.counters, timeout)
            .await
        {
            log::warn!(
                "no catch-up from the store within {} s (--store-catch-up-timeout): attaching with what this host's maps hold; joins of connections learned only by peers are judged without their keys until the store answers",
                timeout.as_secs()
            );
        }
        if let Some(store) = &mut self.store {
            store.publish_state();
        }
        self.publish_counters();
    }

    /// Applies what the store sent (and what else is queued).
    pub(crate) fn store_message(&mut self, message: FromStore) {
        if let Some(store) = &mut self.store {
            store.handle_all(message, &mut self.maps, &mut self.counters);
            self.publish_counters();
        }
    }

    /// Records every queued drop event.
    pub(crate) fn drain_drops(&mut self, ring: &mut RingBuf<MapData>) {
        let clock = ClockOffset::now();
        let now_ns = monotonic_now_ns();
        let mut any = false;
        while let Some(record) = ring.next() {
            let event = parse_drop_event(&record);
            drop(record);
            match event {
                Some(event) => {
                    self.drops.record(&event, clock, now_ns, &mut self.counters);
                    any = true;
                }
                None => log::warn!("ignoring a drop event of unexpected size"),
            }
        }
        if any {
            self.publish_counters();
        }
    }

    /// Handles every queued event.
    pub(crate) fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            let event = parse_key_event(&record);
            drop(record);
            match event {
                Some(event) if matches!(event.kind, KEY_EVENT_JOINED | KEY_EVENT_ENDED) => {
                    self.share_proof(&event);
                }
                Some(event) => self.handle(&event),
                None => log::warn!("ignoring a key event of unexpected size"),
            }
        }
    }

    fn handle(&mut self, event: &KeyEvent) {
        let flow = format_flow(&event.flow);
        let iface = self
            .interface_names
            .entry(event.ifindex)
            .or_insert_with(|| interface_name(event.ifindex))
            .clone();
        match install_event(&mut self.maps, event) {
            Ok(InstallOutcome::Installed {
                material: m,
                tokens_restored,
            }) => {
                let latency_ns = monotonic_now_ns().saturating_sub(event.seen_ns);
                self.latency.record_ns(latency_ns);
                log::info!(
                    "connection {flow} on {iface}: token-A {} token-B {}, midstates installed {} µs after the keys were seen",
                    hex(&m.token_a),
                    hex(&m.token_b),
                    latency_ns / 1_000
                );
                log::debug!(
                    "connection {flow}: IDSN-A {:#018x} IDSN-B {:#018x}",
                    m.idsn_a,
                    m.idsn_b
                );
                self.note_tokens_restored(&flow, tokens_restored);
                self.publish_latency();
                self.share(event);
            }
            Ok(InstallOutcome::AlreadyInstalled {
                material: m,
                tokens_restored,
            }) => {
                log::debug!(
                    "connection {flow} on {iface}: token-A {} token-B {} already had its midstates",
                    hex(&m.token_a),
                    hex(&m.token_b)
                );
                self.note_tokens_restored(&flow, tokens_restored);
                self.share(event);
            }
            Ok(InstallOutcome::NoConnection) => {
                log::warn!("connection {flow} on {iface}: gone from the connection map before its midstates were installed");
            }
            Ok(InstallOutcome::KeysDiffer) => {
                log::warn!("connection {flow} on {iface}: the connection map holds other keys than the event; skipped");
            }
            Err(e) => log::warn!("connection {flow} on {iface}: {e}"),
        }
    }

    /// A join the fast path validated, or an end it authenticated: its maps are already up to
    /// date; the shared store, if there is one, tells the other boxes.
    fn share_proof(&mut self, event: &KeyEvent) {
        let token_a = hex(&token_and_idsn(&event.key_a).0);
        if event.kind == KEY_EVENT_ENDED {
            log::info!(
                "connection token-A {token_a} token-B {}: ended (an MP_FASTCLOSE with the right key, or the host's own end)",
                hex(&token_and_idsn(&event.key_b).0)
            );
        } else {
            log::debug!(
                "connection token-A {token_a}: subflow {} validated by a join",
                format_flow(&event.flow)
            );
        }
        if let Some(store) = &mut self.store {
            if event.kind == KEY_EVENT_ENDED {
                store.ended(&event.key_a, &mut self.counters);
            } else {
                store.joined(event, &mut self.counters);
            }
        }
    }

    /// Hands a connection this host learned to the shared store, if there is one.
    fn share(&mut self, event: &KeyEvent) {
        if let Some(store) = &mut self.store {
            store.learned(event, &mut self.counters);
        }
    }

    fn note_tokens_restored(&mut self, flow: &str, restored: u32) {
        if restored > 0 {
            log::debug!("connection {flow}: wrote {restored} token entr{} that were missing or named another connection", if restored == 1 { "y" } else { "ies" });
            self.counters
                .add(LoaderCounter::TokensRestored, u64::from(restored));
            self.publish_counters();
        }
    }

    /// One idle sweep: snapshot, plan, apply, count; then the evictions, from the snapshot's
    /// count of connections.
    pub(crate) fn sweep(&mut self, timeout_s: u32) {
        let started = Instant::now();
        // Before the snapshot (see `ConnMapTally`), and the expirations as of the snapshot.
        let inserted = self.fast_path_counter(Counter::ConnInserted);
        let expired = self.counters.conns_removed();
        let mut outcome = SweepOutcome::default();
        match self.sweep_once(timeout_s, &mut outcome) {
            Ok(conns_counted) => {
                self.counters.add_sweep(&outcome);
                log_sweep(&outcome, timeout_s, started.elapsed());
                if let (Some(inserted), Some(entries)) = (inserted, conns_counted) {
                    self.note_evictions(inserted, expired, entries);
                }
            }
            Err(e) => {
                self.counters.add_swept(&outcome);
                self.counters.add(LoaderCounter::SweepErrors, 1);
                log::warn!("idle sweep failed (retried at the next one): {e}");
            }
        }
        if let Some(store) = &mut self.store {
            store.refresh_active(&self.maps, &mut self.counters);
        }
        self.publish_counters();
    }

    /// Returns the connections counted in the snapshot (`None`: the walk was cut short).
    fn sweep_once(
        &mut self,
        timeout_s: u32,
        outcome: &mut SweepOutcome,
    ) -> Result<Option<u64>, LoaderError> {
        let plan = sweep_maps_into(&mut self.maps, monotonic_now_s, timeout_s, outcome)?;
        for conn in &plan.expired {
            log::debug!(
                "connection token-A {} token-B {}: idle for {} s with {} subflow(s), due for removal",
                hex(&token_and_idsn(&conn.key_a).0),
                hex(&token_and_idsn(&conn.key_b).0),
                conn.idle_s,
                conn.flows.len()
            );
        }
        Ok(plan.conns_counted)
    }

    /// Removes the subflows marked closing that the host's kernel confirms closed, and each
    /// connection with its last one (see [`crate::conn::closed`]).
    pub(crate) fn check_closed(&mut self) {
        let mut outcome = ClosedOutcome::default();
        let result = self.check_closed_once(&mut outcome);
        self.counters.add_closed(&outcome);
        if let Some(store) = &mut self.store {
            for key_a in &outcome.ended_keys_a {
                store.ended(key_a, &mut self.counters);
            }
        }
        if outcome.subflows_closed > 0 {
            log::debug!(
                "closed-subflow check: {} subflow(s) the kernel confirmed closed removed, {} connection(s) with them; {} marked closing are not local (left to the idle sweep)",
                outcome.subflows_closed,
                outcome.conns_closed,
                outcome.not_local
            );
            self.publish_counters();
        }
        if let Err(e) = result {
            log::warn!("closed-subflow check failed (retried at the next one): {e}");
        }
    }

    fn check_closed_once(&mut self, outcome: &mut ClosedOutcome) -> Result<(), LoaderError> {
        let conns = self.maps.all_conns()?;
        let flows = self.maps.all_flows()?;
        let planned = plan_closed(&conns, &flows);
        if planned.is_empty() {
            return Ok(());
        }
        let sockets = KernelSockets::new()
            .map_err(OsError::doing("reading this host's addresses (getifaddrs)"))?;
        Ok(apply_closed(&mut self.maps, &sockets, &planned, outcome)?)
    }

    /// Counts the evictions without a sweep (`--idle-timeout 0`): inserted connections read
    /// first, then the connection map walked, then the removals.
    pub(crate) fn count_evictions(&mut self) {
        let Some(inserted) = self.fast_path_counter(Counter::ConnInserted) else {
            return;
        };
        let expired = self.counters.conns_removed();
        match self.maps.all_conns_walked() {
            Ok((conns, true)) => {
                let entries = u64::try_from(conns.len()).unwrap_or(u64::MAX);
                if self.note_evictions(inserted, expired, entries) > 0 {
                    self.publish_counters();
                }
            }
            Ok((_, false)) => log::debug!(
                "the connection map changed too fast to be counted; evictions are counted at the next check"
            ),
            Err(e) => log::warn!("could not count the connection map's evictions: {e}"),
        }
    }

    /// Raises `loader_conns_evicted` to what the tally shows (the closed connections are read
    /// now, after the entries were counted); logs an increase. Returns it.
    fn note_evictions(&mut self, inserted: u64, expired: u64, entries: u64) -> u64 {
        let Some(closed) = self.fast_path_counter(Counter::ConnClosed) else {
            return 0;
        };
        let tally = ConnMapTally {
            inserted,
            closed,
            expired,
            entries,
        };
        let new = self.counters.note_evictions(&tally);
        if new > 0 {
            log::info!(
                "the connection map is full: {new} connection(s) evicted since the last check ({} in all, loader_conns_evicted), unknown to the fast path from then on; --max-conns {} is too small for this load",
                self.counters.get(LoaderCounter::ConnsEvicted),
                self.max_conns
            );
        }
        new
    }

    /// One of the fast path's counters summed over CPUs; `None` (logged) when it cannot be read.
    fn fast_path_counter(&self, counter: Counter) -> Option<u64> {
        counter_total(&self.bpf_counters, counter)
            .map_err(|e| log::warn!("could not read {}: {e}", counter.name()))
            .ok()
    }

    fn publish_latency(&mut self) {
        if let Some(summary) = self.latency.summary() {
            if let Err(e) = self.latency_pin.set(0, summary, 0) {
                log::warn!("could not publish the install latency: {e}");
            }
        }
    }

    pub(crate) fn publish_counters(&mut self) {
        if let Err(e) = self.counters.publish(&mut self.counters_pin) {
            log::warn!("could not publish the loader counters: {e}");
        }
    }
}

fn log_sweep(outcome: &SweepOutcome, timeout_s: u32, took: std::time::Duration) {
    let removed = outcome.conns_expired + outcome.flows_orphaned_removed;
    let message = format!(
        "idle sweep: forgot {} connection(s) idle for more than {timeout_s} s ({} subflow(s); their tokens stay, so their joins fail open) and {} orphaned subflow(s); kept {} that became active; took {} ms",
        outcome.conns_expired,
        outcome.flows_expired,
        outcome.flows_orphaned_removed,
        outcome.conns_revived,
        took.as_millis()
    );
    if removed > 0 {
        log::info!("{message}");
    } else {
        log::debug!("{message}");
    }
}
