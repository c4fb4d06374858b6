//! A release that only appends counters adopts the pins of the one before without detaching.
//!
//! The counter array is sized `COUNTER_CAPACITY`, not one slot per counter, so a build with
//! fewer counters defines the same array and pins the same layout record. This cannot run two
//! real builds: it simulates the older one. A first `run --keep-attached` (this build) protects
//! one end of a veth pair (198.18.100.0/24, namespaces of its own) and counts some pings; then
//! the test makes its pins look like those of a build that knew only the counters before
//! `egress`: it zeroes the pinned slots of `egress` and every later counter (such a build never
//! wrote them), and checks that the pinned layout record is the one this build computes from
//! its object (what the older build computed from the same array). A second `run` must adopt
//! everything without a gap (same XDP program, same links), continue the older counters, and
//! count the appended ones from zero.
//!
//! Needs root, `ip`, `nsenter`, `ping` and the built eBPF object; skipped otherwise. The
//! namespaces (and whatever the loader pinned for them) are deleted whatever happens.

mod netlab;

use aya::maps::{Map, MapData, MapInfo, PerCpuArray, PerCpuValues};
use mptcp_common::{
    counters::{Counter, COUNTER_CAPACITY, COUNTER_COUNT},
    maps::MAP_COUNTERS,
};
use mptcp_loader::{kernel::layout::ObjectLayout, kernel::state::read_layout_hash};
use netlab::{can_run, start_run, veth, Netns};

const HOST: &str = "198.18.100.1";
const PEER: &str = "198.18.100.2";

#[test]
fn pins_of_a_build_with_fewer_counters_are_adopted_without_a_gap() {
    let test = "pins_of_a_build_with_fewer_counters_are_adopted_without_a_gap";
    if !can_run(test, &["ping"]) {
        return;
    }
    let ns = Netns::new("cg");
    let peer = Netns::new("cp");
    veth(&ns, "g0", HOST, &peer, "g1", PEER);

    let mut first = start_run(&ns, &["--iface", "g0", "--keep-attached"]);
    ns.ping(PEER, 20);
    first.stop(libc::SIGTERM);
    let status = ns.loader_json(&["status"]);
    let (xdp_before, tc_before) = (
        status["interfaces"][0]["xdp"].clone(),
        status["interfaces"][0]["tc_egress"].clone(),
    );
    let prog_before = ns.xdp_prog_id("g0").expect("left attached");

    // The pins as the build before would have left them.
    let pin_dir = ns.pin_dir();
    let counters_pin = pin_dir.join(MAP_COUNTERS);
    assert_eq!(
        MapInfo::from_pin(&counters_pin).unwrap().max_entries(),
        COUNTER_CAPACITY,
        "the counter array is sized by its capacity"
    );
    assert_eq!(
        read_layout_hash(&pin_dir),
        Some(ObjectLayout::embedded().unwrap().hash()),
        "the layout record does not depend on the number of counters"
    );
    let mut counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
        Map::from_map_data(MapData::from_pin(&counters_pin).unwrap()).unwrap(),
    )
    .unwrap();
    let total = |counters: &PerCpuArray<MapData, u64>, c: Counter| -> u64 {
        counters.get(&(c as u32), 0).unwrap().iter().sum()
    };
    let not_tcp_before = total(&counters, Counter::NotTcp);
    let egress_before = total(&counters, Counter::Egress);
    assert!(
        not_tcp_before >= 20 && egress_before >= 20,
        "{not_tcp_before} {egress_before}"
    );
    let cpus = aya::util::nr_cpus().unwrap();
    for index in Counter::Egress as u32..COUNTER_COUNT {
        let zero = PerCpuValues::try_from(vec![0u64; cpus]).unwrap();
        counters.set(index, zero, 0).unwrap();
    }
    drop(counters);

    // This build adopts them.
    let mut second = start_run(&ns, &["--iface", "g0"]);
    assert!(
        second.log().contains("attached to g0 without a gap"),
        "{}",
        second.log()
    );
    assert_eq!(
        ns.xdp_prog_id("g0"),
        Some(prog_before),
        "the XDP program never changed"
    );
    let status = ns.loader_json(&["status"]);
    assert_eq!(status["interfaces"][0]["xdp"], xdp_before);
    assert_eq!(status["interfaces"][0]["tc_egress"], tc_before);
    ns.ping(PEER, 5);
    let (not_tcp, egress) = (ns.counter("not_tcp"), ns.counter("egress"));
    second.stop(libc::SIGTERM);
    eprintln!(
        "not_tcp {not_tcp_before} -> {not_tcp} (continued), egress {egress_before} -> zeroed -> \
         {egress} (an appended counter, from zero)"
    );
    assert!(not_tcp >= not_tcp_before + 5, "the older counters continue");
    assert!(
        (5..egress_before).contains(&egress),
        "the appended counters count from zero"
    );
}
