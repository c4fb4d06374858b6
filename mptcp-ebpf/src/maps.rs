//! The maps of the fast path (their layouts and names live in `mptcp_common::maps`), and the
//! small helpers every stage uses with them: counters, configuration, mode and clocks.

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use mptcp_common::{
    counters::{Counter, COUNTER_CAPACITY},
    maps::{
        AddAddrTagKey, Config, ConnState, FlowKey, FlowRef, FrameScratch, JoinRateKey, JoinState,
        Token, TokenRef, DROP_EVENTS_BYTES, KEY_EVENTS_BYTES, MAX_ADD_ADDR_TAGS, MAX_ALLOW_PORTS,
        MAX_ALLOW_PREFIXES, MAX_CONNS, MAX_FLOWS, MAX_IFACE_MODES, MAX_JOINS,
        MAX_JOIN_RATE_SOURCES, MAX_TOKENS, MODE_MONITOR,
    },
};

/// BPF_NOEXIST: insert only if the key is absent.
pub(crate) const BPF_NOEXIST: u64 = 1;
/// BPF_ANY: insert or replace.
pub(crate) const BPF_ANY: u64 = 0;
pub(crate) const NS_PER_S: u64 = 1_000_000_000;

#[map]
pub(crate) static MPTCP_CONNS: LruHashMap<u64, ConnState> =
    LruHashMap::with_max_entries(MAX_CONNS, 0);
#[map]
pub(crate) static MPTCP_FLOWS: LruHashMap<FlowKey, FlowRef> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub(crate) static MPTCP_TOKENS: LruHashMap<Token, TokenRef> =
    LruHashMap::with_max_entries(MAX_TOKENS, 0);
#[map]
pub(crate) static MPTCP_JOINS: LruHashMap<FlowKey, JoinState> =
    LruHashMap::with_max_entries(MAX_JOINS, 0);
#[map]
pub(crate) static MPTCP_ADDTAGS: LruHashMap<AddAddrTagKey, [u8; 8]> =
    LruHashMap::with_max_entries(MAX_ADD_ADDR_TAGS, 0);
#[map]
pub(crate) static MPTCP_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(COUNTER_CAPACITY, 0);
#[map]
pub(crate) static MPTCP_KEYEVENTS: RingBuf = RingBuf::with_byte_size(KEY_EVENTS_BYTES, 0);
#[map]
pub(crate) static MPTCP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Per-CPU working state of the frame being examined: what each stage leaves for the next.
#[map]
pub(crate) static MPTCP_FRAME: PerCpuArray<FrameScratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static MPTCP_IFMODES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACE_MODES, 0);
#[map]
pub(crate) static MPTCP_ALLOW_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
pub(crate) static MPTCP_ALLOW_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
pub(crate) static MPTCP_ALLOWPORT: HashMap<[u8; 2], u8> =
    HashMap::with_max_entries(MAX_ALLOW_PORTS, 0);
#[map]
pub(crate) static MPTCP_JOINRATE: LruHashMap<JoinRateKey, u64> =
    LruHashMap::with_max_entries(MAX_JOIN_RATE_SOURCES, 0);
#[map]
pub(crate) static MPTCP_DROPS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);
/// Per-CPU rate state of HMAC checks (GCRA theoretical arrival time).
#[map]
pub(crate) static MPTCP_CRYPTOBUD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU rate state of drop events (GCRA theoretical arrival time).
#[map]
pub(crate) static MPTCP_EVBUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = MPTCP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The mode on this interface: its own, if the loader set one, else the global one.
#[inline(always)]
pub(crate) fn mode(ifindex: u32) -> u32 {
    if let Some(mode) = MPTCP_IFMODES.get_ptr(&ifindex) {
        // SAFETY: map value pointer from a successful lookup.
        return unsafe { *mode };
    }
    MPTCP_CONFIG.get(0).map_or(MODE_MONITOR, |c| c.mode)
}

/// The global configuration (all zero, the safe default, if unset).
#[inline(always)]
pub(crate) fn config() -> Config {
    MPTCP_CONFIG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// [`now_ns`] to the last timer tick (CLOCK_MONOTONIC_COARSE, kernels >= 5.11): enough for a
/// subflow's activity in seconds and the drop-event budget, and several times cheaper than
/// reading the clock source (a VM's clock read is one of the larger costs of a forged frame).
#[inline(always)]
pub(crate) fn now_coarse_ns() -> u64 {
    // SAFETY: a read of a read-only global (a constant to the verifier), then helpers without
    // preconditions. Both clocks are CLOCK_MONOTONIC, so times from either compare.
    unsafe {
        if core::ptr::read_volatile(&raw const COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// `mptcp_common::maps::GLOBAL_COARSE_CLOCK`: whether this kernel has
/// `bpf_ktime_get_coarse_ns` (5.11); the loader writes 0 before loading on older kernels.
#[no_mangle]
pub(crate) static COARSE_CLOCK: u8 = 1;

/// The counter with this code (codes come from `prepare`, which only stores valid ones).
#[inline(always)]
pub(crate) fn counter_from(code: u32) -> Counter {
    match Counter::ALL.get(code as usize) {
        Some(c) => *c,
        None => Counter::MptcpOther,
    }
}
