//! The store's state as `stats`, `status` and the metrics show it: a small pinned array like the
//! install latency ([`PIN_STORE_STATE`]), written by the run whenever the state changes.

use std::path::Path;

use aya::maps::{Array, Map, MapData};

use crate::{kernel::error::KernelError, observe::latency::LatencySummary};

/// Pin name of the one-entry [`StoreState`] array (absent for a run without a store).
pub const PIN_STORE_STATE: &str = "store_state";
/// JSON key of the store's state in `stats --json`.
pub const JSON_STORE_KEY: &str = "store";

/// Value of [`PIN_STORE_STATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreState {
    /// 1 while connected to the store, 0 otherwise.
    pub connected: u64,
    /// 1 once the catch-up of the current connection is done.
    pub caught_up: u64,
    /// Publications queued and not yet written (how far this loader's publishing lags).
    pub queued: u64,
    /// Connection hashes the last catch-up read.
    pub catch_up_conns: u64,
    /// Unix time (ns) of the last change of `connected`.
    pub since_unix_ns: u64,
    /// Replication delay of the peers' connections read from the stream: from their fast path
    /// seeing the keys to this host's maps holding them (µs; across hosts this includes their
    /// clock difference).
    pub replication: LatencySummary,
}
const _: () = assert!(size_of::<StoreState>() == 80);

// SAFETY: repr(C), u64s and a repr(C) struct of u64s, no padding.
unsafe impl aya::Pod for StoreState {}

impl StoreState {
    /// The state as JSON (`replication_delay_us` only once there is a sample).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "connected": self.connected == 1,
            "caught_up": self.caught_up == 1,
            "queued": self.queued,
            "catch_up_conns": self.catch_up_conns,
        });
        if self.replication.count > 0 {
            json["replication_delay_us"] = self.replication.to_json();
        }
        json
    }

    /// `store: connected, caught up (12 connections), 0 queued; replication delay: ...`.
    #[must_use]
    pub fn line(&self) -> String {
        let mut line = format!(
            "store: {}, {}, {} queued",
            if self.connected == 1 {
                "connected"
            } else {
                "NOT connected (peers' connections are not installed; retrying)"
            },
            if self.caught_up == 1 {
                format!("caught up ({} connections read)", self.catch_up_conns)
            } else {
                "not caught up".to_owned()
            },
            self.queued
        );
        if self.replication.count > 0 {
            let r = &self.replication;
            line.push_str(&format!(
                "; replication delay over {} connections: median {} µs, p99 {} µs, max {} µs",
                r.count, r.median_us, r.p99_us, r.max_us
            ));
        }
        line
    }
}

/// Reads the pinned store state; `None` for a run without a store.
///
/// # Errors
/// When the pin exists but cannot be read.
pub fn read_store_state(dir: &Path) -> Result<Option<StoreState>, KernelError> {
    let path = dir.join(PIN_STORE_STATE);
    if !path.exists() {
        return Ok(None);
    }
    let open_error = |source| KernelError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    let map: Array<_, StoreState> = Map::from_map_data(data)
        .and_then(Array::try_from)
        .map_err(open_error)?;
    map.get(&0, 0).map(Some).map_err(open_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_disconnected() {
        let state = StoreState::default();
        assert!(state.line().contains("NOT connected"));
        assert_eq!(state.to_json()["connected"], false);
        let state = StoreState {
            connected: 1,
            caught_up: 1,
            catch_up_conns: 3,
            replication: LatencySummary {
                count: 2,
                min_us: 100,
                median_us: 150,
                p99_us: 200,
                max_us: 200,
            },
            ..StoreState::default()
        };
        assert!(
            state.line().contains("median 150 µs, p99 200 µs"),
            "{}",
            state.line()
        );
        assert_eq!(state.to_json()["replication_delay_us"]["p99"], 200);
    }
}
