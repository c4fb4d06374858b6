//! Names and layouts of every map and program shared by the eBPF side and the loader.
//! All structs are `#[repr(C)]` with explicit padding and a size assertion, so both sides agree
//! byte for byte and `Pod` is sound.

use crate::hmac::Midstate;

/// Name of the XDP ingress program in the eBPF object.
pub const PROG_XDP_INGRESS: &str = "mptcp_xdp_ingress";
/// The same program without `xdp.frags` and the 5.18 helpers, for older kernels (the loader
/// picks one of the two; both are `mptcp_xdp_ingre` to the kernel, which keeps 15 characters).
pub const PROG_XDP_INGRESS_SINGLE_BUFFER: &str = "mptcp_xdp_ingress_single_buffer";
/// The eBPF object's read-only global saying whether the fast path may call
/// `bpf_ktime_get_coarse_ns` (Linux 5.11): 1 in the object, set to 0 by the loader on older
/// kernels. The verifier knows a frozen read-only global's value and never visits the call it
/// rules out, so one object loads on both.
pub const GLOBAL_COARSE_CLOCK: &str = "COARSE_CLOCK";
/// Name of the tc (clsact) egress program: learns what the host itself sends (its MP_CAPABLE
/// keys, the nonces of its MP_JOIN SYN and SYN/ACK). It never drops.
pub const PROG_TC_EGRESS: &str = "mptcp_tc_egress";
/// Name of a trivial XDP program that only returns XDP_PASS: the benchmark baseline.
pub const PROG_XDP_PASS_BASELINE: &str = "xdp_pass_baseline";
/// Name of the benchmark's reference parser: a plain XDP parser (Ethernet, two VLAN tags, IPv4
/// with any header length or the fixed IPv6 header, TCP, an option walk until kind 30, one
/// per-CPU counter, XDP_PASS) and nothing more: the yardstick for what parsing costs.
pub const PROG_XDP_PARSE_REFERENCE: &str = "xdp_parse_reference";
/// The reference parser's per-CPU counter (u64): segments with a kind-30 option.
pub const MAP_REFERENCE_COUNT: &str = "MPTCP_REFCOUNT";
/// Connection state, keyed by connection id ([`ConnState`]).
pub const MAP_CONNS: &str = "MPTCP_CONNS";
/// Subflow 4-tuple -> connection id ([`FlowKey`] -> [`FlowRef`]).
pub const MAP_FLOWS: &str = "MPTCP_FLOWS";
/// Token -> connection ([`Token`] -> [`TokenRef`]), both tokens of every tracked connection.
pub const MAP_TOKENS: &str = "MPTCP_TOKENS";
/// Pending MP_JOIN handshakes ([`FlowKey`] initiator -> responder -> [`JoinState`]).
pub const MAP_JOINS: &str = "MPTCP_JOINS";
/// Interface index -> `MODE_*`, overriding [`Config::mode`] per interface.
pub const MAP_IFACE_MODES: &str = "MPTCP_IFMODES";
/// IPv4 prefixes an ADD_ADDR may announce (LPM trie, `[u8; 4]` data), when
/// [`ADDR_POLICY_PREFIXES`] is on.
pub const MAP_ALLOW_V4: &str = "MPTCP_ALLOW_V4";
/// IPv6 prefixes an ADD_ADDR may announce (LPM trie, `[u8; 16]` data).
pub const MAP_ALLOW_V6: &str = "MPTCP_ALLOW_V6";
/// Ports an ADD_ADDR may announce (wire bytes -> 1; `[0, 0]` means "no port"), when
/// [`ADDR_POLICY_PORTS`] is on.
pub const MAP_ALLOW_PORTS: &str = "MPTCP_ALLOWPORT";
/// Source address -> rate state of its MP_JOIN SYNs (LRU; [`JoinRateKey`] -> u64).
pub const MAP_JOIN_RATE: &str = "MPTCP_JOINRATE";
/// Ring buffer of [`DropEvent`]s: every dropped or would-drop segment, rate-limited.
pub const MAP_DROP_EVENTS: &str = "MPTCP_DROPS";
/// Per-CPU rate state (u64) of drop events.
pub const MAP_EVENT_BUDGET: &str = "MPTCP_EVBUDGET";
/// Tags already computed for ADD_ADDR messages ([`AddAddrTagKey`] -> the 8 tag bytes, LRU):
/// a retransmitted ADD_ADDR, and a flood of forgeries naming one address, cost a lookup and
/// an 8-byte compare instead of two SHA-256 compressions.
pub const MAP_ADD_ADDR_TAGS: &str = "MPTCP_ADDTAGS";
/// Per-CPU GCRA state (u64) of the HMAC checks a CPU computes ([`Config::crypto_rate`]).
pub const MAP_CRYPTO_BUDGET: &str = "MPTCP_CRYPTOBUD";
/// Per-CPU counters indexed by [`crate::counters::Counter`].
pub const MAP_COUNTERS: &str = "MPTCP_COUNTERS";
/// Ring buffer of [`KeyEvent`]s for the loader.
pub const MAP_KEY_EVENTS: &str = "MPTCP_KEYEVENTS";
/// One-entry array holding the [`Config`] written by the loader.
pub const MAP_CONFIG: &str = "MPTCP_CONFIG";
/// Per-CPU working state of the frame being examined ([`FrameScratch`]).
pub const MAP_FRAME: &str = "MPTCP_FRAME";
/// Capacity of the connection map (LRU: the least recently used connection goes first when full).
pub const MAX_CONNS: u32 = 65_536;
/// Capacity of the subflow map (LRU).
pub const MAX_FLOWS: u32 = 2 * MAX_CONNS;
/// Capacity of the token map (LRU): two tokens per connection.
pub const MAX_TOKENS: u32 = 2 * MAX_CONNS;
/// Capacity of the pending-join map (LRU).
pub const MAX_JOINS: u32 = 16_384;
/// How long a pending MP_JOIN handshake is remembered (covers SYN and third-ACK retransmissions).
pub const JOIN_LIFETIME_NS: u64 = 30_000_000_000;
/// A subflow's `last_seen_s` is rewritten at most this often (seconds), to keep the data path
/// from writing shared memory on every segment.
pub const ACTIVITY_GRANULARITY_S: u32 = 1;
/// Plain MPTCP data segments (DSS) refresh their subflow's activity on one segment in this many,
/// chosen from the segment's sequence and acknowledgement numbers in the everyday shape
/// (`packet::everyday`), at random otherwise: the lookup costs about as much as the rest of the
/// segment's processing, and a live subflow sends thousands of segments per idle timeout.
/// Signalling segments always do. A power of two.
pub const ACTIVITY_SAMPLE_ONE_IN: u32 = 16;
/// Size of the key-event ring buffer in bytes (a power of two, multiple of the page size).
pub const KEY_EVENTS_BYTES: u32 = 256 * 1024;
/// Size of the drop-event ring buffer in bytes.
pub const DROP_EVENTS_BYTES: u32 = 1024 * 1024;
/// Interfaces that can have their own mode.
pub const MAX_IFACE_MODES: u32 = 256;
/// Prefixes per family in the ADD_ADDR allow lists.
pub const MAX_ALLOW_PREFIXES: u32 = 4096;
/// Ports in the ADD_ADDR port allow list.
pub const MAX_ALLOW_PORTS: u32 = 1024;
/// ADD_ADDR tags cached ([`MAP_ADD_ADDR_TAGS`]): a few per connection that announces.
pub const MAX_ADD_ADDR_TAGS: u32 = 16_384;
/// Sources whose MP_JOIN SYN rate is tracked (LRU).
pub const MAX_JOIN_RATE_SOURCES: u32 = 65_536;
/// Drop events per second per CPU unless configured otherwise.
pub const DEFAULT_EVENT_RATE: u32 = 100;
/// Drop events allowed in a burst above the rate unless configured otherwise.
pub const DEFAULT_EVENT_BURST: u32 = 200;
/// Bytes of the frame copied into a [`DropEvent`].
pub const DROP_SNAP_LEN: usize = 128;
const _: () = assert!(DROP_SNAP_LEN.is_power_of_two());

/// `FlowKey::family` for IPv4 (addresses use the first 4 bytes, the rest is zero).
pub const FAMILY_V4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_V6: u8 = 6;

/// One direction of a TCP subflow, addresses and ports as on the wire. Aligned to 8 so that
/// the fast path copies and compares it in words, not bytes.
#[repr(C, align(8))]
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

    /// The orientation under which [`MAP_FLOWS`] stores this subflow (the smaller address and
    /// port first), so one lookup finds it from either direction. The flag says whether `self`
    /// had to be reversed.
    #[inline(always)]
    #[must_use]
    pub fn canonical(&self) -> (Self, bool) {
        let mut i = 0;
        while i < 16 {
            if self.saddr[i] != self.daddr[i] {
                return if self.saddr[i] < self.daddr[i] {
                    (*self, false)
                } else {
                    (self.reversed(), true)
                };
            }
            i += 1;
        }
        if u16::from_be_bytes(self.sport) <= u16::from_be_bytes(self.dport) {
            (*self, false)
        } else {
            (self.reversed(), true)
        }
    }
}

/// The MP_CAPABLE initiator ("A", sent Key-A in the third ACK).
pub const ROLE_A: u8 = 0;
/// The MP_CAPABLE listener ("B").
pub const ROLE_B: u8 = 1;

/// Value of [`MAP_FLOWS`]: which connection a subflow belongs to. The key is the subflow in
/// [`FlowKey::canonical`] orientation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowRef {
    /// Key of [`MAP_CONNS`].
    pub conn_id: u64,
    /// Seconds of `bpf_ktime_get_ns()` when an MPTCP segment of this subflow was last seen
    /// (refreshed at most every [`ACTIVITY_GRANULARITY_S`]); the loader's idle sweep reads it.
    pub last_seen_s: u32,
    /// Role ([`ROLE_A`] / [`ROLE_B`]) of the host at the (canonical) key's source address.
    pub src_role: u8,
    /// Closing marks (`FIN_FROM_*`, [`RST_SEEN`]): what was seen of the subflow's end. Marks
    /// only: an ingress FIN or RST is not authenticated, so it never removes what validates the
    /// connection (see [`crate::validate::subflow_end_action`]).
    pub closing: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
}

/// `FlowRef::closing`: the canonical key's source host sent a FIN.
pub const FIN_FROM_SRC: u8 = 1;
/// `FlowRef::closing`: the canonical key's destination host sent a FIN.
pub const FIN_FROM_DST: u8 = 2;
/// `FlowRef::closing`: a segment with RST was seen (not from this host).
pub const RST_SEEN: u8 = 4;
/// `FlowRef::flags`: the subflow is past its MP_CAPABLE handshake: its keys came from the host
/// itself (egress) or a validated join, or a second segment of the subflow (the same MP_CAPABLE
/// again, an ADD_ADDR) followed the learning one. An MP_CAPABLE with other keys is then foreign
/// and dropped; before, it is a conflict within the handshake (`keys_conflict`).
pub const FLOW_ESTABLISHED: u8 = 1;
const _: () = assert!(core::mem::size_of::<FlowRef>() == 16);

/// `ConnState::ready` bit: `mid[ROLE_A]` holds the midstates of Key-A || Key-B.
pub const READY_A: u16 = 1 << ROLE_A;
/// `ConnState::ready` bit: `mid[ROLE_B]` holds the midstates of Key-B || Key-A.
pub const READY_B: u16 = 1 << ROLE_B;
/// `ConnState::flags`: a second MP_CAPABLE on a subflow still in its handshake (not
/// [`FLOW_ESTABLISHED`]) carried different keys: which keys the hosts use cannot be told, so
/// the connection's signalling passes (counted as `untrusted_conn`).
pub const CONN_FLAG_KEY_CONFLICT: u16 = 1;

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
    /// Subflows in [`MAP_FLOWS`] that have not ended (RST, or FIN from both ends). The
    /// connection's state is removed when this drops to zero. Changed only atomically.
    pub subflows: u32,
    /// Seconds of `bpf_ktime_get_ns()` when the fast path learned the keys.
    pub learned_s: u32,
    /// Token of Key-A (zero until derived, in the same frame that learned the keys). Kept here
    /// so that the connection's activity also refreshes its tokens' place in the LRU token map
    /// and so that they can be removed with the connection without deriving them again.
    pub token_a: [u8; 4],
    /// Token of Key-B.
    pub token_b: [u8; 4],
    /// `READY_*` bits: which `mid` entries are filled (by the loader, or by the fast path itself).
    pub ready: u16,
    /// `CONN_FLAG_*` bits.
    pub flags: u16,
    /// Always zero.
    pub pad: u32,
    /// GCRA state (theoretical arrival time, ns) of the connection's uncached ADD_ADDR checks.
    pub crypto_tat: u64,
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 176);

impl ConnState {
    /// Connection id used as the [`MAP_CONNS`] key: Key-A's wire bytes (64 random bits).
    #[inline(always)]
    #[must_use]
    pub fn id_of(key_a: &[u8; 8]) -> u64 {
        u64::from_ne_bytes(*key_a)
    }
}

/// `KeyEvent::kind`: the fast path learned a new connection's keys (from an MP_CAPABLE). Zero,
/// as these bytes were when they were padding. The pinned layout version was still raised
/// (`mptcp_loader::kernel::layout::LAYOUT_VERSION` 3): an earlier loader adopting this ring
/// would read joins and ends as learned connections.
pub const KEY_EVENT_LEARNED: u8 = 0;
/// `KeyEvent::kind`: a join's third ACK validated (both ends proved the keys) and its subflow
/// is tracked as part of the connection whose Key-A is `key_a` (`key_b` is zero). `flow` is the
/// subflow oriented initiator -> responder, `role` the initiator's role.
pub const KEY_EVENT_JOINED: u8 = 1;
/// `KeyEvent::kind`: the fast path forgot the connection on evidence it authenticated (an
/// MP_FASTCLOSE carrying the receiver's key, or the host's own end of its last subflow).
/// `flow` is zero.
pub const KEY_EVENT_ENDED: u8 = 2;

/// Ring-buffer record ([`MAP_KEY_EVENTS`]): what the fast path learned about a connection
/// (`kind`: [`KEY_EVENT_LEARNED`], [`KEY_EVENT_JOINED`], [`KEY_EVENT_ENDED`]).
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
    /// `KEY_EVENT_*`.
    pub kind: u8,
    /// For [`KEY_EVENT_JOINED`]: the initiator's role ([`ROLE_A`] / [`ROLE_B`]).
    pub role: u8,
    /// Always zero.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<KeyEvent>() == 72);

/// Key of [`MAP_TOKENS`]: a token's 4 wire bytes (SHA-256(key)[0..4]).
pub type Token = [u8; 4];

/// Value of [`MAP_TOKENS`]. Byte arrays keep it at 9 bytes (no u64 alignment padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenRef {
    /// Key of [`MAP_CONNS`], as `ConnState::id_of` bytes (`u64::to_ne_bytes`).
    pub conn_id: [u8; 8],
    /// Role of the key this token was derived from: the host that owns the token.
    pub role: u8,
}
const _: () = assert!(core::mem::size_of::<TokenRef>() == 9);

/// `JoinState::flags`: `nonce_responder` is known (from the SYN/ACK).
pub const JOIN_HAVE_RESPONDER_NONCE: u8 = 1;
/// `JoinState::flags`: the SYN/ACK HMAC was checked and was right.
pub const JOIN_SYNACK_VALID: u8 = 2;
/// `JoinState::flags`: the third-ACK HMAC was checked and was right.
pub const JOIN_ACK_VALID: u8 = 4;

/// Value of [`MAP_JOINS`]: one MP_JOIN handshake in progress, keyed by its subflow oriented
/// initiator -> responder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct JoinState {
    /// Connection named by the SYN's token.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns()` of the SYN; the state is ignored after [`JOIN_LIFETIME_NS`].
    pub created_ns: u64,
    /// R-A, the initiator's nonce from the SYN (wire bytes).
    pub nonce_initiator: [u8; 4],
    /// R-B, the responder's nonce from the SYN/ACK (valid with [`JOIN_HAVE_RESPONDER_NONCE`]).
    pub nonce_responder: [u8; 4],
    /// Role of the initiator in the connection ([`ROLE_A`] / [`ROLE_B`]).
    pub initiator_role: u8,
    /// The initiator's address ID from the SYN.
    pub addr_id: u8,
    /// `JOIN_*` bits.
    pub flags: u8,
    /// HMAC checks this join has caused (at most [`JOIN_CHECKS_MAX`] with a budget on).
    pub checks: u8,
    /// Always zero.
    pub pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<JoinState>() == 32);

/// `Config::mode`: count bad segments as would-drop but pass them (the zero value: safe default).
pub const MODE_MONITOR: u32 = 0;
/// `Config::mode`: drop bad segments.
pub const MODE_ENFORCE: u32 = 1;
/// `Config::unknown_conn`: segments of connections the program does not know pass (fail-open).
pub const UNKNOWN_PASS: u32 = 0;
/// `Config::unknown_conn`: they are dropped (fail-closed; would-drop in monitor mode).
pub const UNKNOWN_DROP: u32 = 1;
/// `Config::addr_policy` bit: an announced address must match [`MAP_ALLOW_V4`] / [`MAP_ALLOW_V6`].
pub const ADDR_POLICY_PREFIXES: u32 = 1;
/// `Config::addr_policy` bit: an announced port must be in [`MAP_ALLOW_PORTS`].
pub const ADDR_POLICY_PORTS: u32 = 2;

/// Value of [`MAP_CONFIG`] (index 0), written by the loader. The zero value is a safe default:
/// monitor mode, fail-open, no policy, no rate limit, no drop events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// [`MODE_MONITOR`] or [`MODE_ENFORCE`] (unless [`MAP_IFACE_MODES`] says otherwise).
    pub mode: u32,
    /// [`UNKNOWN_PASS`] or [`UNKNOWN_DROP`].
    pub unknown_conn: u32,
    /// `ADDR_POLICY_*` bits.
    pub addr_policy: u32,
    /// MP_JOIN SYNs per second allowed from one source address; 0: no limit.
    pub join_syn_rate: u32,
    /// Burst of MP_JOIN SYNs allowed above the rate.
    pub join_syn_burst: u32,
    /// Drop events per second per CPU; 0: none.
    pub event_rate: u32,
    /// Burst of drop events allowed above the rate.
    pub event_burst: u32,
    /// HMAC checks a CPU computes per second, beyond the tag cache (ADD_ADDR, join SYN/ACK and
    /// third ACK), with a burst of a tenth of that; 0: no crypto budget at all, neither per CPU
    /// nor per connection or join (see [`crate::validate::crypto_budget`]).
    pub crypto_rate: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 32);

/// The loader's default [`Config::crypto_rate`]: at about 0.7 us per check, at most 1.4% of a
/// CPU (and about 2 000 in a burst).
pub const DEFAULT_CRYPTO_RATE: u32 = 20_000;
/// Uncached ADD_ADDR checks one connection may cause per second (with a budget on), and
/// their burst: far above what a path manager announces, far below a flood.
pub const CONN_CRYPTO_PER_S: u32 = 10;
/// Burst of [`CONN_CRYPTO_PER_S`].
pub const CONN_CRYPTO_BURST: u32 = 20;
/// HMAC checks (SYN/ACK and third ACK together) one pending join may cause (with a budget
/// on). Linux resets a join after one bad HMAC; this leaves room for retransmissions.
pub const JOIN_CHECKS_MAX: u8 = 4;

/// Key of [`MAP_JOIN_RATE`]: a source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct JoinRateKey {
    /// Address (IPv4 in bytes 0..4).
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<JoinRateKey>() == 20);

/// Ring-buffer record: one dropped or would-drop segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_coarse_ns()`: CLOCK_MONOTONIC to the last timer tick (a few ms).
    pub seen_ns: u64,
    /// The segment's addresses and ports, as on the wire.
    pub flow: FlowKey,
    /// Interface index it arrived on.
    pub ifindex: u32,
    /// [`crate::counters::Counter`] code.
    pub reason: u32,
    /// 1 if dropped, 0 if only counted (monitor mode).
    pub dropped: u8,
    /// Family of `announced_addr` (0 if the segment announced nothing).
    pub announced_family: u8,
    /// Address ID of the announcement.
    pub announced_id: u8,
    /// Always zero.
    pub pad: u8,
    /// MP_JOIN SYN token (zero otherwise), wire bytes.
    pub token: [u8; 4],
    /// ADD_ADDR address (IPv4 in bytes 0..4).
    pub announced_addr: [u8; 16],
    /// ADD_ADDR port, wire bytes (`[0, 0]` without port).
    pub announced_port: [u8; 2],
    /// Length of the frame.
    pub frame_len: u16,
    /// Bytes of the frame in `snap`.
    pub snap_len: u16,
    /// The first `snap_len` bytes of the frame (Ethernet header first).
    pub snap: [u8; DROP_SNAP_LEN],
    /// Always zero.
    pub pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 216);

/// What a frame's drop event says besides the reason, gathered while the frame is examined.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventNote {
    /// MP_JOIN SYN token.
    pub token: [u8; 4],
    /// ADD_ADDR address.
    pub addr: [u8; 16],
    /// ADD_ADDR port.
    pub port: [u8; 2],
    /// ADD_ADDR family (0: none).
    pub family: u8,
    /// ADD_ADDR address ID.
    pub id: u8,
}

/// `HmacJob::kind`: no job.
pub const JOB_NONE: u8 = 0;
/// `HmacJob::kind`: ADD_ADDR, compare digest bytes 24..31.
pub const JOB_ADD_ADDR: u8 = 1;
/// `HmacJob::kind`: MP_JOIN SYN/ACK, compare digest bytes 0..7.
pub const JOB_JOIN_SYNACK: u8 = 2;
/// `HmacJob::kind`: MP_JOIN third ACK, compare digest bytes 0..19.
pub const JOB_JOIN_ACK: u8 = 3;

/// Key of [`MAP_ADD_ADDR_TAGS`]: everything an ADD_ADDR's tag depends on. There is no nonce:
/// the tag of (keys, address ID, address, port) never changes, so a cached tag is right for as
/// long as the same keys are in the key.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddAddrTagKey {
    /// The announcer's key (the HMAC key is sender's key || receiver's key).
    pub key_sender: [u8; 8],
    /// The other host's key.
    pub key_receiver: [u8; 8],
    /// The announced address (IPv4 in bytes 0..4, the rest zero).
    pub addr: [u8; 16],
    /// The announced port, wire bytes (`[0, 0]` when absent).
    pub port: [u8; 2],
    /// Address ID.
    pub id: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<AddAddrTagKey>() == 40);

/// One HMAC check the XDP program has prepared for the current frame. The checks run last, from
/// one place, on data in a per-CPU map value: every path of the parser then reaches the
/// SHA-256 code in the same verifier state, so that code is verified a few times, not once per
/// path (which exceeds the verifier's instruction budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HmacJob {
    /// The sender's midstates (valid unless `need_midstate`).
    pub mid: Midstate,
    /// The message's final inner block (consumed by the check).
    pub block: crate::sha256::Block,
    /// Block buffer for computing `mid`.
    pub scratch: crate::sha256::Block,
    /// The HMAC, once computed.
    pub digest: crate::sha256::State,
    /// For joins: the subflow, initiator -> responder (tracked when the check succeeds).
    pub flow: FlowKey,
    /// Sender's key, to compute `mid` when `need_midstate` is set.
    pub key_sender: [u8; 8],
    /// Receiver's key, idem.
    pub key_receiver: [u8; 8],
    /// Connection of the segment.
    pub conn_id: u64,
    /// The HMAC bytes the segment carries (8 or 20 of them, by `kind`).
    pub expected: [u8; 20],
    /// For a SYN/ACK: the responder's nonce, recorded when the check succeeds.
    pub nonce_responder: [u8; 4],
    /// `JOB_*`.
    pub kind: u8,
    /// Non-zero when the loader has not installed the sender's midstates yet.
    pub need_midstate: u8,
    /// Sender's role ([`ROLE_A`] / [`ROLE_B`]).
    pub role: u8,
    /// For joins: the initiator's role.
    pub initiator_role: u8,
    /// [`crate::counters::Counter`] code of the check's result, written when the job runs.
    pub outcome: u32,
    /// For an ADD_ADDR: where its tag is cached once computed.
    pub tag_key: AddAddrTagKey,
}
const _: () = assert!(core::mem::size_of::<HmacJob>() == 360);

/// `TokenJob::op`: nothing to do.
pub const TOKENS_NONE: u8 = 0;
/// `TokenJob::op`: derive both tokens and insert them into [`MAP_TOKENS`].
pub const TOKENS_INSTALL: u8 = 1;
/// `TokenJob::op`: derive both tokens and remove them (the connection ended).
pub const TOKENS_REMOVE: u8 = 2;

/// Token work of the current frame (one SHA-256 compression per key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenJob {
    /// Key-A, wire bytes.
    pub key_a: [u8; 8],
    /// Key-B, wire bytes.
    pub key_b: [u8; 8],
    /// Connection id.
    pub conn_id: u64,
    /// `TOKENS_*`.
    pub op: u8,
    /// Always zero.
    pub pad: [u8; 7],
    /// Block buffer for the derivation (kept here, off the BPF stack).
    pub block: crate::sha256::Block,
    /// Digest buffer for the derivation.
    pub digest: crate::sha256::State,
}

/// Slots of [`FrameChecks::jobs`]: ADD_ADDRs use `0..MAX_ADD_ADDRS`, an MP_JOIN the last one.
pub const JOIN_JOB_SLOT: usize = crate::packet::MAX_ADD_ADDRS;

/// Value of [`MAP_FRAME`]: what each stage of the fast path leaves for the next, for the frame
/// being examined on this CPU. The stages are separate BPF functions that hand over through
/// this map memory, not through registers or the stack: the verifier then checks each stage
/// once for all the paths through the one before (see [`crate::packet::WalkState`]), and the
/// buffers stay off the 512-byte BPF stack.
///
/// Order of the stages: the everyday shapes or the parser write `reason` (a decided frame ends
/// there); the parser fills `walk`; `decide` (ingress checks or egress learning) writes
/// `checks` and `reason`; the crypto stage runs `checks.jobs` and `checks.tokens` and writes
/// the final `reason`; a drop event reports `checks.note`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameScratch {
    /// [`crate::counters::Counter`] code of the frame: its reason so far, and its final reason
    /// once the checks ran (tests read it after each BPF_PROG_TEST_RUN; it stays first).
    pub reason: u32,
    /// Always zero.
    pub pad: u32,
    /// The parser's output: the segment's headers and the MPTCP options found.
    pub walk: crate::packet::WalkState,
    /// What `decide` prepares and the crypto stage and the drop event consume.
    pub checks: FrameChecks,
}
const _: () = assert!(core::mem::offset_of!(FrameScratch, reason) == 0);

/// The part of [`FrameScratch`] that `decide` writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameChecks {
    /// Interface the frame arrived on (its mode may differ from the global one).
    pub ifindex: u32,
    /// `MODE_*` on that interface, looked up once per frame before the options are judged.
    pub mode: u32,
    /// The HMAC checks to run.
    pub jobs: [HmacJob; JOIN_JOB_SLOT + 1],
    /// Token derivation for a connection learned or ended by this frame.
    pub tokens: TokenJob,
    /// What a drop event of this frame reports.
    pub note: EventNote,
    /// A connection being learned, built here before it is inserted into [`MAP_CONNS`].
    pub new_conn: ConnState,
    /// A join validated or a connection ended by this frame, for the loader (sent once the
    /// frame is judged); `kind` [`KEY_EVENT_LEARNED`] here means nothing to send (a learn is
    /// sent where it happens).
    pub announce: KeyEvent,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowRef {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::KeyEvent {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TokenRef {}
    unsafe impl aya::Pod for super::JoinState {}
    unsafe impl aya::Pod for super::AddAddrTagKey {}
    unsafe impl aya::Pod for super::JoinRateKey {}
    unsafe impl aya::Pod for super::DropEvent {}
}
