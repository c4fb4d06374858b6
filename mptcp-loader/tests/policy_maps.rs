//! The policy against the real kernel maps of the loaded object: applied, replaced (entries the
//! new policy no longer names are removed), read back the way the fast path looks them up, and
//! reloaded from a file by `PolicyKeeper` (an invalid file leaves the policy in force). Needs
//! root and the built object; attaches nothing. Skipped otherwise.

mod netlab;

use std::{collections::BTreeMap, fs, path::PathBuf};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData};
use mptcp_common::maps::{
    Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6,
    MAP_CONFIG, MAP_IFACE_MODES, MODE_ENFORCE, MODE_MONITOR, UNKNOWN_DROP,
};
use mptcp_loader::{
    cli::policy_keeper::PolicyKeeper,
    kernel::preflight::interface_index,
    observe::loader_counters::{LoaderCounter, LoaderCounters},
    policy::{
        apply_policy, config::PolicySource, desired_state, Policy, PolicyMaps, PolicyStore as _,
        PortRule, Prefix, RateLimit, UnknownConn,
    },
    FilterMode, Firewall, EBPF_OBJ,
};
use netlab::can_load;

fn prefix(text: &str) -> Prefix {
    Prefix::parse(text).unwrap()
}

fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// What the fast path sees: the config, an address lookup (LPM, full length like the program),
/// a port lookup, an interface's mode.
struct View<'a>(&'a Firewall);

impl View<'_> {
    fn config(&self) -> Config {
        let map: Array<&MapData, Config> =
            Array::try_from(self.0.ebpf().map(MAP_CONFIG).unwrap()).unwrap();
        map.get(&0, 0).unwrap()
    }

    fn v4_allowed(&self, addr: [u8; 4]) -> bool {
        let map: LpmTrie<&MapData, [u8; 4], u8> =
            LpmTrie::try_from(self.0.ebpf().map(MAP_ALLOW_V4).unwrap()).unwrap();
        map.get(&Key::new(32, addr), 0).is_ok()
    }

    fn v6_allowed(&self, addr: [u8; 16]) -> bool {
        let map: LpmTrie<&MapData, [u8; 16], u8> =
            LpmTrie::try_from(self.0.ebpf().map(MAP_ALLOW_V6).unwrap()).unwrap();
        map.get(&Key::new(128, addr), 0).is_ok()
    }

    fn port_allowed(&self, port: [u8; 2]) -> bool {
        let map: HashMap<&MapData, [u8; 2], u8> =
            HashMap::try_from(self.0.ebpf().map(MAP_ALLOW_PORTS).unwrap()).unwrap();
        map.get(&port, 0).is_ok()
    }

    fn iface_mode(&self, ifindex: u32) -> Option<u32> {
        let map: HashMap<&MapData, u32, u32> =
            HashMap::try_from(self.0.ebpf().map(MAP_IFACE_MODES).unwrap()).unwrap();
        map.get(&ifindex, 0).ok()
    }
}

#[test]
fn policy_lands_in_the_kernel_maps_and_stale_entries_are_removed() {
    if !can_load("policy_lands_in_the_kernel_maps_and_stale_entries_are_removed") {
        return;
    }
    let firewall = Firewall::load(EBPF_OBJ).unwrap();
    let mut maps = PolicyMaps::open(firewall.ebpf()).unwrap();
    let view = View(&firewall);
    let lo = interface_index("lo").unwrap();

    let strict = Policy {
        mode: FilterMode::Enforce,
        interface_modes: BTreeMap::from([("lo".to_owned(), FilterMode::Monitor)]),
        unknown_conn: UnknownConn::Drop,
        allowed_prefixes: Some(vec![prefix("198.18.0.0/15"), prefix("2001:db8::/32")]),
        allowed_ports: Some(vec![PortRule::NoPort, PortRule::Port(443)]),
        join_syn_limit: Some(RateLimit {
            per_second: 10,
            burst: 20,
        }),
        drop_events: RateLimit {
            per_second: 5,
            burst: 6,
        },
    };
    apply_policy(&mut maps, &strict, interface_index).unwrap();
    assert_eq!(
        view.config(),
        Config {
            mode: MODE_ENFORCE,
            unknown_conn: UNKNOWN_DROP,
            addr_policy: ADDR_POLICY_PREFIXES | ADDR_POLICY_PORTS,
            join_syn_rate: 10,
            join_syn_burst: 20,
            event_rate: 5,
            event_burst: 6,
            crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
        }
    );
    assert!(view.v4_allowed([198, 19, 255, 1]));
    assert!(!view.v4_allowed([198, 20, 0, 1]));
    assert!(view.v6_allowed(v6("2001:db8:1::7")));
    assert!(!view.v6_allowed(v6("2001:db9::1")));
    assert!(view.port_allowed([0, 0]) && view.port_allowed(443u16.to_be_bytes()));
    assert!(!view.port_allowed(80u16.to_be_bytes()));
    assert_eq!(view.iface_mode(lo), Some(MODE_MONITOR));
    // What the loader reads back is what it planned.
    assert_eq!(
        maps.read_state().unwrap(),
        desired_state(&strict, interface_index).unwrap()
    );

    // A narrower policy: the entries it no longer names are gone.
    let narrower = Policy {
        interface_modes: BTreeMap::new(),
        allowed_prefixes: Some(vec![prefix("198.18.7.0/24")]),
        allowed_ports: Some(vec![PortRule::Port(8443)]),
        ..strict.clone()
    };
    let outcome = apply_policy(&mut maps, &narrower, interface_index).unwrap();
    assert_eq!((outcome.entries_written, outcome.entries_removed), (2, 5));
    assert!(view.v4_allowed([198, 18, 7, 9]));
    assert!(!view.v4_allowed([198, 19, 255, 1]));
    assert!(!view.v6_allowed(v6("2001:db8:1::7")), "no IPv6 prefix left");
    assert!(!view.port_allowed([0, 0]) && view.port_allowed(8443u16.to_be_bytes()));
    assert_eq!(view.iface_mode(lo), None);

    // Back to the default: no restriction, every list empty.
    apply_policy(&mut maps, &Policy::default(), interface_index).unwrap();
    let fill: Vec<(&str, u64)> = maps
        .fill()
        .unwrap()
        .iter()
        .map(|m| (m.name, m.entries))
        .collect();
    assert_eq!(
        fill,
        [
            (MAP_IFACE_MODES, 0),
            (MAP_ALLOW_V4, 0),
            (MAP_ALLOW_V6, 0),
            (MAP_ALLOW_PORTS, 0)
        ]
    );
    assert_eq!(view.config(), Policy::default().config());
    // The metrics' handle sees the same maps.
    let other = maps.try_clone().unwrap();
    assert_eq!(other.read_state().unwrap(), maps.read_state().unwrap());
}

#[test]
fn sighup_reload_applies_a_valid_file_and_keeps_the_policy_on_an_invalid_one() {
    if !can_load("sighup_reload_applies_a_valid_file_and_keeps_the_policy_on_an_invalid_one") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mptcp-fw-policy-maps-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("policy.toml");
    fs::write(
        &file,
        "mode = \"enforce\"\n[add_addr]\nprefixes = [\"198.18.0.0/15\"]\n",
    )
    .unwrap();
    let source = PolicySource {
        file: Some(file.clone()),
        interfaces: vec!["lo".to_owned()],
        ..PolicySource::defaults()
    };
    let firewall = Firewall::load(EBPF_OBJ).unwrap();
    let view = View(&firewall);
    let mut keeper =
        PolicyKeeper::start(firewall.ebpf(), source.clone(), source.load().unwrap()).unwrap();
    assert!(view.v4_allowed([198, 18, 1, 1]));
    let mut counters = LoaderCounters::default();

    fs::write(
        &file,
        "mode = \"monitor\"\n[add_addr]\nprefixes = [\"198.19.0.0/16\"]\nports = [\"none\"]\n",
    )
    .unwrap();
    keeper.reload(&mut counters);
    assert_eq!(counters.get(LoaderCounter::PolicyReloads), 1);
    assert_eq!(view.config().mode, MODE_MONITOR);
    assert!(!view.v4_allowed([198, 18, 1, 1]) && view.v4_allowed([198, 19, 1, 1]));
    assert!(view.port_allowed([0, 0]));

    // Invalid: a bad CIDR on line 3. Rejected, counted; nothing changes.
    let before = keeper.current().clone();
    fs::write(
        &file,
        "mode = \"enforce\"\n[add_addr]\nprefixes = [\"198.18.0.0/33\"]\n",
    )
    .unwrap();
    keeper.reload(&mut counters);
    assert_eq!(counters.get(LoaderCounter::PolicyReloadErrors), 1);
    assert_eq!(counters.get(LoaderCounter::PolicyReloads), 1);
    assert_eq!(keeper.current(), &before);
    assert_eq!(view.config().mode, MODE_MONITOR);
    assert!(view.v4_allowed([198, 19, 1, 1]));

    // A file that names an interface outside --iface is rejected the same way.
    fs::write(&file, "[interfaces.eth9]\nmode = \"enforce\"\n").unwrap();
    keeper.reload(&mut counters);
    assert_eq!(counters.get(LoaderCounter::PolicyReloadErrors), 2);
    assert_eq!(keeper.current(), &before);
    fs::remove_dir_all(&dir).unwrap();
}
