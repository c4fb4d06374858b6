//! `mptcp-loader conns`: the connections the fast path tracks, from the pinned maps: both
//! tokens, every subflow (oriented from the MP_CAPABLE initiator, "A", to the listener, "B"),
//! the subflow count and the age. Keys are secrets that let anyone forge valid signalling for
//! the connection: they are printed only with `--show-keys`.

use std::{collections::HashMap as StdHashMap, fmt::Write as _, path::Path};

use aya::maps::{HashMap, Map, MapData};
use mptcp_common::maps::{
    ConnState, FlowKey, FlowRef, CONN_FLAG_KEY_CONFLICT, MAP_CONNS, MAP_FLOWS, MAP_TOKENS, READY_A,
    READY_B, ROLE_A,
};
use serde_json::{json, Value};

use crate::{
    clock::monotonic_now_s,
    conn::install::format_flow,
    conn::keys::{hex, token_and_idsn},
    conn::sweep::age_s,
    kernel::error::KernelError,
    kernel::store::{FirewallMaps as _, KernelMaps},
    observe::error::ObserveError,
    observe::stats::locate_pins,
    observe::status::format_duration_s,
};

/// One subflow of a tracked connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubflowView {
    /// Oriented A -> B.
    pub flow: FlowKey,
    /// Seconds since its last sampled activity.
    pub idle_s: u32,
    /// Why the fast path marked it closing (`rst`, `fin`), empty when it did not; the loader
    /// removes it once the host's kernel confirms it closed.
    pub closing: &'static str,
}

/// The closing marks of a subflow, in words.
const fn closing_words(marks: u8) -> &'static str {
    use mptcp_common::maps::{FIN_FROM_DST, FIN_FROM_SRC, RST_SEEN};
    if marks & RST_SEEN != 0 {
        "rst"
    } else if marks & (FIN_FROM_SRC | FIN_FROM_DST) == FIN_FROM_SRC | FIN_FROM_DST {
        "fin both ways"
    } else if marks != 0 {
        "fin one way"
    } else {
        ""
    }
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnView {
    /// Token of Key-A (the initiator's), wire bytes.
    pub token_a: [u8; 4],
    /// Token of Key-B (the listener's).
    pub token_b: [u8; 4],
    /// Key-A.
    pub key_a: [u8; 8],
    /// Key-B.
    pub key_b: [u8; 8],
    /// Subflows that have not ended, as the fast path counts them.
    pub subflows: u64,
    /// The subflows in the subflow map.
    pub flows: Vec<SubflowView>,
    /// Seconds since the keys were learned.
    pub age_s: u32,
    /// Whether both directions' HMAC midstates are installed.
    pub midstates: bool,
    /// Marked untrusted by a key conflict.
    pub untrusted: bool,
}

/// Joins connections and subflows (`now_s`: CLOCK_MONOTONIC seconds). Pure; oldest first.
#[must_use]
pub fn collect(
    conns: &[(u64, ConnState)],
    flows: &[(FlowKey, FlowRef)],
    now_s: u32,
) -> Vec<ConnView> {
    let mut by_conn: StdHashMap<u64, Vec<SubflowView>> = StdHashMap::new();
    for (key, flow) in flows {
        // The canonical key's source is the host with role `src_role`: orient A -> B.
        let flow_ab = if flow.src_role & 1 == ROLE_A {
            *key
        } else {
            key.reversed()
        };
        by_conn.entry(flow.conn_id).or_default().push(SubflowView {
            flow: flow_ab,
            idle_s: age_s(now_s, flow.last_seen_s),
            closing: closing_words(flow.closing),
        });
    }
    let mut views: Vec<ConnView> = conns
        .iter()
        .map(|(id, state)| {
            let mut flows = by_conn.remove(id).unwrap_or_default();
            flows.sort_by_key(|f| (u16::from_be_bytes(f.flow.sport), f.flow.saddr));
            ConnView {
                token_a: token_and_idsn(&state.key_a).0,
                token_b: token_and_idsn(&state.key_b).0,
                key_a: state.key_a,
                key_b: state.key_b,
                subflows: u64::from(state.subflows),
                flows,
                age_s: age_s(now_s, state.learned_s),
                midstates: state.ready & (READY_A | READY_B) == READY_A | READY_B,
                untrusted: state.flags & CONN_FLAG_KEY_CONFLICT != 0,
            }
        })
        .collect();
    views.sort_by(|a, b| b.age_s.cmp(&a.age_s).then(a.token_a.cmp(&b.token_a)));
    views
}

/// The text table.
#[must_use]
pub fn format_conns(views: &[ConnView], show_keys: bool) -> String {
    let mut out = format!("{} connection(s) tracked\n", views.len());
    for v in views {
        let _ = write!(
            out,
            "token-A {} token-B {}  subflows {}  age {}{}{}",
            hex(&v.token_a),
            hex(&v.token_b),
            v.subflows,
            format_duration_s(u64::from(v.age_s)),
            if v.midstates {
                ""
            } else {
                "  (midstates not installed yet)"
            },
            if v.untrusted {
                "  UNTRUSTED (key conflict)"
            } else {
                ""
            },
        );
        if show_keys {
            let _ = write!(out, "  key-A {} key-B {}", hex(&v.key_a), hex(&v.key_b));
        }
        out.push('\n');
        for f in &v.flows {
            let closing = if f.closing.is_empty() {
                String::new()
            } else {
                format!(", closing: {}", f.closing)
            };
            let _ = writeln!(
                out,
                "    {}  (idle {}{closing})",
                format_flow(&f.flow),
                format_duration_s(u64::from(f.idle_s))
            );
        }
    }
    out
}

/// `conns --json`: an array of objects; `key_a` / `key_b` only with `show_keys`.
#[must_use]
pub fn conns_json(views: &[ConnView], show_keys: bool) -> Value {
    Value::Array(
        views
            .iter()
            .map(|v| {
                let mut object = json!({
                    "token_a": hex(&v.token_a),
                    "token_b": hex(&v.token_b),
                    "subflows": v.subflows,
                    "age_s": v.age_s,
                    "midstates_installed": v.midstates,
                    "untrusted": v.untrusted,
                    "flows": v.flows.iter().map(|f| {
                        let addr = |a: &[u8; 16]| {
                            if f.flow.family == mptcp_common::maps::FAMILY_V4 {
                                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
                            } else {
                                std::net::Ipv6Addr::from(*a).to_string()
                            }
                        };
                        json!({
                            "src": addr(&f.flow.saddr),
                            "sport": u16::from_be_bytes(f.flow.sport),
                            "dst": addr(&f.flow.daddr),
                            "dport": u16::from_be_bytes(f.flow.dport),
                            "idle_s": f.idle_s,
                            "closing": f.closing,
                        })
                    }).collect::<Vec<_>>(),
                });
                if show_keys {
                    object["key_a"] = hex(&v.key_a).into();
                    object["key_b"] = hex(&v.key_b).into();
                }
                object
            })
            .collect(),
    )
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let path = dir.join(name);
    let open_error = |source| KernelError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    HashMap::try_from(Map::from_map_data(data).map_err(open_error)?).map_err(open_error)
}

/// The connections tracked by the firewall pinned under `pin_dir`.
///
/// # Errors
/// [`ObserveError::NoActiveRun`] without pins; map errors otherwise.
pub fn read_conns(pin_dir: &Path) -> Result<Vec<ConnView>, ObserveError> {
    let dir = locate_pins(pin_dir)?;
    let maps = KernelMaps {
        conns: open_hash(&dir, MAP_CONNS)?,
        flows: open_hash(&dir, MAP_FLOWS)?,
        tokens: open_hash(&dir, MAP_TOKENS)?,
    };
    let conns = maps.all_conns()?;
    let flows = maps.all_flows()?;
    Ok(collect(&conns, &flows, monotonic_now_s()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::maps::{FAMILY_V4, ROLE_B};

    fn key(a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> FlowKey {
        let mut k = FlowKey {
            family: FAMILY_V4,
            sport: ap.to_be_bytes(),
            dport: bp.to_be_bytes(),
            ..FlowKey::default()
        };
        k.saddr[..4].copy_from_slice(&a);
        k.daddr[..4].copy_from_slice(&b);
        k
    }

    #[test]
    fn connections_list_their_subflows_from_a_to_b() {
        let state = ConnState {
            key_a: [1; 8],
            key_b: [2; 8],
            subflows: 2,
            learned_s: 900,
            ready: READY_A | READY_B,
            ..ConnState::default()
        };
        let id = ConnState::id_of(&state.key_a);
        // Canonical keys: the smaller address first. The second subflow's canonical source is
        // the listener (B), so it is shown reversed.
        let flows = [
            (
                key([198, 18, 0, 1], 40000, [198, 18, 0, 2], 10000),
                FlowRef {
                    conn_id: id,
                    last_seen_s: 990,
                    src_role: ROLE_A,
                    ..FlowRef::default()
                },
            ),
            (
                key([198, 18, 0, 2], 10000, [198, 18, 1, 1], 40001),
                FlowRef {
                    conn_id: id,
                    last_seen_s: 999,
                    src_role: ROLE_B,
                    ..FlowRef::default()
                },
            ),
            (
                key([9, 9, 9, 9], 1, [9, 9, 9, 10], 2),
                FlowRef {
                    conn_id: 77,
                    ..FlowRef::default()
                },
            ),
        ];
        let views = collect(&[(id, state)], &flows, 1000);
        assert_eq!(views.len(), 1);
        let v = &views[0];
        assert_eq!(
            (v.subflows, v.age_s, v.midstates, v.untrusted),
            (2, 100, true, false)
        );
        assert_eq!(v.token_a, token_and_idsn(&[1; 8]).0);
        let text = format_conns(&views, false);
        assert!(
            text.contains(&format!(
                "token-A {} token-B {}  subflows 2  age 1m 40s",
                hex(&v.token_a),
                hex(&v.token_b)
            )),
            "{text}"
        );
        assert!(
            text.contains("    198.18.0.1:40000 -> 198.18.0.2:10000  (idle 10s)"),
            "{text}"
        );
        assert!(
            text.contains("    198.18.1.1:40001 -> 198.18.0.2:10000  (idle 1s)"),
            "{text}"
        );
        assert!(!text.contains("key-A"), "keys only with --show-keys");
        assert!(
            format_conns(&views, true).contains("key-A 0101010101010101 key-B 0202020202020202")
        );

        let json = conns_json(&views, false);
        assert_eq!(json[0]["subflows"], 2);
        assert_eq!(json[0]["flows"][1]["src"], "198.18.1.1");
        assert_eq!(json[0]["flows"][1]["dport"], 10000);
        assert!(json[0].get("key_a").is_none());
        assert_eq!(conns_json(&views, true)[0]["key_b"], "0202020202020202");
        assert_eq!(format_conns(&[], false), "0 connection(s) tracked\n");
    }
}
