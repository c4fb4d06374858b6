//! Counters kept by `mptcp-loader run` itself (the idle sweep, token re-assertion), as opposed
//! to the per-CPU counters the BPF programs write. They are published to `stats` the same way as
//! the install latency: a small array map the loader creates and pins
//! ([`crate::kernel::pins::PIN_LOADER_COUNTERS`]), since bpffs holds nothing else.

use aya::maps::{Array, MapData};

use crate::{
    conn::sweep::SweepOutcome, kernel::error::KernelError, kernel::pins::PIN_LOADER_COUNTERS,
};

mptcp_common::named_counters! {
    /// Index into the pinned loader-counter array. Names are always `loader_...`, so they cannot
    /// collide with a BPF counter.
    pub enum LoaderCounter {
        /// Idle sweeps completed.
        Sweeps = "loader_sweeps",
        /// Connections removed by the idle sweep (idle longer than `--idle-timeout`).
        ConnsExpired = "loader_conns_expired",
        /// Subflow entries removed together with their expired connection.
        FlowsExpired = "loader_flows_expired",
        /// Subflow entries removed because their connection was gone (evicted) and they were idle.
        FlowsOrphanedRemoved = "loader_flows_orphaned_removed",
        /// Token entries the loader wrote at installation because they were missing (evicted) or
        /// named another connection.
        TokensRestored = "loader_tokens_restored",
        /// Idle sweeps that failed part-way (a map operation failed; see the run's log).
        SweepErrors = "loader_sweep_errors",
        /// Drop events read from the fast path's ring buffer (each one is written to the events
        /// file, and to the pcap file with `--pcap`).
        DropEvents = "loader_drop_events",
        /// Drop events not logged because of the log rate limit (they are still in the events file).
        DropEventLinesSuppressed = "loader_drop_event_lines_suppressed",
        /// Drop events that could not be written to the events or pcap file.
        DropEventWriteErrors = "loader_drop_event_write_errors",
        /// Policy reloads (SIGHUP) that were applied.
        PolicyReloads = "loader_policy_reloads",
        /// Policy reloads rejected (invalid file, or a map write failed): the previous policy stayed.
        PolicyReloadErrors = "loader_policy_reload_errors",
        /// Connections the LRU evicted from the full connection map (`--max-conns` too small for
        /// the load, or a flood of new connections): derived at every sweep, or every minute
        /// without one, from what was inserted, removed and is left (see [`conn_evictions`]); a
        /// lower bound that never decreases.
        ConnsEvicted = "loader_conns_evicted",
        /// Subflows marked closing that the host's kernel confirmed closed (no socket with their
        /// 4-tuple, or one in TIME_WAIT), removed (see [`crate::conn::closed`]).
        SubflowsClosed = "loader_subflows_closed",
        /// Connections removed with their last kernel-confirmed closed subflow.
        ConnsClosed = "loader_conns_closed",
        /// Connections this loader wrote to the shared store (`--store`; see
        /// [`crate::shared_store`]).
        StorePublished = "loader_store_published",
        /// Publications that could not be written (queue full, or the connection failed under
        /// them); what the maps hold is published again at the next reconnection.
        StorePublishFailed = "loader_store_publish_failed",
        /// Peers' connections installed from the store (new to this host).
        StoreApplied = "loader_store_applied",
        /// Peers' connections read from the store that this host already knew with the same keys.
        StoreAlreadyKnown = "loader_store_already_known",
        /// Peers' connections that could not be installed (a map error, other keys under the same
        /// Key-A here, or evicted at once).
        StoreApplyFailed = "loader_store_apply_failed",
        /// Connection hashes whose TTL this loader refreshed (connections active here).
        StoreRefreshed = "loader_store_refreshed",
        /// Times the connection to the store failed (or could not be made).
        StoreDisconnects = "loader_store_disconnects",
        /// Subflows a peer's join validated, tracked here as part of their connection.
        StoreSubflowsApplied = "loader_store_subflows_applied",
        /// Connections removed here because a peer authenticated their end (an MP_FASTCLOSE
        /// with the right key, or its host's own end).
        StoreEndsApplied = "loader_store_ends_applied",
        /// Publications the store refused: a learn of a connection whose end is recorded there,
        /// or whose token another live connection holds; a join or end of a connection it does
        /// not hold as named.
        StoreRefused = "loader_store_refused",
    }
}

/// Number of loader counters (length of the pinned array).
#[allow(clippy::cast_possible_truncation, reason = "a handful of counters")]
pub const LOADER_COUNTER_COUNT: u32 = LoaderCounter::ALL.len() as u32;

/// The loader's counters in memory, published to the pinned array after every change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoaderCounters {
    values: [u64; LoaderCounter::ALL.len()],
}

impl LoaderCounters {
    /// Adds `n` to `counter`.
    pub fn add(&mut self, counter: LoaderCounter, n: u64) {
        let slot = &mut self.values[counter as usize];
        *slot = slot.wrapping_add(n);
    }

    /// The value of `counter`.
    #[must_use]
    pub fn get(&self, counter: LoaderCounter) -> u64 {
        self.values[counter as usize]
    }

    /// Adds up what one sweep removed (and counts the sweep).
    pub fn add_sweep(&mut self, outcome: &SweepOutcome) {
        self.add(LoaderCounter::Sweeps, 1);
        self.add_swept(outcome);
    }

    /// Adds up what a sweep removed, also one that failed part-way (every removal must be
    /// counted, or it would look like an eviction).
    pub fn add_swept(&mut self, outcome: &SweepOutcome) {
        self.add(LoaderCounter::ConnsExpired, outcome.conns_expired);
        self.add(LoaderCounter::FlowsExpired, outcome.flows_expired);
        self.add(
            LoaderCounter::FlowsOrphanedRemoved,
            outcome.flows_orphaned_removed,
        );
    }

    /// Connections the loader itself removed: expired by the idle sweep, closed with their
    /// last kernel-confirmed subflow, or ended by a peer (the eviction count subtracts them).
    #[must_use]
    pub fn conns_removed(&self) -> u64 {
        self.get(LoaderCounter::ConnsExpired)
            .wrapping_add(self.get(LoaderCounter::ConnsClosed))
            .wrapping_add(self.get(LoaderCounter::StoreEndsApplied))
    }

    /// Adds up what a closed-subflow check removed.
    pub fn add_closed(&mut self, outcome: &crate::conn::closed::ClosedOutcome) {
        self.add(LoaderCounter::SubflowsClosed, outcome.subflows_closed);
        self.add(LoaderCounter::ConnsClosed, outcome.conns_closed);
    }

    /// Raises `counter` to `value` if that is more (a derived counter that must never go
    /// down); returns by how much it went up.
    pub fn raise_to(&mut self, counter: LoaderCounter, value: u64) -> u64 {
        let slot = &mut self.values[counter as usize];
        let increase = value.saturating_sub(*slot);
        *slot += increase;
        increase
    }

    /// Takes the evictions `tally` shows into [`LoaderCounter::ConnsEvicted`]; returns how many
    /// are new since the last tally.
    pub fn note_evictions(&mut self, tally: &ConnMapTally) -> u64 {
        self.raise_to(LoaderCounter::ConnsEvicted, conn_evictions(tally))
    }

    /// Counters that continue from values published earlier (by a previous run), in
    /// [`LoaderCounter::ALL`] order; missing ones start at zero.
    #[must_use]
    pub fn continuing(values: &[u64]) -> Self {
        let mut counters = Self::default();
        for (slot, value) in counters.values.iter_mut().zip(values) {
            *slot = *value;
        }
        counters
    }

    /// Name and value of every counter, in [`LoaderCounter::ALL`] order.
    #[must_use]
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        LoaderCounter::ALL
            .iter()
            .map(|c| (c.name(), self.get(*c)))
            .collect()
    }

    /// Writes every counter into the pinned array.
    ///
    /// # Errors
    /// When the array cannot be written.
    pub fn publish(&self, pin: &mut Array<MapData, u64>) -> Result<(), KernelError> {
        for (index, value) in (0u32..).zip(self.values) {
            pin.set(index, value, 0)
                .map_err(KernelError::map(PIN_LOADER_COUNTERS))?;
        }
        Ok(())
    }
}

/// What the number of entries in the connection map follows from, read while the fast path
/// keeps changing it. Every entry the map ever held was inserted by the fast path (counted
/// exactly, `aux_conn_inserted`) and has left it in one of three ways: removed by the fast path
/// (`aux_conn_closed`), removed by the loader (`loader_conns_expired` by the idle sweep,
/// `loader_conns_closed` by the closed-subflow check), or evicted by the LRU; or it is still
/// there. So evictions = inserted - closed - expired - entries.
///
/// The three counters only grow, so reading `inserted` *before* counting the entries and the
/// removals *after* can only make the difference smaller than the evictions at the end of the
/// count, never larger (provided the walk that counted the entries was complete): the result
/// is a lower bound that a later tally catches up on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnMapTally {
    /// `aux_conn_inserted`, read before the entries were counted.
    pub inserted: u64,
    /// `aux_conn_closed`, read after the entries were counted.
    pub closed: u64,
    /// The loader's own removals ([`LoaderCounters::conns_removed`]) as of the count. The idle
    /// sweep and the closed-subflow check, in the same task as the tally, are its only writers:
    /// a sweep that counts the entries from its own snapshot passes the value from before its
    /// removals (they are still among the entries).
    pub expired: u64,
    /// Entries counted in the connection map (by a complete walk of its keys).
    pub entries: u64,
}

/// Connections evicted from the connection map according to `tally`:
/// inserted - closed - expired - entries, or 0 when that is negative (concurrent changes).
#[must_use]
pub const fn conn_evictions(tally: &ConnMapTally) -> u64 {
    tally
        .inserted
        .saturating_sub(tally.closed)
        .saturating_sub(tally.expired)
        .saturating_sub(tally.entries)
}

/// Reads the loader counters from their pinned array, in [`LoaderCounter::ALL`] order. An array
/// shorter than ours (an older run) yields only the counters it has.
///
/// # Errors
/// When the array cannot be read.
pub fn read_loader_counters(
    pin: &Array<MapData, u64>,
) -> Result<Vec<(&'static str, u64)>, aya::maps::MapError> {
    LoaderCounter::ALL
        .iter()
        .zip(0..pin.len())
        .map(|(c, index)| Ok((c.name(), pin.get(&index, 0)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::counters::Counter;

    #[test]
    fn names_are_unique_prefixed_and_apart_from_the_bpf_counters() {
        for (i, c) in LoaderCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(c.name().starts_with("loader_"), "{}", c.name());
            assert_eq!(
                LoaderCounter::ALL
                    .iter()
                    .filter(|o| o.name() == c.name())
                    .count(),
                1
            );
            assert!(Counter::ALL.iter().all(|b| b.name() != c.name()));
        }
    }

    #[test]
    fn sweeps_add_up() {
        let mut counters = LoaderCounters::default();
        let outcome = SweepOutcome {
            conns_expired: 2,
            flows_expired: 3,
            flows_orphaned_removed: 5,
            conns_revived: 9,
        };
        counters.add_sweep(&outcome);
        counters.add_sweep(&outcome);
        counters.add(LoaderCounter::TokensRestored, 1);
        let named = counters.named();
        assert_eq!(
            named,
            [
                ("loader_sweeps", 2),
                ("loader_conns_expired", 4),
                ("loader_flows_expired", 6),
                ("loader_flows_orphaned_removed", 10),
                ("loader_tokens_restored", 1),
                ("loader_sweep_errors", 0),
                ("loader_drop_events", 0),
                ("loader_drop_event_lines_suppressed", 0),
                ("loader_drop_event_write_errors", 0),
                ("loader_policy_reloads", 0),
                ("loader_policy_reload_errors", 0),
                ("loader_conns_evicted", 0),
                ("loader_subflows_closed", 0),
                ("loader_conns_closed", 0),
                ("loader_store_published", 0),
                ("loader_store_publish_failed", 0),
                ("loader_store_applied", 0),
                ("loader_store_already_known", 0),
                ("loader_store_apply_failed", 0),
                ("loader_store_refreshed", 0),
                ("loader_store_disconnects", 0),
                ("loader_store_subflows_applied", 0),
                ("loader_store_ends_applied", 0),
                ("loader_store_refused", 0),
            ]
        );
    }

    #[test]
    fn evictions_are_what_neither_a_removal_nor_the_map_accounts_for() {
        let tally = |inserted, closed, expired, entries| ConnMapTally {
            inserted,
            closed,
            expired,
            entries,
        };
        // 5121 connections into a map of 512, none closed or expired, 509 left.
        assert_eq!(conn_evictions(&tally(5121, 0, 0, 509)), 4612);
        assert_eq!(conn_evictions(&tally(100, 30, 20, 50)), 0);
        assert_eq!(conn_evictions(&tally(100, 30, 20, 40)), 10);
        // Inserts after `inserted` was read, or removals before `closed` was read, can push the
        // difference below zero: no eviction, never a negative count.
        assert_eq!(conn_evictions(&tally(100, 60, 20, 40)), 0);
        assert_eq!(conn_evictions(&tally(0, 0, 0, 7)), 0);
        assert_eq!(conn_evictions(&tally(10, 20, 0, 0)), 0);
    }

    #[test]
    fn the_eviction_counter_only_goes_up() {
        let mut counters = LoaderCounters::default();
        let tally = |inserted, entries| ConnMapTally {
            inserted,
            closed: 3,
            expired: 2,
            entries,
        };
        assert_eq!(counters.note_evictions(&tally(100, 95)), 0);
        assert_eq!(counters.note_evictions(&tally(200, 150)), 45);
        assert_eq!(counters.get(LoaderCounter::ConnsEvicted), 45);
        // A lower estimate (the map was counted while inserts raced ahead): kept at 45.
        assert_eq!(counters.note_evictions(&tally(200, 190)), 0);
        assert_eq!(counters.get(LoaderCounter::ConnsEvicted), 45);
        assert_eq!(counters.note_evictions(&tally(300, 245)), 5);
        assert_eq!(counters.get(LoaderCounter::ConnsEvicted), 50);
        // Continued from an earlier run: the estimate starts from where it was.
        let mut continued = LoaderCounters::continuing(
            &counters.named().iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        );
        assert_eq!(continued.note_evictions(&tally(300, 245)), 0);
        assert_eq!(continued.raise_to(LoaderCounter::ConnsEvicted, 49), 0);
        assert_eq!(continued.raise_to(LoaderCounter::ConnsEvicted, 52), 2);
    }
}
