//! The policy file (`run --config FILE`, TOML) and the policy flags of `run`, merged into one
//! [`Policy`]: a flag overrides the file's value of the same setting, the file overrides the
//! defaults. The file is read again on SIGHUP; the flags keep overriding it then.
//!
//! The schema (every key optional; `dist/mptcp-fw.toml` is a full example):
//!
//! ```toml
//! mode = "enforce"                      # or "monitor" (default)
//! unknown_connections = "pass"          # or "drop" (fail-closed)
//! [interfaces.eth1]                     # one table per interface, among --iface
//! mode = "monitor"
//! [add_addr]
//! prefixes = ["198.18.0.0/15", "2001:db8::/32"]   # absent: any address
//! ports = ["none", 443]                 # "none": an ADD_ADDR without port; absent: any port
//! [join_syn_limit]                      # per source address; absent: no limit
//! per_second = 10
//! burst = 20                            # default: per_second
//! [drop_events]                         # per CPU; default 100/s, burst 200
//! per_second = 100
//! burst = 200
//! ```
//!
//! Every error names the file, the line and column, the key and what is wrong; an unknown key
//! is an error (a typo must not silently leave a setting at its default).

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

use clap::Args;
use mptcp_common::maps::{
    DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, MAX_ALLOW_PORTS, MAX_ALLOW_PREFIXES,
};
use serde::{de, Deserialize, Deserializer};
use thiserror::Error;
use toml::Spanned;

use crate::{
    mode::FilterMode,
    policy::{Policy, PortRule, Prefix, RateLimit, UnknownConn},
};

/// Largest rate or burst accepted: far above any sane setting, and it keeps the fast path's
/// rate interval (1 s / rate) at a microsecond or more.
pub const MAX_RATE: u32 = 1_000_000;

/// A policy that cannot be used. One line: where, which key, what is wrong.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("could not read the policy file {}: {source}", path.display())]
    Read {
        /// The `--config` path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value that is wrong.
    #[error("policy file {}: {}{message}", path.display(), at.map(|(line, column)| format!("line {line}, column {column}: ")).unwrap_or_default())]
    File {
        /// The `--config` path.
        path: PathBuf,
        /// Line and column (1-based) of the offending key or value, when known.
        at: Option<(usize, usize)>,
        /// What is wrong, starting with the key.
        message: String,
    },
    /// A policy flag contradicts another one or names an interface not in `--iface`.
    #[error("{flag}: {message}")]
    Flag {
        /// The flag, e.g. `--iface-mode`.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The policy flags of `run` (besides `--mode`, which `run` always had).
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct PolicyArgs {
    /// Policy file (TOML, see dist/mptcp-fw.toml). The flags below and --mode override its
    /// settings. SIGHUP re-reads it; an invalid file is rejected and the policy stays.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the policy (file and flags), print it, and exit without loading anything.
    #[arg(long = "check-config")]
    pub check_config: bool,
    /// Mode of one interface, overriding --mode on it: IF=enforce or IF=monitor (repeat).
    #[arg(long = "iface-mode", value_name = "IF=MODE", value_parser = parse_iface_mode)]
    pub iface_modes: Vec<(String, FilterMode)>,
    /// Signalling of connections the firewall does not know: pass (fail-open) or drop
    /// (fail-closed) [default: pass].
    #[arg(long = "unknown-conn", value_enum, value_name = "pass|drop")]
    pub unknown_conn: Option<UnknownConn>,
    /// A prefix ADD_ADDR may announce, e.g. 198.18.0.0/15 (repeat; replaces the file's list);
    /// `any` lifts the restriction.
    #[arg(long = "allow-prefix", value_name = "CIDR|any", value_parser = parse_prefix_flag)]
    pub allow_prefixes: Vec<Allowed<Prefix>>,
    /// A port ADD_ADDR may announce, `none` for an ADD_ADDR without port (repeat; replaces
    /// the file's list); `any` lifts the restriction.
    #[arg(long = "allow-port", value_name = "PORT|none|any", value_parser = parse_port_flag)]
    pub allow_ports: Vec<Allowed<PortRule>>,
    /// MP_JOIN SYNs per second allowed from one source address (0: no limit).
    #[arg(long = "join-syn-rate", value_name = "N", value_parser = parse_rate)]
    pub join_syn_rate: Option<u32>,
    /// MP_JOIN SYNs a source may send at once above that rate [default: the rate].
    #[arg(long = "join-syn-burst", value_name = "N", value_parser = parse_rate)]
    pub join_syn_burst: Option<u32>,
    /// Drop events per second per CPU (0: none) [default: 100].
    #[arg(long = "event-rate", value_name = "N", value_parser = parse_rate)]
    pub event_rate: Option<u32>,
    /// Drop events at once above that rate [default: the rate; 200 with the default rate].
    #[arg(long = "event-burst", value_name = "N", value_parser = parse_rate)]
    pub event_burst: Option<u32>,
}

/// A value of `--allow-prefix` / `--allow-port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed<T> {
    /// `any`: no restriction.
    Any,
    /// One allowed value.
    Only(T),
}

fn parse_iface_mode(text: &str) -> Result<(String, FilterMode), String> {
    let (iface, mode) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected IF=enforce or IF=monitor"))?;
    let mode: FilterMode = mode.parse()?;
    if iface.is_empty() {
        return Err(format!("`{text}`: the interface name is missing"));
    }
    Ok((iface.to_owned(), mode))
}

fn parse_prefix_flag(text: &str) -> Result<Allowed<Prefix>, String> {
    if text == "any" {
        return Ok(Allowed::Any);
    }
    Prefix::parse(text).map(Allowed::Only)
}

fn parse_port_flag(text: &str) -> Result<Allowed<PortRule>, String> {
    if text == "any" {
        return Ok(Allowed::Any);
    }
    PortRule::parse(text).map(Allowed::Only)
}

fn parse_rate(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_RATE)
        .ok_or_else(|| format!("expected a whole number from 0 to {MAX_RATE}"))
}

/// Where a run's policy comes from: re-read on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySource {
    /// The `--config` file.
    pub file: Option<PathBuf>,
    /// `--mode`, if given.
    pub mode: Option<FilterMode>,
    /// The policy flags.
    pub flags: PolicyArgs,
    /// The `--iface` interfaces: the only names a per-interface mode may use.
    pub interfaces: Vec<String>,
}

impl PolicySource {
    /// A source without file, flags or interfaces: the default policy.
    #[must_use]
    pub fn defaults() -> Self {
        Self {
            file: None,
            mode: None,
            flags: PolicyArgs::default(),
            interfaces: Vec::new(),
        }
    }

    /// Reads the file (if any), checks it, and merges the flags over it.
    ///
    /// # Errors
    /// The first problem found, with its line for the file.
    pub fn load(&self) -> Result<Policy, ConfigError> {
        let file = match &self.file {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_file(path, &text, &self.interfaces)?
            }
            None => Layer::default(),
        };
        let flags = flag_layer(self.mode, &self.flags, &self.interfaces)?;
        finish(file, flags)
    }
}

/// One source's settings; `None`: not set there.
#[derive(Debug, Default)]
struct Layer {
    mode: Option<FilterMode>,
    interface_modes: BTreeMap<String, FilterMode>,
    unknown_conn: Option<UnknownConn>,
    /// `Some(None)`: explicitly unrestricted (`--allow-prefix any`).
    #[allow(
        clippy::option_option,
        reason = "not given, `any`, or a list: three cases"
    )]
    prefixes: Option<Option<Vec<Prefix>>>,
    #[allow(
        clippy::option_option,
        reason = "not given, `any`, or a list: three cases"
    )]
    ports: Option<Option<Vec<PortRule>>>,
    join_rate: Option<u32>,
    join_burst: Option<u32>,
    event_rate: Option<u32>,
    event_burst: Option<u32>,
}

// ---- The file ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    mode: Option<Spanned<FilterMode>>,
    unknown_connections: Option<Spanned<UnknownName>>,
    #[serde(default)]
    interfaces: BTreeMap<Spanned<String>, InterfaceDoc>,
    add_addr: Option<AddAddrDoc>,
    join_syn_limit: Option<RateDoc>,
    drop_events: Option<RateDoc>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UnknownName {
    Pass,
    Drop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceDoc {
    mode: Spanned<FilterMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAddrDoc {
    prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    ports: Option<Spanned<Vec<Spanned<PortDoc>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateDoc {
    per_second: Spanned<i64>,
    burst: Option<Spanned<i64>>,
}

/// A port in the file: a number, or the string `none`.
enum PortDoc {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = PortDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or \"none\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortDoc, E> {
                Ok(PortDoc::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortDoc, E> {
                Ok(PortDoc::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortDoc, E> {
                Ok(PortDoc::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// 1-based line and column of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Checks a parsed file and turns it into a [`Layer`].
fn parse_file(path: &Path, text: &str, interfaces: &[String]) -> Result<Layer, ConfigError> {
    let error_at = |span: Option<Range<usize>>, message: String| ConfigError::File {
        path: path.to_path_buf(),
        at: span.map(|s| line_column(text, s.start)),
        message,
    };
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        // toml's messages may span lines ("invalid string\nexpected ..."): keep one line.
        let message = e.message().trim().replace('\n', "; ");
        error_at(e.span(), message)
    })?;

    let mut layer = Layer {
        mode: doc.mode.map(Spanned::into_inner),
        unknown_conn: doc.unknown_connections.map(|u| match u.into_inner() {
            UnknownName::Pass => UnknownConn::Pass,
            UnknownName::Drop => UnknownConn::Drop,
        }),
        ..Layer::default()
    };
    for (name, section) in doc.interfaces {
        let span = name.span();
        let name = name.into_inner();
        if !interfaces.contains(&name) {
            return Err(error_at(
                Some(span),
                format!(
                    "interfaces.{name}: `{name}` is not one of the --iface interfaces ({})",
                    interfaces.join(", ")
                ),
            ));
        }
        layer
            .interface_modes
            .insert(name, section.mode.into_inner());
    }
    if let Some(add_addr) = doc.add_addr {
        if let Some(list) = add_addr.prefixes {
            let list_span = list.span();
            let mut prefixes = Vec::new();
            for item in list.into_inner() {
                let span = item.span();
                let prefix = Prefix::parse(item.get_ref())
                    .map_err(|why| error_at(Some(span), format!("add_addr.prefixes: {why}")))?;
                prefixes.push(prefix);
            }
            check_prefix_count(&prefixes)
                .map_err(|why| error_at(Some(list_span), format!("add_addr.prefixes: {why}")))?;
            layer.prefixes = Some(Some(prefixes));
        }
        if let Some(list) = add_addr.ports {
            let list_span = list.span();
            let mut ports = Vec::new();
            for item in list.into_inner() {
                let span = item.span();
                let port = match item.into_inner() {
                    PortDoc::Number(n) => PortRule::from_number(n),
                    PortDoc::Text(t) if t == "none" => Ok(PortRule::NoPort),
                    PortDoc::Text(t) => Err(format!(
                        "\"{t}\" is not a port: expected 1..=65535, or \"none\" for an ADD_ADDR without port"
                    )),
                }
                .map_err(|why| error_at(Some(span), format!("add_addr.ports: {why}")))?;
                ports.push(port);
            }
            check_port_count(&ports)
                .map_err(|why| error_at(Some(list_span), format!("add_addr.ports: {why}")))?;
            layer.ports = Some(Some(ports));
        }
    }
    let rate = |value: &Spanned<i64>, key: &str| {
        u32::try_from(*value.get_ref())
            .ok()
            .filter(|n| *n <= MAX_RATE)
            .ok_or_else(|| {
                error_at(
                    Some(value.span()),
                    format!("{key}: {} is not in 0..={MAX_RATE}", value.get_ref()),
                )
            })
    };
    if let Some(join) = &doc.join_syn_limit {
        layer.join_rate = Some(rate(&join.per_second, "join_syn_limit.per_second")?);
        layer.join_burst = join
            .burst
            .as_ref()
            .map(|b| rate(b, "join_syn_limit.burst"))
            .transpose()?;
    }
    if let Some(events) = &doc.drop_events {
        layer.event_rate = Some(rate(&events.per_second, "drop_events.per_second")?);
        layer.event_burst = events
            .burst
            .as_ref()
            .map(|b| rate(b, "drop_events.burst"))
            .transpose()?;
    }
    Ok(layer)
}

fn check_prefix_count(prefixes: &[Prefix]) -> Result<(), String> {
    let max = usize::try_from(MAX_ALLOW_PREFIXES).unwrap_or(usize::MAX);
    let v4 = prefixes.iter().filter(|p| p.is_v4()).count();
    let v6 = prefixes.len() - v4;
    for (count, family) in [(v4, "IPv4"), (v6, "IPv6")] {
        if count > max {
            return Err(format!(
                "{count} {family} prefixes, at most {max} fit in the map"
            ));
        }
    }
    Ok(())
}

fn check_port_count(ports: &[PortRule]) -> Result<(), String> {
    let max = usize::try_from(MAX_ALLOW_PORTS).unwrap_or(usize::MAX);
    if ports.len() > max {
        return Err(format!(
            "{} ports, at most {max} fit in the map",
            ports.len()
        ));
    }
    Ok(())
}

// ---- The flags and the merge ---------------------------------------------------------------

fn flag_layer(
    mode: Option<FilterMode>,
    flags: &PolicyArgs,
    interfaces: &[String],
) -> Result<Layer, ConfigError> {
    let mut layer = Layer {
        mode,
        unknown_conn: flags.unknown_conn,
        join_rate: flags.join_syn_rate,
        join_burst: flags.join_syn_burst,
        event_rate: flags.event_rate,
        event_burst: flags.event_burst,
        ..Layer::default()
    };
    for (iface, mode) in &flags.iface_modes {
        if !interfaces.contains(iface) {
            return Err(ConfigError::Flag {
                flag: "--iface-mode",
                message: format!(
                    "`{iface}` is not one of the --iface interfaces ({})",
                    interfaces.join(", ")
                ),
            });
        }
        layer.interface_modes.insert(iface.clone(), *mode);
    }
    layer.prefixes = allowed_list("--allow-prefix", &flags.allow_prefixes)?;
    if let Some(Some(prefixes)) = &layer.prefixes {
        check_prefix_count(prefixes).map_err(|message| ConfigError::Flag {
            flag: "--allow-prefix",
            message,
        })?;
    }
    layer.ports = allowed_list("--allow-port", &flags.allow_ports)?;
    if let Some(Some(ports)) = &layer.ports {
        check_port_count(ports).map_err(|message| ConfigError::Flag {
            flag: "--allow-port",
            message,
        })?;
    }
    Ok(layer)
}

/// `None` without the flag, `Some(None)` for `any`, else the list.
#[allow(clippy::option_option, reason = "not set / unrestricted / a list")]
fn allowed_list<T: Copy + PartialEq>(
    flag: &'static str,
    values: &[Allowed<T>],
) -> Result<Option<Option<Vec<T>>>, ConfigError> {
    if values.is_empty() {
        return Ok(None);
    }
    if values.contains(&Allowed::Any) {
        if values.len() > 1 {
            return Err(ConfigError::Flag {
                flag,
                message: "`any` lifts the restriction: give it alone".to_owned(),
            });
        }
        return Ok(Some(None));
    }
    let list = values
        .iter()
        .filter_map(|v| match v {
            Allowed::Only(v) => Some(*v),
            Allowed::Any => None,
        })
        .collect();
    Ok(Some(Some(list)))
}

fn sorted<T: Ord>(mut list: Vec<T>) -> Vec<T> {
    list.sort_unstable();
    list.dedup();
    list
}

/// Flags over file over defaults, then the settings that depend on each other.
fn finish(file: Layer, flags: Layer) -> Result<Policy, ConfigError> {
    let mut interface_modes = file.interface_modes;
    interface_modes.extend(flags.interface_modes);

    let join_rate = flags.join_rate.or(file.join_rate);
    let join_burst = flags.join_burst.or(file.join_burst);
    if join_rate.is_none() && join_burst.is_some() {
        return Err(ConfigError::Flag {
            flag: "--join-syn-burst",
            message: "needs a rate: give --join-syn-rate or join_syn_limit.per_second".to_owned(),
        });
    }
    let join_syn_limit = join_rate.filter(|r| *r > 0).map(|per_second| RateLimit {
        per_second,
        burst: join_burst.unwrap_or(per_second),
    });

    let event_rate = flags.event_rate.or(file.event_rate);
    let event_burst = flags.event_burst.or(file.event_burst);
    let drop_events = RateLimit {
        per_second: event_rate.unwrap_or(DEFAULT_EVENT_RATE),
        burst: event_burst.unwrap_or(event_rate.map_or(DEFAULT_EVENT_BURST, |r| r)),
    };

    Ok(Policy {
        mode: flags.mode.or(file.mode).unwrap_or_default(),
        interface_modes,
        unknown_conn: flags.unknown_conn.or(file.unknown_conn).unwrap_or_default(),
        allowed_prefixes: flags.prefixes.or(file.prefixes).flatten().map(sorted),
        allowed_ports: flags.ports.or(file.ports).flatten().map(sorted),
        join_syn_limit,
        drop_events,
    })
}

/// What `run --check-config` prints: where the policy comes from, then one setting per line.
#[must_use]
pub fn check_report(source: &PolicySource, policy: &Policy) -> String {
    let origin = match &source.file {
        Some(file) => format!("{} and the command line", file.display()),
        None => "the command line (no --config)".to_owned(),
    };
    let mut out = format!("policy OK, from {origin}:\n");
    for (name, value) in policy.settings() {
        out.push_str(&format!("  {name:<30} {value}\n"));
    }
    if policy.mode == FilterMode::Monitor
        && policy
            .interface_modes
            .values()
            .all(|m| *m == FilterMode::Monitor)
    {
        out.push_str(&format!(
            "  (mode {}: nothing is dropped, would-drops are counted)\n",
            FilterMode::Monitor.name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn ifaces() -> Vec<String> {
        vec!["veth0".to_owned(), "veth1".to_owned()]
    }

    fn load_text(text: &str, flags: &PolicyArgs) -> Result<Policy, ConfigError> {
        let path = Path::new("/etc/mptcp-fw.toml");
        let file = parse_file(path, text, &ifaces())?;
        finish(file, flag_layer(None, flags, &ifaces())?)
    }

    fn error_of(text: &str) -> String {
        load_text(text, &PolicyArgs::default())
            .unwrap_err()
            .to_string()
    }

    const FULL: &str = r#"
mode = "enforce"
unknown_connections = "drop"

[interfaces.veth1]
mode = "monitor"

[add_addr]
prefixes = ["2001:db8::/32", "198.18.0.0/15", "198.18.0.0/15"]
ports = ["none", 443, 8443]

[join_syn_limit]
per_second = 10
burst = 20

[drop_events]
per_second = 50
"#;

    #[test]
    fn a_full_file() {
        let policy = load_text(FULL, &PolicyArgs::default()).unwrap();
        assert_eq!(policy.mode, FilterMode::Enforce);
        assert_eq!(
            policy.interface_modes,
            BTreeMap::from([("veth1".to_owned(), FilterMode::Monitor)])
        );
        assert_eq!(policy.unknown_conn, UnknownConn::Drop);
        let prefixes: Vec<String> = policy
            .allowed_prefixes
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            prefixes,
            ["198.18.0.0/15", "2001:db8::/32"],
            "sorted, deduplicated"
        );
        assert_eq!(
            policy.allowed_ports,
            Some(vec![
                PortRule::NoPort,
                PortRule::Port(443),
                PortRule::Port(8443)
            ])
        );
        assert_eq!(
            policy.join_syn_limit,
            Some(RateLimit {
                per_second: 10,
                burst: 20
            })
        );
        assert_eq!(
            policy.drop_events,
            RateLimit {
                per_second: 50,
                burst: 50
            }
        );
    }

    #[test]
    fn the_empty_file_is_the_default_policy() {
        assert_eq!(
            load_text("", &PolicyArgs::default()).unwrap(),
            Policy::default()
        );
        let only_comments = "# nothing yet\n";
        assert_eq!(
            load_text(only_comments, &PolicyArgs::default()).unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn the_example_file_in_dist_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/mptcp-fw.toml");
        let text = fs::read_to_string(&path).unwrap();
        let ifaces = vec!["eth0".to_owned(), "eth1".to_owned()];
        let layer = parse_file(&path, &text, &ifaces).unwrap();
        let policy = finish(layer, Layer::default()).unwrap();
        assert_eq!(policy.mode, FilterMode::Enforce);
        assert!(policy.allowed_ports.unwrap().contains(&PortRule::NoPort));
    }

    #[test]
    fn flags_override_the_file() {
        let flags = PolicyArgs {
            iface_modes: vec![
                ("veth1".to_owned(), FilterMode::Enforce),
                ("veth0".to_owned(), FilterMode::Monitor),
            ],
            unknown_conn: Some(UnknownConn::Pass),
            allow_prefixes: vec![Allowed::Any],
            allow_ports: vec![Allowed::Only(PortRule::Port(80))],
            join_syn_burst: Some(3),
            event_rate: Some(0),
            ..PolicyArgs::default()
        };
        let path = Path::new("/etc/mptcp-fw.toml");
        let file = parse_file(path, FULL, &ifaces()).unwrap();
        let policy = finish(
            file,
            flag_layer(Some(FilterMode::Monitor), &flags, &ifaces()).unwrap(),
        )
        .unwrap();
        assert_eq!(policy.mode, FilterMode::Monitor);
        assert_eq!(
            policy.interface_modes,
            BTreeMap::from([
                ("veth0".to_owned(), FilterMode::Monitor),
                ("veth1".to_owned(), FilterMode::Enforce)
            ])
        );
        assert_eq!(policy.unknown_conn, UnknownConn::Pass);
        assert_eq!(policy.allowed_prefixes, None, "`any` lifts the file's list");
        assert_eq!(policy.allowed_ports, Some(vec![PortRule::Port(80)]));
        assert_eq!(
            policy.join_syn_limit,
            Some(RateLimit {
                per_second: 10,
                burst: 3
            })
        );
        assert_eq!(policy.drop_events.per_second, 0);
    }

    #[test]
    fn rate_defaults() {
        let p = load_text(
            "[join_syn_limit]\nper_second = 0\nburst = 5\n",
            &PolicyArgs::default(),
        )
        .unwrap();
        assert_eq!(p.join_syn_limit, None, "0 means no limit");
        assert_eq!(p.drop_events, crate::policy::DEFAULT_DROP_EVENTS);
        let flags = PolicyArgs {
            join_syn_burst: Some(4),
            ..PolicyArgs::default()
        };
        let err = load_text("", &flags).unwrap_err().to_string();
        assert_eq!(
            err,
            "--join-syn-burst: needs a rate: give --join-syn-rate or join_syn_limit.per_second"
        );
    }

    #[test]
    fn syntax_errors_give_the_line_and_column() {
        let err = error_of("mode = \"enforce\"\n\n[add_addr]\nprefixes = [\"198.18.0.0/15\"\n");
        assert!(
            err.starts_with("policy file /etc/mptcp-fw.toml: line 4, column "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = error_of("mode = enforce\n");
        assert!(
            err.starts_with("policy file /etc/mptcp-fw.toml: line 1, column 8: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_values_are_errors_with_their_line() {
        let err = error_of("mode = \"enforce\"\nunknown_connection = \"drop\"\n");
        assert!(
            err.starts_with("policy file /etc/mptcp-fw.toml: line 2, column 1: unknown field `unknown_connection`"),
            "{err}"
        );
        let err = error_of("[add_addr]\nprefix = []\n");
        assert!(
            err.contains("line 2, column 1: unknown field `prefix`"),
            "{err}"
        );
        let err = error_of("mode = \"block\"\n");
        assert!(
            err.contains("line 1, column 8: unknown variant `block`"),
            "{err}"
        );
        let err = error_of("[interfaces.veth0]\nmode = \"monitor\"\nrate = 3\n");
        assert!(
            err.contains("line 3, column 1: unknown field `rate`"),
            "{err}"
        );
        let err = error_of("[join_syn_limit]\nburst = 3\n");
        assert!(err.contains("missing field `per_second`"), "{err}");
    }

    #[test]
    fn bad_prefixes_and_ports_name_the_key_and_line() {
        let err =
            error_of("[add_addr]\nprefixes = [\n  \"198.18.0.0/15\",\n  \"198.18.0.0/33\",\n]\n");
        assert_eq!(
            err,
            "policy file /etc/mptcp-fw.toml: line 4, column 3: add_addr.prefixes: \
             `198.18.0.0/33`: the prefix length 33 is more than 32"
        );
        let err = error_of("[add_addr]\nprefixes = [\"198.18.1.0/15\"]\n");
        assert!(err.contains("line 2, column 13: add_addr.prefixes: `198.18.1.0/15` has bits set after the first 15: did you mean 198.18.0.0/15?"), "{err}");
        let err = error_of("[add_addr]\nports = [443, 0]\n");
        assert!(
            err.contains("line 2, column 15: add_addr.ports: port 0: write \"none\""),
            "{err}"
        );
        let err = error_of("[add_addr]\nports = [\"https\"]\n");
        assert!(
            err.contains("line 2, column 10: add_addr.ports: \"https\" is not a port"),
            "{err}"
        );
        let err = error_of("[add_addr]\nports = [70000]\n");
        assert!(
            err.contains("add_addr.ports: port 70000 is not in 1..=65535"),
            "{err}"
        );
        let err = error_of("[add_addr]\nports = [true]\n");
        assert!(
            err.contains("line 2, column 10:") && err.contains("a port number or \"none\""),
            "{err}"
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let many: Vec<String> = (0..=MAX_ALLOW_PORTS).map(|p| (p + 1).to_string()).collect();
        let err = error_of(&format!("[add_addr]\nports = [{}]\n", many.join(", ")));
        assert!(
            err.contains("line 2, column 9: add_addr.ports: 1025 ports, at most 1024"),
            "{err}"
        );
    }

    #[test]
    fn rates_out_of_range() {
        let err = error_of("[drop_events]\nper_second = -1\n");
        assert!(
            err.contains("line 2, column 14: drop_events.per_second: -1 is not in 0..=1000000"),
            "{err}"
        );
        let err = error_of("[join_syn_limit]\nper_second = 5\nburst = 2000000\n");
        assert!(
            err.contains("line 3, column 9: join_syn_limit.burst: 2000000 is not in"),
            "{err}"
        );
        let err = error_of("[join_syn_limit]\nper_second = 1.5\n");
        assert!(
            err.contains("line 2, column 14: invalid type: floating point"),
            "{err}"
        );
    }

    #[test]
    fn interfaces_must_be_among_the_iface_flags() {
        let err = error_of("mode = \"enforce\"\n[interfaces.eth9]\nmode = \"monitor\"\n");
        assert_eq!(
            err,
            "policy file /etc/mptcp-fw.toml: line 2, column 13: interfaces.eth9: `eth9` is not \
             one of the --iface interfaces (veth0, veth1)"
        );
        let flags = PolicyArgs {
            iface_modes: vec![("eth9".to_owned(), FilterMode::Monitor)],
            ..PolicyArgs::default()
        };
        assert_eq!(
            load_text("", &flags).unwrap_err().to_string(),
            "--iface-mode: `eth9` is not one of the --iface interfaces (veth0, veth1)"
        );
    }

    #[test]
    fn any_must_stand_alone() {
        let flags = PolicyArgs {
            allow_ports: vec![Allowed::Any, Allowed::Only(PortRule::NoPort)],
            ..PolicyArgs::default()
        };
        assert_eq!(
            load_text("", &flags).unwrap_err().to_string(),
            "--allow-port: `any` lifts the restriction: give it alone"
        );
    }

    #[test]
    fn flag_parsers() {
        assert_eq!(
            parse_iface_mode("veth0=enforce").unwrap(),
            ("veth0".to_owned(), FilterMode::Enforce)
        );
        assert!(parse_iface_mode("veth0")
            .unwrap_err()
            .contains("IF=enforce"));
        assert!(parse_iface_mode("veth0=drop")
            .unwrap_err()
            .contains("not a mode"));
        assert!(parse_iface_mode("=monitor")
            .unwrap_err()
            .contains("missing"));
        assert_eq!(parse_prefix_flag("any").unwrap(), Allowed::Any);
        assert_eq!(
            parse_port_flag("none").unwrap(),
            Allowed::Only(PortRule::NoPort)
        );
        assert_eq!(parse_rate("1000000").unwrap(), 1_000_000);
        assert!(parse_rate("1000001").is_err());
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn a_missing_file_says_which() {
        let source = PolicySource {
            file: Some(PathBuf::from("/nonexistent/mptcp-fw.toml")),
            ..PolicySource::defaults()
        };
        assert_eq!(
            source.load().unwrap_err().to_string(),
            "could not read the policy file /nonexistent/mptcp-fw.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn source_reads_the_file_each_time() {
        let dir = std::env::temp_dir().join(format!("mptcp-fw-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        let source = PolicySource {
            file: Some(path.clone()),
            interfaces: ifaces(),
            ..PolicySource::defaults()
        };
        fs::File::create(&path)
            .unwrap()
            .write_all(b"mode = \"enforce\"\n")
            .unwrap();
        assert_eq!(source.load().unwrap().mode, FilterMode::Enforce);
        fs::write(&path, "mode = \"monitor\"\n").unwrap();
        assert_eq!(source.load().unwrap().mode, FilterMode::Monitor);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }

    #[test]
    fn check_report_lists_every_setting() {
        let report = check_report(&PolicySource::defaults(), &Policy::default());
        assert!(report.starts_with("policy OK, from the command line (no --config):\n"));
        assert!(
            report.contains("  mode                           monitor\n"),
            "{report}"
        );
        assert!(report.contains("nothing is dropped"));
    }
}
