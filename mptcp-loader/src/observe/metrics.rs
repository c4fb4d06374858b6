//! `run --metrics ADDR:PORT`: the counters, map fill levels and policy in force, in the
//! Prometheus text exposition format (version 0.0.4), over plain HTTP/1.1 (`GET /metrics`).
//!
//! Everything is read at scrape time from what `stats` reads (the run's pins: BPF counters
//! summed over CPUs, loader counters, map fill levels, install latency) plus the policy maps
//! (their fill and the configuration in force). Metric families:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mptcp_fw_packets_total` | counter | `reason`: a packet reason of `stats` (one per segment) |
//! | `mptcp_fw_aux_events_total` | counter | `counter`: an `aux_*` counter of `stats` |
//! | `mptcp_fw_loader_events_total` | counter | `counter`: a `loader_*` counter of `stats` (`loader_conns_evicted`: LRU evictions of the connection map) |
//! | `mptcp_fw_map_entries` / `mptcp_fw_map_max_entries` | gauge | `map`: BPF map name |
//! | `mptcp_fw_install_latency_microseconds` | gauge | `stat`: min, median, p99, max |
//! | `mptcp_fw_connections_installed_total` | counter | |
//! | `mptcp_fw_store_connected`, `mptcp_fw_store_caught_up`, `mptcp_fw_store_queued` | gauge | (runs with `--store`) |
//! | `mptcp_fw_store_replication_delay_microseconds` | gauge | `stat`: min, median, p99, max |
//! | `mptcp_fw_policy_enforce` | gauge | none (global), or `iface` (per-interface mode) |
//! | `mptcp_fw_policy_*` | gauge | the other settings of `MPTCP_CONFIG` |
//!
//! The server is deliberately small: one request per connection (`Connection: close`), a
//! request head of at most 8 KiB read within 10 s, at most 16 connections at once; the maps are
//! read on a blocking thread so a scrape never stalls the event loop.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use mptcp_common::{
    counters::Counter,
    maps::{Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, MODE_ENFORCE, UNKNOWN_DROP},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::{
    kernel::preflight::interface_name,
    kernel::store::MapFill,
    observe::error::ObserveError,
    observe::stats::{read_report, StatsReport},
    policy::{PolicyMaps, PolicyState, PolicyStore as _},
};

/// Longest request head accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more get 503.
const MAX_CONNECTIONS: usize = 16;
/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listens on `addr` for `--metrics`. Called before anything is loaded or attached, so a busy
/// or invalid address ends the run before it touches the kernel.
///
/// # Errors
/// [`ObserveError::MetricsListen`] when the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ObserveError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError::MetricsListen { addr, source })
}

/// What a scrape reads: the run's pin directory and the policy maps.
#[derive(Debug)]
pub struct MetricsSource {
    pin_dir: PathBuf,
    policy: Option<PolicyMaps>,
}

impl MetricsSource {
    /// Reads the pins under `pin_dir` and, if given, the policy maps.
    #[must_use]
    pub fn new(pin_dir: PathBuf, policy: Option<PolicyMaps>) -> Self {
        Self { pin_dir, policy }
    }

    /// The exposition text of this instant.
    ///
    /// # Errors
    /// When a pin or map cannot be read.
    pub fn scrape(&self) -> Result<String, ObserveError> {
        let report = read_report(&self.pin_dir)?;
        let (fill, state) = match &self.policy {
            Some(maps) => (maps.fill()?, Some(maps.read_state()?)),
            None => (Vec::new(), None),
        };
        Ok(render(&report, &fill, state.as_ref(), interface_name))
    }
}

/// Starts serving `source` on `listener` in a task of the current runtime.
pub fn spawn(listener: TcpListener, source: MetricsSource) -> JoinHandle<()> {
    let source = Arc::new(source);
    tokio::spawn(serve(listener, move || {
        let source = Arc::clone(&source);
        async move {
            tokio::task::spawn_blocking(move || source.scrape().map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(format!("the scrape failed: {e}")))
        }
    }))
}

/// Accepts connections forever, answering each with one response (see [`route`]).
pub async fn serve<F, Fut>(listener: TcpListener, scrape: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send,
{
    let scrape = Arc::new(scrape);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                log::warn!("metrics: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (scrape, active) = (Arc::clone(&scrape), Arc::clone(&active));
        tokio::spawn(async move {
            let busy = active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS;
            if let Err(e) = handle(stream, busy, &*scrape).await {
                log::debug!("metrics: {e}");
            }
            active.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn handle<F, Fut>(mut stream: TcpStream, busy: bool, scrape: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let response = if busy {
        response(
            503,
            "Service Unavailable",
            "text/plain",
            "too many scrapes at once\n",
            false,
        )
    } else {
        let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
            Ok(head) => head?,
            Err(_) => return Ok(()),
        };
        match route(&head) {
            Route::Metrics { head_only } => match scrape().await {
                Ok(body) => response(200, "OK", CONTENT_TYPE, &body, head_only),
                Err(e) => {
                    log::warn!("metrics: {e}");
                    let body = format!("could not read the counters: {e}\n");
                    response(500, "Internal Server Error", "text/plain", &body, head_only)
                }
            },
            Route::Index { head_only } => response(
                200,
                "OK",
                "text/plain; charset=utf-8",
                "mptcp-loader: the metrics are at /metrics\n",
                head_only,
            ),
            Route::NotFound => response(404, "Not Found", "text/plain", "try /metrics\n", false),
            Route::MethodNotAllowed => response(
                405,
                "Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n",
                false,
            ),
            Route::BadRequest => response(400, "Bad Request", "text/plain", "bad request\n", false),
        }
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads until the blank line that ends the request head (or EOF, or the size limit).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() >= MAX_REQUEST_HEAD {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (any query string), or `HEAD`.
    Metrics {
        /// `HEAD`: headers only.
        head_only: bool,
    },
    /// `GET /`.
    Index {
        /// `HEAD`: headers only.
        head_only: bool,
    },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP request line.
    BadRequest,
}

/// Routes a request by its request line.
#[must_use]
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics { head_only },
        Some("/") => Route::Index { head_only },
        _ => Route::NotFound,
    }
}

fn response(code: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> String {
    // 405 must say what is allowed.
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\n{allow}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: HELP, TYPE, then each sample (`labels` already formatted).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn label(key: &str, value: &str) -> String {
    format!("{key}=\"{}\"", escape(value))
}

/// The exposition text for a stats report, the policy maps' fill and the policy state in force
/// (`name_of` names interface indexes). Pure: tested without a kernel.
#[must_use]
pub fn render(
    report: &StatsReport,
    policy_fill: &[MapFill],
    policy: Option<&PolicyState>,
    name_of: impl Fn(u32) -> String,
) -> String {
    let mut out = String::new();
    let is_reason = |name: &str| {
        Counter::ALL
            .iter()
            .find(|c| c.name() == name)
            .is_none_or(|c| c.is_packet_reason())
    };
    let (reasons, aux): (Vec<_>, Vec<_>) = report
        .counters
        .iter()
        .partition(|(name, _)| is_reason(name));
    let samples = |list: &[&(&str, u64)], key: &str| -> Vec<(String, u64)> {
        list.iter().map(|(n, v)| (label(key, n), *v)).collect()
    };
    family(
        &mut out,
        "mptcp_fw_packets_total",
        "counter",
        "Segments seen by the fast path, by the one reason each was counted under (the packet reasons of `mptcp-loader stats`; egress: the host's own segments).",
        &samples(&reasons, "reason"),
    );
    family(
        &mut out,
        "mptcp_fw_aux_events_total",
        "counter",
        "Events inside a segment's processing (the aux_* counters of `mptcp-loader stats`).",
        &samples(&aux, "counter"),
    );
    let loader: Vec<&(&str, u64)> = report.loader.iter().collect();
    family(
        &mut out,
        "mptcp_fw_loader_events_total",
        "counter",
        "What `mptcp-loader run` itself did or counted: idle sweeps, token re-assertion, policy reloads, connections evicted from the full connection map (the loader_* counters of `mptcp-loader stats`).",
        &samples(&loader, "counter"),
    );
    let maps: Vec<&MapFill> = report.maps.iter().chain(policy_fill).collect();
    family(
        &mut out,
        "mptcp_fw_map_entries",
        "gauge",
        "Entries in a BPF map now.",
        &maps
            .iter()
            .map(|m| (label("map", m.name), m.entries))
            .collect::<Vec<_>>(),
    );
    family(
        &mut out,
        "mptcp_fw_map_max_entries",
        "gauge",
        "Capacity of a BPF map (max_entries); LRU maps evict their least recently used entry when full.",
        &maps
            .iter()
            .map(|m| (label("map", m.name), u64::from(m.max)))
            .collect::<Vec<_>>(),
    );
    let latency = report.install_latency.unwrap_or_default();
    family(
        &mut out,
        "mptcp_fw_connections_installed_total",
        "counter",
        "Connections whose HMAC midstates the loader installed.",
        &[(String::new(), latency.count)],
    );
    if report.install_latency.is_some() {
        family(
            &mut out,
            "mptcp_fw_install_latency_microseconds",
            "gauge",
            "Time from the fast path seeing a connection's keys to the loader installing its midstates (median and p99 over the last 100000 connections).",
            &latency_samples(&latency),
        );
    }
    if let Some(store) = &report.store {
        render_store(&mut out, store);
    }
    if let Some(state) = policy {
        render_policy(&mut out, state, name_of);
    }
    out
}

/// A latency summary's samples, labelled `stat`.
fn latency_samples(summary: &crate::observe::latency::LatencySummary) -> [(String, u64); 4] {
    [
        (label("stat", "min"), summary.min_us),
        (label("stat", "median"), summary.median_us),
        (label("stat", "p99"), summary.p99_us),
        (label("stat", "max"), summary.max_us),
    ]
}

/// The shared store's gauges (its counters are among the loader's).
fn render_store(out: &mut String, store: &crate::observe::store_state::StoreState) {
    for (name, help, value) in [
        (
            "mptcp_fw_store_connected",
            "1 while the loader is connected to the shared store (--store).",
            store.connected,
        ),
        (
            "mptcp_fw_store_caught_up",
            "1 once the loader has read every connection in the store since it last connected.",
            store.caught_up,
        ),
        (
            "mptcp_fw_store_queued",
            "Publications to the store queued and not yet written (how far publishing lags).",
            store.queued,
        ),
    ] {
        family(out, name, "gauge", help, &[(String::new(), value)]);
    }
    let r = store.replication;
    if r.count > 0 {
        family(
            out,
            "mptcp_fw_store_replication_delay_microseconds",
            "gauge",
            "Time from a peer's fast path seeing a connection's keys to this host's maps holding them (median and p99 over the last 100000; across hosts it includes their clock difference).",
            &latency_samples(&r),
        );
    }
}

fn render_policy(out: &mut String, state: &PolicyState, name_of: impl Fn(u32) -> String) {
    let Config {
        mode,
        unknown_conn,
        addr_policy,
        join_syn_rate,
        join_syn_burst,
        event_rate,
        event_burst,
        crypto_rate,
    } = state.config;
    let flag = |on: bool| u64::from(on);
    let mut enforce = vec![(String::new(), flag(mode == MODE_ENFORCE))];
    for (ifindex, mode) in &state.interface_modes {
        enforce.push((
            label("iface", &name_of(*ifindex)),
            flag(*mode == MODE_ENFORCE),
        ));
    }
    family(
        out,
        "mptcp_fw_policy_enforce",
        "gauge",
        "1 where bad signalling is dropped, 0 where it is only counted (monitor): without label the global mode, with iface an interface's own mode.",
        &enforce,
    );
    let single: [(&str, &str, u64); 8] = [
        (
            "mptcp_fw_policy_unknown_conn_drop",
            "1: signalling of unknown connections is dropped (fail-closed); 0: it passes.",
            flag(unknown_conn == UNKNOWN_DROP),
        ),
        (
            "mptcp_fw_policy_add_addr_prefixes_restricted",
            "1: ADD_ADDR may announce only the allowed prefixes.",
            flag(addr_policy & ADDR_POLICY_PREFIXES != 0),
        ),
        (
            "mptcp_fw_policy_add_addr_ports_restricted",
            "1: ADD_ADDR may announce only the allowed ports.",
            flag(addr_policy & ADDR_POLICY_PORTS != 0),
        ),
        (
            "mptcp_fw_policy_join_syn_rate",
            "MP_JOIN SYNs per second allowed per source address (0: no limit).",
            u64::from(join_syn_rate),
        ),
        (
            "mptcp_fw_policy_join_syn_burst",
            "MP_JOIN SYNs a source may send at once above the rate.",
            u64::from(join_syn_burst),
        ),
        (
            "mptcp_fw_policy_crypto_rate",
            "HMAC checks a CPU computes per second beyond the tag cache (0: no budget).",
            u64::from(crypto_rate),
        ),
        (
            "mptcp_fw_policy_event_rate",
            "Drop events per second per CPU (0: none).",
            u64::from(event_rate),
        ),
        (
            "mptcp_fw_policy_event_burst",
            "Drop events at once above the rate.",
            u64::from(event_burst),
        ),
    ];
    for (name, help, value) in single {
        family(out, name, "gauge", help, &[(String::new(), value)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{observe::latency::LatencySummary, observe::loader_counters::LoaderCounter};
    use mptcp_common::maps::{MAP_ALLOW_V4, MAP_CONNS, MODE_MONITOR};

    fn report() -> StatsReport {
        StatsReport {
            counters: crate::observe::stats::numbered_counters(),
            loader: LoaderCounter::ALL.iter().map(|c| (c.name(), 3)).collect(),
            maps: vec![MapFill {
                name: MAP_CONNS,
                entries: 2,
                max: 1024,
            }],
            install_latency: Some(LatencySummary {
                count: 2,
                min_us: 5,
                median_us: 6,
                p99_us: 9,
                max_us: 9,
            }),
            live: true,
            store: None,
        }
    }

    fn state() -> PolicyState {
        PolicyState {
            config: Config {
                mode: MODE_ENFORCE,
                addr_policy: ADDR_POLICY_PORTS,
                join_syn_rate: 10,
                ..Config::default()
            },
            interface_modes: [(7, MODE_MONITOR)].into(),
            ..PolicyState::default()
        }
    }

    fn text() -> String {
        let fill = [MapFill {
            name: MAP_ALLOW_V4,
            entries: 1,
            max: 4096,
        }];
        render(&report(), &fill, Some(&state()), |i| format!("if{i}"))
    }

    #[test]
    fn every_counter_is_a_sample_of_its_family() {
        let text = text();
        for c in Counter::ALL {
            let family = if c.is_packet_reason() {
                format!("mptcp_fw_packets_total{{reason=\"{}\"}} ", c.name())
            } else {
                format!("mptcp_fw_aux_events_total{{counter=\"{}\"}} ", c.name())
            };
            assert!(text.contains(&family), "{family} missing");
        }
        assert!(text.contains("mptcp_fw_packets_total{reason=\"tcp_no_mptcp\"} 4\n"));
        for c in LoaderCounter::ALL {
            assert!(text.contains(&format!(
                "mptcp_fw_loader_events_total{{counter=\"{}\"}} 3\n",
                c.name()
            )));
        }
        // The series the README's eviction alert names.
        assert!(text.contains("mptcp_fw_loader_events_total{counter=\"loader_conns_evicted\"} 3\n"));
        assert!(text.contains("mptcp_fw_aux_events_total{counter=\"aux_conn_inserted\"} "));
    }

    #[test]
    fn the_store_state_is_a_set_of_gauges() {
        let mut out = String::new();
        render_store(
            &mut out,
            &crate::observe::store_state::StoreState {
                connected: 1,
                queued: 3,
                replication: LatencySummary {
                    count: 1,
                    min_us: 5,
                    median_us: 6,
                    p99_us: 7,
                    max_us: 8,
                },
                ..Default::default()
            },
        );
        assert!(out.contains("mptcp_fw_store_connected 1\n"), "{out}");
        assert!(out.contains("mptcp_fw_store_caught_up 0\n"), "{out}");
        assert!(out.contains("mptcp_fw_store_queued 3\n"), "{out}");
        assert!(out.contains("mptcp_fw_store_replication_delay_microseconds{stat=\"p99\"} 7\n"));
    }

    #[test]
    fn maps_latency_and_policy() {
        let text = text();
        assert!(text.contains("mptcp_fw_map_entries{map=\"MPTCP_CONNS\"} 2\n"));
        assert!(text.contains("mptcp_fw_map_max_entries{map=\"MPTCP_CONNS\"} 1024\n"));
        assert!(text.contains("mptcp_fw_map_entries{map=\"MPTCP_ALLOW_V4\"} 1\n"));
        assert!(text.contains("mptcp_fw_install_latency_microseconds{stat=\"p99\"} 9\n"));
        assert!(text.contains("mptcp_fw_connections_installed_total 2\n"));
        assert!(text.contains("mptcp_fw_policy_enforce 1\n"));
        assert!(text.contains("mptcp_fw_policy_enforce{iface=\"if7\"} 0\n"));
        assert!(text.contains("mptcp_fw_policy_add_addr_ports_restricted 1\n"));
        assert!(text.contains("mptcp_fw_policy_add_addr_prefixes_restricted 0\n"));
        assert!(text.contains("mptcp_fw_policy_join_syn_rate 10\n"));
    }

    /// The format's rules: each family's HELP and TYPE once, before its samples; sample lines
    /// are `name{labels} integer`; names are valid.
    #[test]
    fn exposition_format_is_well_formed() {
        let text = text();
        let mut declared: Vec<String> = Vec::new();
        let mut typed: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!declared.contains(&name), "HELP twice for {name}");
                declared.push(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_owned();
                assert!(matches!(parts.next(), Some("counter" | "gauge")));
                assert_eq!(declared.last(), Some(&name));
                typed.push(name);
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<u64>().unwrap();
                let name = series.split('{').next().unwrap();
                assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
                assert!(name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
                if let Some(labels) = series.strip_prefix(name) {
                    assert!(
                        labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'))
                    );
                }
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Route::Index { head_only: false }
        );
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"hello\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
    }

    async fn fetch(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[test]
    fn serves_over_tcp_and_reports_scrape_errors() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let server = tokio::spawn(serve(listener, move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Ok("mptcp_fw_up 1\n".to_owned())
                    } else {
                        Err("pins are gone".to_owned())
                    }
                }
            }));
            let ok = fetch(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(
                ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
                "{ok}"
            );
            assert!(ok.contains("Content-Length: 14\r\n"), "{ok}");
            assert!(ok.ends_with("\r\n\r\nmptcp_fw_up 1\n"), "{ok}");
            let failed = fetch(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
            assert!(failed.starts_with("HTTP/1.1 500 "), "{failed}");
            assert!(failed.ends_with("could not read the counters: pins are gone\n"));
            let missing = fetch(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
            assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
            let post = fetch(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
            assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"));
            let head = fetch(addr, "HEAD / HTTP/1.1\r\n\r\n").await;
            assert!(
                head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
                "{head}"
            );
            server.abort();
        });
    }

    #[test]
    fn a_busy_address_is_one_clear_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = taken.local_addr().unwrap();
            let err = bind(addr).await.unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "could not serve metrics on {addr} (--metrics): Address already in use (os error 98): \
                     pick a free address and port (`ss -ltnp` shows who listens)"
                )
            );
            // An address of no local interface.
            let err = bind("192.0.2.1:9464".parse().unwrap()).await.unwrap_err().to_string();
            assert!(err.contains("Cannot assign requested address"), "{err}");
        });
    }
}
