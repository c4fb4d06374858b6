//! `mptcp-loader stats`: reads what the `run` of this network namespace pinned.
//!
//! `--json` prints one object:
//! - every BPF counter name -> number, in `Counter::ALL` order (summed over CPUs);
//! - every loader counter (`loader_...`, kept by `run` itself: the idle sweep and token
//!   re-assertion; see [`LoaderCounter`](crate::observe::loader_counters::LoaderCounter)) -> number;
//! - `"maps": {MAP_NAME: {"entries": n, "max": max_entries}}` for the connection, subflow,
//!   token and pending-join maps (entries counted by walking the keys);
//! - `"install_latency_us": {count, min, median, p99, max}` once the run has installed a
//!   connection's midstates.
//!
//! The table shows the same, in sections.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use mptcp_common::{
    counters::Counter,
    maps::{
        ConnState, FlowKey, FlowRef, JoinState, Token, TokenRef, MAP_CONNS, MAP_COUNTERS,
        MAP_FLOWS, MAP_JOINS, MAP_TOKENS,
    },
};

use crate::{
    kernel::error::KernelError,
    kernel::pins::{self, PIN_INSTALL_LATENCY, PIN_LOADER_COUNTERS},
    kernel::store::{distinct_keys, sum_counters, MapFill},
    observe::error::ObserveError,
    observe::latency::LatencySummary,
    observe::loader_counters::read_loader_counters,
    observe::store_state::{read_store_state, StoreState, JSON_STORE_KEY},
};

/// Key of the latency summary in `stats --json`.
pub const JSON_LATENCY_KEY: &str = "install_latency_us";
/// Key of the map fill levels in `stats --json`.
pub const JSON_MAPS_KEY: &str = "maps";

/// What `stats` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsReport {
    /// BPF counter name and value, in `Counter::ALL` order.
    pub counters: Vec<(&'static str, u64)>,
    /// The loader's own counters, in `LoaderCounter::ALL` order (empty for a run that does not
    /// publish them).
    pub loader: Vec<(&'static str, u64)>,
    /// Fill levels of the connection, subflow, token and pending-join maps.
    pub maps: Vec<MapFill>,
    /// The run's install-latency summary, if it has installed anything.
    pub install_latency: Option<LatencySummary>,
    /// Whether a live run holds the pin directory (`false`: pins left behind by a dead run).
    pub live: bool,
    /// The shared store's state, for a run with `--store`.
    pub store: Option<StoreState>,
}

/// Where the pins of `pin_dir` can be reached from here: `pin_dir` itself, or the same directory
/// in the mount namespace of another process of this network namespace (see
/// [`pins::views_from_other_mount_namespaces`]).
///
/// # Errors
/// [`ObserveError::NoActiveRun`] when there are no pins.
pub fn locate_pins(pin_dir: &Path) -> Result<PathBuf, ObserveError> {
    if pin_dir.join(MAP_COUNTERS).exists() {
        return Ok(pin_dir.to_path_buf());
    }
    let views: Vec<PathBuf> = pins::views_from_other_mount_namespaces(pin_dir)
        .into_iter()
        .filter(|view| view.join(MAP_COUNTERS).exists())
        .collect();
    // Prefer the directory a live run holds over pins a dead run left behind.
    let chosen = views
        .iter()
        .find(|view| pins::lock_owner(view).is_some())
        .or(views.first());
    chosen.cloned().ok_or_else(|| ObserveError::NoActiveRun {
        pin_dir: pin_dir.to_path_buf(),
    })
}

fn open_pin(path: &Path) -> Result<Map, KernelError> {
    let open_error = |source| KernelError::OpenPin {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(open_error)?;
    Map::from_map_data(data).map_err(open_error)
}

/// Reads the pinned counters of `pin_dir` (as located by [`locate_pins`]), summed over CPUs.
///
/// # Errors
/// [`ObserveError::NoActiveRun`] without pins; map errors otherwise.
pub fn read_counters(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>, ObserveError> {
    let dir = locate_pins(pin_dir)?;
    Ok(read_counters_at(&dir)?)
}

fn read_counters_at(dir: &Path) -> Result<Vec<(&'static str, u64)>, KernelError> {
    let path = dir.join(MAP_COUNTERS);
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(open_pin(&path)?).map_err(|source| KernelError::OpenPin {
            path: path.clone(),
            source,
        })?;
    sum_counters(&counters).map_err(KernelError::map(MAP_COUNTERS))
}

/// Reads the pinned install-latency summary, `None` when the run has not published one yet.
///
/// # Errors
/// When the pin exists but cannot be read.
pub fn read_install_latency(dir: &Path) -> Result<Option<LatencySummary>, KernelError> {
    let path = dir.join(PIN_INSTALL_LATENCY);
    if !path.exists() {
        return Ok(None);
    }
    let map: Array<_, LatencySummary> =
        Array::try_from(open_pin(&path)?).map_err(|source| KernelError::OpenPin {
            path: path.clone(),
            source,
        })?;
    let summary = map
        .get(&0, 0)
        .map_err(|source| KernelError::OpenPin { path, source })?;
    Ok((summary.count > 0).then_some(summary))
}

/// Reads the loader's counters from their pin; empty when there is none (an older run).
///
/// # Errors
/// When the pin exists but cannot be read.
pub fn read_loader_counters_at(dir: &Path) -> Result<Vec<(&'static str, u64)>, KernelError> {
    let path = dir.join(PIN_LOADER_COUNTERS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let open_error = |source| KernelError::OpenPin {
        path: path.clone(),
        source,
    };
    let map: Array<_, u64> = Array::try_from(open_pin(&path)?).map_err(open_error)?;
    read_loader_counters(&map).map_err(open_error)
}

/// Entries and capacity of one pinned hash map.
fn map_fill<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<MapFill, KernelError> {
    let path = dir.join(name);
    let open_error = |source| KernelError::OpenPin {
        path: path.clone(),
        source,
    };
    let map: HashMap<_, K, V> = HashMap::try_from(open_pin(&path)?).map_err(open_error)?;
    let max = aya::maps::IterableMap::map(&map)
        .info()
        .map_err(open_error)?
        .max_entries();
    let entries = distinct_keys(&map, name)?.len();
    Ok(MapFill {
        name,
        entries: u64::try_from(entries).unwrap_or(u64::MAX),
        max,
    })
}

/// Fill levels of the connection, subflow, token and pending-join maps pinned in `dir`.
///
/// # Errors
/// When a pin is missing or cannot be read.
pub fn read_map_fill(dir: &Path) -> Result<Vec<MapFill>, KernelError> {
    Ok(vec![
        map_fill::<u64, ConnState>(dir, MAP_CONNS)?,
        map_fill::<FlowKey, FlowRef>(dir, MAP_FLOWS)?,
        map_fill::<Token, TokenRef>(dir, MAP_TOKENS)?,
        map_fill::<FlowKey, JoinState>(dir, MAP_JOINS)?,
    ])
}

/// Everything `stats` shows for `pin_dir`.
///
/// # Errors
/// See [`read_counters`].
pub fn read_report(pin_dir: &Path) -> Result<StatsReport, ObserveError> {
    let dir = locate_pins(pin_dir)?;
    Ok(StatsReport {
        counters: read_counters_at(&dir)?,
        loader: read_loader_counters_at(&dir)?,
        maps: read_map_fill(&dir)?,
        install_latency: read_install_latency(&dir)?,
        live: pins::lock_owner(&dir).is_some(),
        store: read_store_state(&dir)?,
    })
}

/// The `--json` output: one object, no trailing text.
#[must_use]
pub fn format_json(report: &StatsReport) -> String {
    let mut object = serde_json::Map::new();
    for (name, value) in report.counters.iter().chain(&report.loader) {
        object.insert((*name).to_owned(), (*value).into());
    }
    let maps: serde_json::Map<String, serde_json::Value> = report
        .maps
        .iter()
        .map(|m| {
            let fill = serde_json::json!({"entries": m.entries, "max": m.max});
            (m.name.to_owned(), fill)
        })
        .collect();
    object.insert(JSON_MAPS_KEY.to_owned(), maps.into());
    if let Some(latency) = &report.install_latency {
        object.insert(JSON_LATENCY_KEY.to_owned(), latency.to_json());
    }
    if let Some(store) = &report.store {
        object.insert(JSON_STORE_KEY.to_owned(), store.to_json());
    }
    serde_json::Value::Object(object).to_string()
}

/// The table output: one `name value` line per BPF counter, the loader's counters, the map fill
/// levels, then the latency line if any.
#[must_use]
pub fn format_table(report: &StatsReport) -> String {
    let width = report
        .counters
        .iter()
        .chain(&report.loader)
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("counter".len());
    let mut out = format!("{:<width$}  {:>12}\n", "counter", "value");
    for (name, value) in &report.counters {
        let _ = writeln!(out, "{name:<width$}  {value:>12}");
    }
    if !report.loader.is_empty() {
        out.push_str("\nkept by `mptcp-loader run` itself, not by the BPF programs:\n");
        for (name, value) in &report.loader {
            let _ = writeln!(out, "{name:<width$}  {value:>12}");
        }
    }
    if !report.maps.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<width$}  {:>12}  {:>12}  {:>6}",
            "map", "entries", "max_entries", "fill"
        );
        for m in &report.maps {
            let percent = if m.max == 0 {
                0.0
            } else {
                // Display only: precision loss beyond 2^52 entries does not matter.
                let ratio = m.entries as f64 / f64::from(m.max);
                ratio * 100.0
            };
            let _ = writeln!(
                out,
                "{:<width$}  {:>12}  {:>12}  {percent:>5.1}%",
                m.name, m.entries, m.max
            );
        }
    }
    if let Some(latency) = &report.install_latency {
        let _ = writeln!(out, "\n{}", latency.line());
    }
    if let Some(store) = &report.store {
        let _ = writeln!(out, "{}", store.line());
    }
    out
}

/// One line with the total and every non-zero counter, for the end of a run.
#[must_use]
pub fn format_summary_line(counters: &[(&'static str, u64)]) -> String {
    let packets: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_packet_reason())
        .filter_map(|c| counters.iter().find(|(n, _)| *n == c.name()))
        .map(|(_, v)| *v)
        .sum();
    let mut line = format!("final counters: packets={packets}");
    for (name, value) in counters.iter().filter(|(_, v)| *v != 0) {
        let _ = write!(line, " {name}={value}");
    }
    if counters.iter().any(|(_, v)| *v == 0) {
        line.push_str(" (others 0)");
    }
    line
}

/// Every fast-path counter, valued by its index: distinct numbers for the formatting tests.
#[cfg(test)]
pub(crate) fn numbered_counters() -> Vec<(&'static str, u64)> {
    Counter::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name(), i as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::loader_counters::LoaderCounter;

    fn report(latency: Option<LatencySummary>) -> StatsReport {
        StatsReport {
            counters: numbered_counters(),
            loader: LoaderCounter::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name(), 100 + i as u64))
                .collect(),
            maps: vec![
                MapFill {
                    name: MAP_CONNS,
                    entries: 3,
                    max: 65_536,
                },
                MapFill {
                    name: MAP_JOINS,
                    entries: 0,
                    max: 16_384,
                },
            ],
            install_latency: latency,
            live: true,
            store: None,
        }
    }

    #[test]
    fn json_is_one_object_in_counter_order() {
        let text = format_json(&report(None));
        assert!(!text.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let names: Vec<&str> = Counter::ALL
            .iter()
            .map(|c| c.name())
            .chain(LoaderCounter::ALL.iter().map(|c| c.name()))
            .chain([JSON_MAPS_KEY])
            .collect();
        assert_eq!(keys, names);
        assert_eq!(object["not_tcp"], 0);
        assert_eq!(object["tcp_no_mptcp"], 4);
        assert_eq!(object["loader_sweeps"], 100);
        assert_eq!(object["loader_conns_expired"], 101);
    }

    #[test]
    fn every_new_counter_is_shown() {
        // Nothing is hard-coded: the egress and MP_JOIN counters come from Counter::ALL.
        let text = format_json(&report(None));
        let table = format_table(&report(None));
        for name in [
            "egress",
            "join_synack_valid",
            "aux_egress_keys_learned",
            "loader_flows_orphaned_removed",
        ] {
            assert!(
                text.contains(&format!("\"{name}\":")),
                "{name} missing from JSON"
            );
            assert!(
                table.lines().any(|l| l.starts_with(name)),
                "{name} missing from the table"
            );
        }
    }

    #[test]
    fn maps_show_entries_and_capacity() {
        let value: serde_json::Value = serde_json::from_str(&format_json(&report(None))).unwrap();
        assert_eq!(value[JSON_MAPS_KEY][MAP_CONNS]["entries"], 3);
        assert_eq!(value[JSON_MAPS_KEY][MAP_CONNS]["max"], 65_536);
        assert_eq!(value[JSON_MAPS_KEY][MAP_JOINS]["entries"], 0);
        let table = format_table(&report(None));
        assert!(
            table.contains("kept by `mptcp-loader run` itself, not by the BPF programs"),
            "{table}"
        );
        let conns = table.lines().find(|l| l.starts_with(MAP_CONNS)).unwrap();
        let fields: Vec<&str> = conns.split_whitespace().collect();
        assert_eq!(fields, [MAP_CONNS, "3", "65536", "0.0%"]);
    }

    #[test]
    fn json_and_table_carry_the_latency() {
        let lat = LatencySummary {
            count: 2,
            min_us: 10,
            median_us: 10,
            p99_us: 30,
            max_us: 30,
        };
        let value: serde_json::Value =
            serde_json::from_str(&format_json(&report(Some(lat)))).unwrap();
        assert_eq!(value[JSON_LATENCY_KEY]["p99"], 30);
        let table = format_table(&report(Some(lat)));
        assert!(table.contains("install latency: 2 connections"));
        assert!(table
            .lines()
            .any(|l| l.starts_with("not_tcp") && l.ends_with(" 0")));
    }

    #[test]
    fn summary_line_counts_packets_only() {
        let counters = vec![
            ("not_tcp", 5),
            ("tcp_no_mptcp", 2),
            ("aux_key_event_lost", 7),
            ("malformed", 0),
        ];
        assert_eq!(
            format_summary_line(&counters),
            "final counters: packets=7 not_tcp=5 tcp_no_mptcp=2 aux_key_event_lost=7 (others 0)"
        );
    }

    #[test]
    fn no_pins_means_no_active_run() {
        let dir = Path::new("/nonexistent/mptcp-fw/netns-1");
        let err = read_report(dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no mptcp-loader run is active in this network namespace (no pins under \
             /nonexistent/mptcp-fw/netns-1); start `mptcp-loader run --iface IF`"
        );
    }
}
