//! The policy model, plan and apply, against the in-memory store.

use std::collections::{BTreeMap, BTreeSet};

use mptcp_common::maps::{
    Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE,
};

use super::{plan::MemoryPolicyStore, *};
use crate::{kernel::error::KernelError, mode::FilterMode};
use mptcp_common::maps::{MODE_ENFORCE, MODE_MONITOR, UNKNOWN_DROP};

fn p(text: &str) -> Prefix {
    Prefix::parse(text).unwrap()
}

fn ifindex(name: &str) -> Result<u32, KernelError> {
    match name {
        "veth0" => Ok(10),
        "veth1" => Ok(11),
        _ => Err(KernelError::UnknownInterface {
            iface: name.to_owned(),
        }),
    }
}

fn strict() -> Policy {
    Policy {
        mode: FilterMode::Enforce,
        interface_modes: BTreeMap::from([("veth1".to_owned(), FilterMode::Monitor)]),
        unknown_conn: UnknownConn::Drop,
        allowed_prefixes: Some(vec![p("198.18.0.0/15"), p("2001:db8::/32")]),
        allowed_ports: Some(vec![PortRule::NoPort, PortRule::Port(443)]),
        join_syn_limit: Some(RateLimit {
            per_second: 10,
            burst: 20,
        }),
        drop_events: RateLimit {
            per_second: 5,
            burst: 7,
        },
    }
}

#[test]
fn prefixes_parse_strictly() {
    assert_eq!(p("198.18.0.0/15"), Prefix::V4([198, 18, 0, 0], 15));
    assert_eq!(p("198.18.0.1"), Prefix::V4([198, 18, 0, 1], 32));
    assert_eq!(p("0.0.0.0/0"), Prefix::V4([0; 4], 0));
    let mut db8 = [0u8; 16];
    db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    assert_eq!(p("2001:db8::/32"), Prefix::V6(db8, 32));
    assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
    assert_eq!(p("::/0").to_string(), "::/0");
    for (bad, why) in [
        ("198.18.0.0/33", "the prefix length 33 is more than 32"),
        ("2001:db8::/129", "the prefix length 129 is more than 128"),
        ("198.18.1.0/15", "did you mean 198.18.0.0/15?"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("198.18.0/24", "is not an IPv4 or IPv6 prefix"),
        ("198.18.0.0/", "is not an IPv4 or IPv6 prefix"),
        ("198.18.0.0/+8", "is not an IPv4 or IPv6 prefix"),
        ("198.18.0.0/08", "is not an IPv4 or IPv6 prefix"),
        ("example.com/8", "is not an IPv4 or IPv6 prefix"),
    ] {
        let err = Prefix::parse(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn ports_parse_and_none_is_the_zero_key() {
    assert_eq!(PortRule::parse("none").unwrap().wire(), [0, 0]);
    assert_eq!(PortRule::parse("443").unwrap().wire(), [1, 187]);
    assert!(PortRule::parse("0").unwrap_err().contains("\"none\""));
    assert!(PortRule::parse("65536")
        .unwrap_err()
        .contains("not in 1..=65535"));
    assert!(PortRule::parse("https")
        .unwrap_err()
        .contains("is not a port"));
    assert!(PortRule::NoPort < PortRule::Port(1));
}

#[test]
fn config_value_of_a_policy() {
    assert_eq!(
        Policy::default().config(),
        Config {
            event_rate: DEFAULT_EVENT_RATE,
            event_burst: DEFAULT_EVENT_BURST,
            crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
            ..Config::default()
        }
    );
    assert_eq!(
        strict().config(),
        Config {
            mode: MODE_ENFORCE,
            unknown_conn: UNKNOWN_DROP,
            addr_policy: ADDR_POLICY_PREFIXES | ADDR_POLICY_PORTS,
            join_syn_rate: 10,
            join_syn_burst: 20,
            event_rate: 5,
            event_burst: 7,
            crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
        }
    );
    // An empty allow list still turns the check on: nothing may be announced.
    let nothing = Policy {
        allowed_ports: Some(vec![]),
        ..Policy::default()
    };
    assert_eq!(nothing.config().addr_policy, ADDR_POLICY_PORTS);
}

#[test]
fn desired_state_resolves_interfaces() {
    let state = desired_state(&strict(), ifindex).unwrap();
    assert_eq!(state.interface_modes, BTreeMap::from([(11, MODE_MONITOR)]));
    assert_eq!(state.v4, BTreeSet::from([(15, [198, 18, 0, 0])]));
    assert_eq!(state.v6.len(), 1);
    assert_eq!(state.ports, BTreeSet::from([[0, 0], [1, 187]]));
    let gone = Policy {
        interface_modes: BTreeMap::from([("veth9".to_owned(), FilterMode::Monitor)]),
        ..Policy::default()
    };
    assert!(matches!(
        desired_state(&gone, ifindex),
        Err(KernelError::UnknownInterface { .. })
    ));
}

fn caps(n: usize) -> Capacities {
    Capacities {
        interface_modes: n,
        v4: n,
        v6: n,
        ports: n,
    }
}

#[test]
fn plan_adds_before_and_removes_after_the_config() {
    let old = desired_state(&strict(), ifindex).unwrap();
    let new_policy = Policy {
        allowed_prefixes: Some(vec![p("198.18.0.0/16")]),
        interface_modes: BTreeMap::from([("veth0".to_owned(), FilterMode::Monitor)]),
        ..strict()
    };
    let new = desired_state(&new_policy, ifindex).unwrap();
    let ops = plan_policy(&old, &new, &caps(100));
    let mut db8 = [0u8; 16];
    db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    assert_eq!(
        ops,
        [
            MapOp::PutV4(16, [198, 18, 0, 0]),
            MapOp::PutInterfaceMode(10, MODE_MONITOR),
            MapOp::WriteConfig(new.config),
            MapOp::RemoveV4(15, [198, 18, 0, 0]),
            MapOp::RemoveV6(32, db8),
            MapOp::RemoveInterfaceMode(11),
        ]
    );
    // Nothing to change: only the (idempotent) config write.
    assert_eq!(
        plan_policy(&new, &new, &caps(100)),
        [MapOp::WriteConfig(new.config)]
    );
}

#[test]
fn plan_turning_the_policy_off_writes_the_config_first() {
    let old = desired_state(&strict(), ifindex).unwrap();
    let new = desired_state(&Policy::default(), ifindex).unwrap();
    let ops = plan_policy(&old, &new, &caps(100));
    assert_eq!(ops[0], MapOp::WriteConfig(new.config));
    assert_eq!(ops.len(), 1 + 2 + 2 + 1, "{ops:?}");
}

#[test]
fn plan_relaxes_first_when_old_and_new_lists_do_not_fit_together() {
    let list = |first: u8| Policy {
        allowed_prefixes: Some(
            (0..3)
                .map(|i| Prefix::V4([198, 18, first + i, 0], 24))
                .collect(),
        ),
        ..Policy::default()
    };
    let old = desired_state(&list(0), ifindex).unwrap();
    let new = desired_state(&list(10), ifindex).unwrap();
    let ops = plan_policy(&old, &new, &caps(4));
    let relaxed = Config {
        addr_policy: 0,
        ..old.config
    };
    assert_eq!(ops[0], MapOp::WriteConfig(relaxed));
    assert!(matches!(
        ops[1..4],
        [
            MapOp::RemoveV4(..),
            MapOp::RemoveV4(..),
            MapOp::RemoveV4(..)
        ]
    ));
    assert!(matches!(
        ops[4..7],
        [MapOp::PutV4(..), MapOp::PutV4(..), MapOp::PutV4(..)]
    ));
    assert_eq!(ops[7..], [MapOp::WriteConfig(new.config)]);
    // And it really fits the store of that size.
    let mut store = MemoryPolicyStore {
        capacities: caps(4),
        ..MemoryPolicyStore::new()
    };
    apply_policy(&mut store, &list(0), ifindex).unwrap();
    apply_policy(&mut store, &list(10), ifindex).unwrap();
    assert_eq!(store.state, new);
}

#[test]
fn apply_reaches_the_desired_state_and_reports_counts() {
    let mut store = MemoryPolicyStore::new();
    let first = apply_policy(&mut store, &strict(), ifindex).unwrap();
    assert_eq!(store.state, desired_state(&strict(), ifindex).unwrap());
    assert_eq!(
        first,
        ApplyOutcome {
            entries_written: 1 + 2 + 2,
            entries_removed: 0
        }
    );
    let back = apply_policy(&mut store, &Policy::default(), ifindex).unwrap();
    assert_eq!(
        store.state,
        desired_state(&Policy::default(), ifindex).unwrap()
    );
    assert_eq!(back.entries_removed, 5);
}

#[test]
fn a_failed_write_restores_the_previous_state() {
    let mut store = MemoryPolicyStore::new();
    apply_policy(&mut store, &strict(), ifindex).unwrap();
    let before = store.state.clone();
    store.log.clear();
    store.fail_at = Some(1);
    let other = Policy {
        allowed_prefixes: Some(vec![p("198.19.0.0/16"), p("198.18.0.0/24")]),
        ..Policy::default()
    };
    let err = apply_policy(&mut store, &other, ifindex).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(store.state, before);
}

#[test]
fn description_and_changes() {
    let text = strict().describe();
    assert_eq!(
        text,
        "mode enforce; interface modes veth1=monitor; unknown connections drop; \
         ADD_ADDR prefixes 198.18.0.0/15, 2001:db8::/32; ADD_ADDR ports none, 443; \
         MP_JOIN SYN limit per source 10/s burst 20; drop events per CPU 5/s burst 7"
    );
    let v4_only = Policy {
        allowed_prefixes: Some(vec![p("198.18.0.0/15")]),
        ..Policy::default()
    };
    assert!(v4_only
        .describe()
        .contains("198.18.0.0/15 (no IPv6 prefix: every IPv6 announcement is dropped)"));
    assert_eq!(
        Policy::default().changes_from(&strict())[..2],
        [
            "mode enforce -> monitor",
            "interface modes veth1=monitor -> none"
        ]
    );
    assert!(strict().changes_from(&strict()).is_empty());
}
