//! Names and layouts of every map and program shared by the eBPF side and the loader.
//! All structs are `#[repr(C)]` with explicit padding and a size assertion, so both sides agree
//! byte for byte and `Pod` is sound.

use crate::hmac::Midstate;

/// Name of the XDP ingress program in the eBPF object.
pub const PROG_XDP_INGRESS: &str = "mptcp_xdp_ingress";
/// Name of a trivial XDP program that only returns XDP_PASS: the benchmark baseline.
pub const PROG_XDP_PASS_BASELINE: &str = "xdp_pass_baseline";
/// Connection state, keyed by connection id ([`ConnState`]).
pub const MAP_CONNS: &str = "MPTCP_CONNS";
/// Subflow 4-tuple -> connection id ([`FlowKey`] -> [`FlowRef`]).
pub const MAP_FLOWS: &str = "MPTCP_FLOWS";
/// Per-CPU counters indexed by [`crate::counters::Counter`].
pub const MAP_COUNTERS: &str = "MPTCP_COUNTERS";
/// Ring buffer of [`KeyEvent`]s for the loader.
pub const MAP_KEY_EVENTS: &str = "MPTCP_KEYEVENTS";
/// One-entry array holding the [`Config`] written by the loader.
pub const MAP_CONFIG: &str = "MPTCP_CONFIG";
/// Per-CPU scratch space used to build a [`ConnState`] off the 512-byte BPF stack.
pub const MAP_SCRATCH: &str = "MPTCP_SCRATCH";
/// Per-CPU option-walk state of the XDP program ([`crate::packet::WalkState`]).
pub const MAP_WALK: &str = "MPTCP_WALK";
/// Per-CPU HMAC work of the XDP program for the current frame ([`HmacJobs`]).
pub const MAP_HMAC_JOBS: &str = "MPTCP_HMAC_JOBS";
/// Every map the loader pins, in a fixed order.
pub const PINNED_MAPS: [&str; 5] = [MAP_CONNS, MAP_FLOWS, MAP_COUNTERS, MAP_KEY_EVENTS, MAP_CONFIG];

/// Capacity of the connection map (LRU: the least recently used connection goes first when full).
pub const MAX_CONNS: u32 = 65_536;
/// Capacity of the subflow map (LRU).
pub const MAX_FLOWS: u32 = 2 * MAX_CONNS;
/// Size of the key-event ring buffer in bytes (a power of two, multiple of the page size).
pub const KEY_EVENTS_BYTES: u32 = 256 * 1024;

/// `FlowKey::family` for IPv4 (addresses use the first 4 bytes, the rest is zero).
pub const FAMILY_V4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_V6: u8 = 6;

/// One direction of a TCP subflow, addresses and ports as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address (IPv4 in bytes 0..4).
    pub saddr: [u8; 16],
    /// Destination address (IPv4 in bytes 0..4).
    pub daddr: [u8; 16],
    /// Source port, network byte order.
    pub sport: [u8; 2],
    /// Destination port, network byte order.
    pub dport: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero (part of the hash key).
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The same subflow seen from the other end.
    #[inline(always)]
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            family: self.family,
            pad: [0; 3],
        }
    }
}

/// The MP_CAPABLE initiator ("A", sent Key-A in the third ACK).
pub const ROLE_A: u8 = 0;
/// The MP_CAPABLE listener ("B").
pub const ROLE_B: u8 = 1;

/// Value of [`MAP_FLOWS`]: which connection a subflow belongs to. The key is stored once, oriented
/// so that `saddr` is the host of role [`FlowRef::src_role`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowRef {
    /// Key of [`MAP_CONNS`].
    pub conn_id: u64,
    /// Role ([`ROLE_A`] / [`ROLE_B`]) of the host at the key's source address.
    pub src_role: u8,
    /// Always zero.
    pub pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<FlowRef>() == 16);

/// `ConnState::ready` bit: `mid[ROLE_A]` holds the midstates of Key-A || Key-B.
pub const READY_A: u32 = 1 << ROLE_A;
/// `ConnState::ready` bit: `mid[ROLE_B]` holds the midstates of Key-B || Key-A.
pub const READY_B: u32 = 1 << ROLE_B;
/// `ConnState::flags`: a later MP_CAPABLE on the same subflow carried different keys, so the
/// stored keys cannot be trusted and the connection's ADD_ADDRs pass (counted).
pub const CONN_FLAG_KEY_CONFLICT: u32 = 1;

/// Value of [`MAP_CONNS`]: what the fast path needs to check one MPTCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// Key-A, wire bytes.
    pub key_a: [u8; 8],
    /// Key-B, wire bytes.
    pub key_b: [u8; 8],
    /// HMAC midstates per sending role: `mid[ROLE_A]` keyed Key-A || Key-B, `mid[ROLE_B]` the reverse.
    pub mid: [Midstate; 2],
    /// `READY_*` bits: which `mid` entries are filled (by the loader, or by the fast path itself).
    pub ready: u32,
    /// `CONN_FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` when the fast path learned the keys.
    pub learned_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 160);

impl ConnState {
    /// Connection id used as the [`MAP_CONNS`] key: Key-A's wire bytes (64 random bits).
    #[inline(always)]
    #[must_use]
    pub fn id_of(key_a: &[u8; 8]) -> u64 {
        u64::from_ne_bytes(*key_a)
    }
}

/// Ring-buffer record: the fast path learned a new connection's keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyEvent {
    /// The subflow, oriented A -> B (direction of the MP_CAPABLE third ACK).
    pub flow: FlowKey,
    /// Key-A, wire bytes.
    pub key_a: [u8; 8],
    /// Key-B, wire bytes.
    pub key_b: [u8; 8],
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the key-carrying segment was seen.
    pub seen_ns: u64,
    /// Interface index the segment arrived on.
    pub ifindex: u32,
    /// MP_CAPABLE flags byte (`opt[3]`), e.g. 0x81 when DSS checksums are on.
    pub mpc_flags: u8,
    /// Always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<KeyEvent>() == 72);

/// `Config::mode`: count bad segments as would-drop but pass them (the zero value: safe default).
pub const MODE_MONITOR: u32 = 0;
/// `Config::mode`: drop bad segments.
pub const MODE_ENFORCE: u32 = 1;

/// Value of [`MAP_CONFIG`] (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// [`MODE_MONITOR`] or [`MODE_ENFORCE`].
    pub mode: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// One HMAC check the XDP program has prepared for the current frame. The checks run last, from
/// one place, on data in this per-CPU map value: every path of the parser then reaches the
/// SHA-256 code in the same verifier state, so that code is verified a few times, not once per
/// path (which exceeds the verifier's instruction budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HmacJob {
    /// The sender's midstates (valid unless `need_midstate`).
    pub mid: Midstate,
    /// The message's final inner block.
    pub block: crate::sha256::Block,
    /// Sender's key, to compute `mid` when `need_midstate` is set.
    pub key_sender: [u8; 8],
    /// Receiver's key, idem.
    pub key_receiver: [u8; 8],
    /// Connection whose `mid[role]` is filled in when the job computes it.
    pub conn_id: u64,
    /// The truncated HMAC the segment carries.
    pub expected: [u8; 8],
    /// Non-zero when this job is to be run.
    pub active: u8,
    /// Non-zero when the loader has not installed the sender's midstates yet.
    pub need_midstate: u8,
    /// Sender's role ([`ROLE_A`] / [`ROLE_B`]).
    pub role: u8,
    /// Always zero.
    pub pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<HmacJob>() == 168);

/// Value of [`MAP_HMAC_JOBS`]: the checks of one frame (at most two ADD_ADDRs fit one segment)
/// and the frame's reason so far, kept here so that it is not a verifier-tracked register.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HmacJobs {
    /// The prepared checks.
    pub jobs: [HmacJob; crate::packet::MAX_ADD_ADDRS],
    /// [`crate::counters::Counter`] code of the frame before the checks run.
    pub reason: u32,
    /// Always zero.
    pub pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowRef {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::KeyEvent {}
    unsafe impl aya::Pod for super::Config {}
}
