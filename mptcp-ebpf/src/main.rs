//! Fast path of the MPTCP signalling firewall: an XDP ingress program that checks, and a tc
//! egress program that learns what the host itself sends.
//!
//! Ingress, for every frame: parse up to the TCP options (mptcp-common), learn the keys of new
//! MPTCP connections from MP_CAPABLE, check the truncated HMAC of every ADD_ADDR, gate MP_JOIN
//! SYNs on known tokens, check MP_JOIN SYN/ACK and third-ACK HMACs, check MP_FASTCLOSE keys, and
//! follow subflow and connection lifetimes. A failed check drops in enforce mode; everything the
//! program cannot judge passes and is counted.
//!
//! Structure, for the verifier: `prepare` parses and looks up, and leaves the crypto work (HMAC
//! jobs, token derivation) and the frame's reason in a per-CPU map value; `run_jobs` then does
//! all SHA-256 work from a single place (see `HmacJob`).
#![no_std]
#![no_main]
// Atomic add on map memory: the BPF target's core has no AtomicU64::fetch_add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ops::ControlFlow;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use mptcp_common::{
    counters::{Counter, COUNTER_CAPACITY},
    hmac::join_block,
    hmac::{add_addr_tag_into, finish_into, join_synack_truncated, midstate_into, token_into},
    maps::{
        AddAddrTagKey, Config, ConnState, DropEvent, FlowKey, FlowRef, HmacJob, HmacJobs,
        JoinRateKey, JoinState, KeyEvent, Token, TokenRef, ACTIVITY_GRANULARITY_S,
        ACTIVITY_SAMPLE_ONE_IN, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, CONN_CRYPTO_BURST,
        CONN_CRYPTO_PER_S, CONN_FLAG_KEY_CONFLICT, DROP_EVENTS_BYTES, DROP_SNAP_LEN, FAMILY_V4,
        FLOW_ESTABLISHED, JOB_ADD_ADDR, JOB_JOIN_ACK, JOB_JOIN_SYNACK, JOB_NONE, JOIN_ACK_VALID,
        JOIN_CHECKS_MAX, JOIN_HAVE_RESPONDER_NONCE, JOIN_JOB_SLOT, JOIN_SYNACK_VALID,
        KEY_EVENTS_BYTES, MAX_ADD_ADDR_TAGS, MAX_ALLOW_PORTS, MAX_ALLOW_PREFIXES, MAX_CONNS,
        MAX_FLOWS, MAX_IFACE_MODES, MAX_JOINS, MAX_JOIN_RATE_SOURCES, MAX_TOKENS, MODE_MONITOR,
        ROLE_A, ROLE_B, TOKENS_INSTALL, TOKENS_NONE, TOKENS_REMOVE,
    },
    packet::{
        everyday, everyday_flow, parse_tcp, read_add_addr, read_capable_keys, read_fastclose_key,
        read_join, walk_options_in, Everyday, Join, OptRef, PacketView, TcpSegment, WalkState,
        MAX_ADD_ADDRS,
    },
    validate::{
        add_addr_block, add_addr_policy_reason, add_addr_reason, capable_keys_reason,
        capable_other_keys_reason, crypto_budget, crypto_budget_reason, drops, end_flags,
        fastclose_reason, gcra, join_ack_reason, join_state_fresh, join_syn_rate_reason,
        join_syn_reason, join_synack_reason, options_reason, subflow_end_action,
        unknown_conn_reason, SubflowEnd,
    },
};

/// BPF_NOEXIST: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
/// BPF_ANY: insert or replace.
const BPF_ANY: u64 = 0;
/// Largest frame offset the parser reads; also gives the verifier a bound on every offset.
const MAX_FRAME_OFFSET: usize = 0x3fff;
const NS_PER_S: u64 = 1_000_000_000;

#[map]
static MPTCP_CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(MAX_CONNS, 0);
#[map]
static MPTCP_FLOWS: LruHashMap<FlowKey, FlowRef> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static MPTCP_TOKENS: LruHashMap<Token, TokenRef> = LruHashMap::with_max_entries(MAX_TOKENS, 0);
#[map]
static MPTCP_JOINS: LruHashMap<FlowKey, JoinState> = LruHashMap::with_max_entries(MAX_JOINS, 0);
#[map]
static MPTCP_ADDTAGS: LruHashMap<AddAddrTagKey, [u8; 8]> =
    LruHashMap::with_max_entries(MAX_ADD_ADDR_TAGS, 0);
#[map]
static MPTCP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_CAPACITY, 0);
#[map]
static MPTCP_KEYEVENTS: RingBuf = RingBuf::with_byte_size(KEY_EVENTS_BYTES, 0);
#[map]
static MPTCP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Per-CPU space to build a ConnState off the 512-byte BPF stack.
#[map]
static MPTCP_SCRATCH: PerCpuArray<ConnState> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU option-walk state (see `WalkState` for why it is not on the stack).
#[map]
static MPTCP_WALK: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU crypto work of the current frame (see `HmacJob`).
#[map]
static MPTCP_HMAC_JOBS: PerCpuArray<HmacJobs> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MPTCP_IFMODES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACE_MODES, 0);
#[map]
static MPTCP_ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
static MPTCP_ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_ALLOW_PREFIXES, 0);
#[map]
static MPTCP_ALLOWPORT: HashMap<[u8; 2], u8> = HashMap::with_max_entries(MAX_ALLOW_PORTS, 0);
#[map]
static MPTCP_JOINRATE: LruHashMap<JoinRateKey, u64> =
    LruHashMap::with_max_entries(MAX_JOIN_RATE_SOURCES, 0);
#[map]
static MPTCP_DROPS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);
/// Per-CPU rate state of HMAC checks (GCRA theoretical arrival time).
#[map]
static MPTCP_CRYPTOBUD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU rate state of drop events (GCRA theoretical arrival time).
#[map]
static MPTCP_EVBUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What both program types offer the shared code.
trait PacketCtx {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Whether the frame is the host's own: sent by its stack, not received or forwarded.
    /// Only such segments are evidence an attacker cannot forge blind.
    fn from_host(&self) -> bool;
}

impl PacketCtx for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the XDP context.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn from_host(&self) -> bool {
        false
    }
}

impl PacketCtx for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the skb context.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn from_host(&self) -> bool {
        // A forwarded packet keeps the interface it arrived on; the host's own have none.
        // SAFETY: reading a field of the skb context.
        unsafe { (*self.skb.skb).ingress_ifindex == 0 }
    }
}

/// A frame as a bounds-checked byte source for the shared parser.
struct Frame<'a, C>(&'a C);

impl<C: PacketCtx> PacketView for Frame<'_, C> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_FRAME_OFFSET {
            return None;
        }
        // black_box keeps LLVM from rewriting `p + 1 > end` into `p >= end`, a form from which
        // the verifier learns no readable range for a variable-offset packet pointer.
        let p = core::hint::black_box(self.0.data() + off);
        if p + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the N bytes at p were just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}

/// Multi-buffer aware (`xdp.frags`): drivers and MTUs that split a frame over several buffers
/// (veth above about 3500 bytes, jumbo frames on most NICs) accept it in native mode. Parsing
/// reads `data..data_end` only, the first buffer, where the headers are; a frame whose headers
/// do not fit there is counted `truncated` and passes.
#[xdp(frags)]
pub fn mptcp_xdp_ingress(ctx: XdpContext) -> u32 {
    xdp_ingress::<true>(&ctx)
}

/// The same program for kernels before 5.18, which refuse `xdp.frags` and have neither
/// `bpf_xdp_get_buff_len` nor `bpf_xdp_load_bytes`: the loader loads this one where the kernel
/// rejects the frags flag (`mptcp_loader::xdp_ingress_program`). A frame is then one buffer.
#[xdp]
pub fn mptcp_xdp_ingress_single_buffer(ctx: XdpContext) -> u32 {
    xdp_ingress::<false>(&ctx)
}

/// `FRAGS`: the program is loaded multi-buffer aware, and the kernel has the 5.18 helpers.
#[inline(always)]
fn xdp_ingress<const FRAGS: bool>(ctx: &XdpContext) -> u32 {
    let reason = process::<XdpContext, false>(ctx);
    count(reason);
    if reason.is_event() {
        drop_event::<FRAGS>(ctx, reason);
    }
    if drops(reason) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Queues a record of a dropped or would-drop frame for the loader (the frame's first bytes
/// included), within the per-CPU event rate, and counts what happened to it.
#[inline(never)]
fn drop_event<const FRAGS: bool>(ctx: &XdpContext, reason: Counter) {
    let Some(config) = MPTCP_CONFIG.get(0) else {
        return;
    };
    let (rate, burst) = (u64::from(config.event_rate), u64::from(config.event_burst));
    let Some(tat) = MPTCP_EVBUDGET.get_ptr_mut(0) else {
        return;
    };
    let now = now_coarse_ns();
    // SAFETY: per-CPU slot.
    let (conforms, next) = gcra(unsafe { *tat }, now, NS_PER_S / rate.max(1), burst);
    if rate == 0 || !conforms {
        count(Counter::DropEventRateLimited);
        return;
    }
    // SAFETY: per-CPU slot.
    unsafe { *tat = next };
    let Some(jobs) = MPTCP_HMAC_JOBS.get_ptr(0) else {
        return;
    };
    let Some(walk) = MPTCP_WALK.get_ptr(0) else {
        return;
    };
    let Some(mut entry) = MPTCP_DROPS.reserve::<DropEvent>(0) else {
        count(Counter::DropEventLost);
        return;
    };
    // The whole frame: in a multi-buffer frame data..data_end is only the first buffer.
    let frame_len = if FRAGS {
        // SAFETY: helper on this program's own context.
        (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize
    } else {
        ctx.data_end() - ctx.data()
    };
    let snap_len = frame_len.min(DROP_SNAP_LEN);
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit. `jobs` and
    // `walk` are this invocation's per-CPU values (the frame's note and segment).
    unsafe {
        let note = &(*jobs).note;
        (*e).seen_ns = now;
        (*e).flow = (*walk).seg.flow;
        (*e).ifindex = ctx.ifindex();
        (*e).reason = reason as u32;
        (*e).dropped = u8::from(drops(reason));
        (*e).announced_family = note.family;
        (*e).announced_id = note.id;
        (*e).pad = 0;
        (*e).token = note.token;
        (*e).announced_addr = note.addr;
        (*e).announced_port = note.port;
        (*e).frame_len = frame_len.min(usize::from(u16::MAX)) as u16;
        (*e).pad2 = [0; 2];
        // The snapshot: 1..=DROP_SNAP_LEN bytes (bpf_xdp_load_bytes reads across buffers).
        // Written as mask-and-add (equal to snap_len for 1..=DROP_SNAP_LEN) because the
        // verifier tracks the bounds of that arithmetic, not of comparisons LLVM may move to
        // another register.
        let len = ((snap_len as u32).wrapping_sub(1) & (DROP_SNAP_LEN as u32 - 1)) + 1;
        let copied = snap_len > 0
            && if FRAGS {
                bpf_xdp_load_bytes(ctx.ctx, 0, (&raw mut (*e).snap).cast(), len) == 0
            } else {
                copy_single_buffer(ctx, &mut (*e).snap, len as usize)
            };
        (*e).snap_len = if copied { len as u16 } else { 0 };
    }
    entry.submit(0);
    count(Counter::DropEventSent);
}

/// The first `len` bytes of a single-buffer frame into `snap`: `bpf_xdp_load_bytes` for
/// kernels without it. Returns false if the frame is shorter.
#[inline(always)]
fn copy_single_buffer(ctx: &XdpContext, snap: &mut [u8; DROP_SNAP_LEN], len: usize) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    for (i, byte) in snap.iter_mut().enumerate() {
        if i >= len {
            break;
        }
        // As in `Frame::load`: keeps the `p + 1 > end` form the verifier learns a range from.
        let p = core::hint::black_box(data + i);
        if p + 1 > end {
            return false;
        }
        // SAFETY: p is inside the frame, checked just above.
        *byte = unsafe { *(p as *const u8) };
    }
    true
}

/// The host's own segments: learn keys and nonces, never drop. Returns `TC_ACT_UNSPEC`
/// (`TCX_NEXT` on a TCX link): no verdict, so the TCX programs after it and the classic clsact
/// filters still run; `TC_ACT_OK` (`TCX_PASS`) would end the chain here.
#[classifier]
pub fn mptcp_tc_egress(ctx: TcContext) -> i32 {
    match process::<TcContext, true>(&ctx) {
        Counter::KeysLearned => count(Counter::EgressKeysLearned),
        _ => {}
    }
    count(Counter::Egress);
    TC_ACT_UNSPEC
}

/// Benchmark baseline: the cheapest possible XDP program.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[map]
static MPTCP_REFCOUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark reference: a plain parser written the obvious way (see
/// `mptcp_common::maps::PROG_XDP_PARSE_REFERENCE`), to measure the validator against.
#[xdp]
pub fn xdp_parse_reference(ctx: XdpContext) -> u32 {
    if reference_parse(&Frame(&ctx)) == Some(true) {
        if let Some(slot) = MPTCP_REFCOUNT.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *slot += 1 };
        }
    }
    XDP_PASS
}

/// Whether the frame is TCP with a kind-30 option; `None` when it is not TCP or is cut short.
#[inline(always)]
fn reference_parse<C: PacketCtx>(frame: &Frame<C>) -> Option<bool> {
    let mut off = 12;
    let mut proto = u16::from_be_bytes(frame.load::<2>(off)?);
    for _ in 0..2 {
        if proto == 0x8100 || proto == 0x88a8 {
            off += 4;
            proto = u16::from_be_bytes(frame.load::<2>(off)?);
        }
    }
    off += 2;
    let tcp = if proto == 0x0800 {
        let [version_ihl] = frame.load::<1>(off)?;
        if frame.load::<1>(off + 9)? != [6] {
            return None;
        }
        off + usize::from(version_ihl & 0x0f) * 4
    } else if proto == 0x86dd {
        if frame.load::<1>(off + 6)? != [6] {
            return None;
        }
        off + 40
    } else {
        return None;
    };
    let [data_offset] = frame.load::<1>(tcp + 12)?;
    let end = tcp + usize::from(data_offset >> 4) * 4;
    let mut at = tcp + 20;
    // Twelve steps cover every real option layout (Linux's data segment takes four).
    for _ in 0..12 {
        if at >= end {
            break;
        }
        let [kind] = frame.load::<1>(at)?;
        match kind {
            0 => break,
            1 => at += 1,
            30 => return Some(true),
            _ => {
                let [len] = frame.load::<1>(at + 1)?;
                if len < 2 {
                    return None;
                }
                at += usize::from(len);
            }
        }
    }
    Some(false)
}

#[inline(always)]
fn process<C: PacketCtx, const EGRESS: bool>(ctx: &C) -> Counter {
    let Some(jobs) = MPTCP_HMAC_JOBS.get_ptr_mut(0) else {
        return Counter::MptcpOther;
    };
    // SAFETY: per-CPU map value, used only by this invocation.
    let jobs = unsafe { &mut *jobs };
    everyday_reason::<C, EGRESS>(ctx, jobs);
    if jobs.reason != UNDECIDED {
        return counter_from(jobs.reason);
    }
    prepare::<C, EGRESS>(ctx, jobs);
    if jobs.tokens.op == TOKENS_NONE
        && jobs.jobs[0].kind == JOB_NONE
        && jobs.jobs[1].kind == JOB_NONE
        && jobs.jobs[JOIN_JOB_SLOT].kind == JOB_NONE
    {
        // The common case: no crypto for this frame.
        return counter_from(jobs.reason);
    }
    let reason = run_jobs(jobs);
    // Left where the differential tests read each frame's reason.
    jobs.reason = reason as u32;
    reason
}

/// `HmacJobs::reason` before a frame's reason is known.
const UNDECIDED: u32 = u32::MAX;

/// Decides the everyday shapes (no options, timestamps, a DSS) from fixed offsets, with the
/// sampled activity refresh of a DSS segment's subflow; leaves the reason in `jobs.reason`, or
/// [`UNDECIDED`] for the general path. The result goes through map memory so that the general
/// path after it is verified once, not once per shape.
#[inline(never)]
fn everyday_reason<C: PacketCtx, const EGRESS: bool>(ctx: &C, jobs: &mut HmacJobs) {
    jobs.reason = UNDECIDED;
    let Some(shape) = everyday(&Frame(ctx), end_flags(EGRESS)) else {
        return;
    };
    if shape == (Everyday::Dss { sample: true }) {
        if let Some(flow) = everyday_flow(&Frame(ctx)) {
            note_activity_of(&flow);
        }
    }
    jobs.reason = shape.reason() as u32;
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = MPTCP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The mode on this interface: its own, if the loader set one, else the global one.
#[inline(always)]
fn mode(ifindex: u32) -> u32 {
    if let Some(mode) = MPTCP_IFMODES.get_ptr(&ifindex) {
        // SAFETY: map value pointer from a successful lookup.
        return unsafe { *mode };
    }
    MPTCP_CONFIG.get(0).map_or(MODE_MONITOR, |c| c.mode)
}

/// The global configuration (all zero, the safe default, if unset).
#[inline(always)]
fn config() -> Config {
    MPTCP_CONFIG.get(0).copied().unwrap_or_default()
}

/// The reason for signalling of a connection the program does not know (fail-open or -closed).
#[inline(always)]
fn unknown(pass_reason: Counter, mode: u32) -> Counter {
    unknown_conn_reason(pass_reason, config().unknown_conn, mode)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// [`now_ns`] to the last timer tick (CLOCK_MONOTONIC_COARSE, kernels >= 5.11): enough for a
/// subflow's activity in seconds and the drop-event budget, and several times cheaper than
/// reading the clock source (a VM's clock read is one of the larger costs of a forged frame).
#[inline(always)]
fn now_coarse_ns() -> u64 {
    // SAFETY: a read of a read-only global (a constant to the verifier), then helpers without
    // preconditions. Both clocks are CLOCK_MONOTONIC, so times from either compare.
    unsafe {
        if core::ptr::read_volatile(&COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// `mptcp_common::maps::GLOBAL_COARSE_CLOCK`: whether this kernel has
/// `bpf_ktime_get_coarse_ns` (5.11); the loader writes 0 before loading on older kernels.
#[no_mangle]
static COARSE_CLOCK: u8 = 1;

/// Parses the frame, does the map work, prepares the crypto jobs and stores the frame's reason
/// so far. Each stage leaves its result in per-CPU map memory, so the next stage is verified
/// once for all the paths of the previous one (see `WalkState`, `HmacJob`).
#[inline(never)]
fn prepare<C: PacketCtx, const EGRESS: bool>(ctx: &C, jobs: &mut HmacJobs) {
    for job in &mut jobs.jobs {
        job.kind = JOB_NONE;
    }
    jobs.tokens.op = TOKENS_NONE;
    jobs.ifindex = ctx.ifindex();
    jobs.mode = mode(jobs.ifindex);
    jobs.note.family = 0;
    jobs.note.token = [0; 4];
    let Some(walk) = MPTCP_WALK.get_ptr_mut(0) else {
        jobs.reason = Counter::MptcpOther as u32;
        return;
    };
    // SAFETY: per-CPU map value, used only by this invocation.
    let walk = unsafe { &mut *walk };
    if !parse_into(ctx, walk, jobs) {
        return;
    }
    let reason =
        if walk.seg.opts_start >= walk.seg.opts_end && walk.seg.flags & end_flags(EGRESS) == 0 {
            // No options, no FIN or RST: nothing to look at (most data segments without timestamps).
            Counter::TcpNoMptcp
        } else {
            walk_options(ctx, walk);
            decide::<C, EGRESS>(ctx, core::hint::black_box(walk), jobs)
        };
    jobs.reason = reason as u32;
}

/// Parses L2..L4 into `walk.seg` and returns true, or stores the reason the frame is not
/// examined further in `jobs.reason` and returns false.
///
/// Not an `Option<Counter>`: rustc encodes its `None` as the niche -1, and LLVM's BPF backend
/// with 32-bit ALU but without JMP32 (`--cpu-features=+alu32` on CPU v1) compared that returned
/// value, zero-extended, with a sign-extended -1: `None` was never seen and every frame on the
/// general path was counted `mptcp_other`. A bool (returned zero-extended) and a reason in map
/// memory leave nothing to extend. `tests/tests/prog_test_run.rs` checks the object's CPU level.
#[inline(never)]
fn parse_into<C: PacketCtx>(ctx: &C, walk: &mut WalkState, jobs: &mut HmacJobs) -> bool {
    match parse_tcp(&Frame(ctx)) {
        Ok(seg) => {
            walk.seg = seg;
            true
        }
        Err(reason) => {
            jobs.reason = reason as u32;
            false
        }
    }
}

#[inline(never)]
fn walk_options<C: PacketCtx>(ctx: &C, walk: &mut WalkState) {
    walk_options_in(&Frame(ctx), walk);
}

#[inline(always)]
fn decide<C: PacketCtx, const EGRESS: bool>(
    ctx: &C,
    walk: &WalkState,
    jobs: &mut HmacJobs,
) -> Counter {
    let frame = Frame(ctx);
    let seg = &walk.seg;
    let opts = &walk.found;
    let ends = seg.flags & end_flags(EGRESS) != 0;
    let mut reason = match options_reason(opts) {
        ControlFlow::Break(reason) => {
            if ends {
                subflow_end(ctx, seg, jobs);
            }
            return reason;
        }
        ControlFlow::Continue(reason) => reason,
    };
    if let Some(opt) = opts.capable_keys {
        reason = reason.max(learn_keys(ctx, &frame, seg, opt, jobs));
    } else if opts.add_addrs[0].is_none()
        && opts.join.is_none()
        // SAFETY: helper without preconditions.
        && unsafe { bpf_get_prandom_u32() } & (ACTIVITY_SAMPLE_ONE_IN - 1) == 0
    {
        // An ADD_ADDR refreshes its subflow where it looks it up (`prepare_add_addr`), and an
        // MP_JOIN's subflow is not tracked before its HMAC is checked: neither pays for a
        // second round of lookups here.
        note_activity(seg);
    }
    if let Some(opt) = opts.join {
        reason = reason.max(join::<C, EGRESS>(&frame, seg, &opt, jobs));
    }
    if let Some(opt) = opts.fastclose {
        reason = reason.max(fastclose::<C, EGRESS>(&frame, seg, &opt, jobs));
    }
    if !EGRESS {
        for i in 0..MAX_ADD_ADDRS {
            if let Some(opt) = opts.add_addrs[i] {
                reason = reason.max(prepare_add_addr(&frame, seg, &opt, jobs, i));
            }
        }
    }
    // After MP_FASTCLOSE: Linux sends it on an RST, and it must be judged first.
    if ends {
        subflow_end(ctx, seg, jobs);
    }
    reason
}

/// The tracked subflow of `seg`, and the role of the segment's sender in its connection.
#[inline(always)]
fn lookup_flow(seg: &TcpSegment) -> Option<(*mut FlowRef, u8)> {
    let (key, swapped) = seg.flow.canonical();
    let flow = MPTCP_FLOWS.get_ptr_mut(&key)?;
    // SAFETY: map value pointer from a successful lookup.
    let src_role = unsafe { (*flow).src_role } & 1;
    Some((flow, if swapped { src_role ^ 1 } else { src_role }))
}

/// Refreshes the subflow's activity time (read by the loader's idle sweep), at most once per
/// `ACTIVITY_GRANULARITY_S` so the data path rarely writes shared memory, and looks up its
/// connection and tokens: a lookup marks an LRU entry as used, so an active connection's state
/// is not what a flood of new connections evicts. Data segments call it for a random sample
/// only (`ACTIVITY_SAMPLE_ONE_IN`).
#[inline(never)]
fn note_activity(seg: &TcpSegment) {
    note_activity_of(&seg.flow);
}

/// [`note_activity`] for the subflow of a segment going `flow`'s way.
#[inline(never)]
fn note_activity_of(flow: &FlowKey) {
    let (key, _) = flow.canonical();
    let Some(flow) = MPTCP_FLOWS.get_ptr_mut(&key) else {
        return;
    };
    refresh_last_seen(flow);
    // SAFETY: map value pointer from a successful lookup.
    let conn_id = unsafe { (*flow).conn_id };
    if let Some(conn) = MPTCP_CONNS.get_ptr(&conn_id) {
        // SAFETY: map value pointer from a successful lookup.
        let (token_a, token_b) = unsafe { ((*conn).token_a, (*conn).token_b) };
        let _ = MPTCP_TOKENS.get_ptr(&token_a);
        let _ = MPTCP_TOKENS.get_ptr(&token_b);
    }
}

/// Records that a tracked subflow was seen now, at most once per `ACTIVITY_GRANULARITY_S` (the
/// loader's idle sweep reads it).
#[inline(always)]
fn refresh_last_seen(flow: *mut FlowRef) {
    let now_s = (now_coarse_ns() / NS_PER_S) as u32;
    // SAFETY: a map value pointer from a successful lookup; a racing writer stores a time too.
    unsafe {
        if now_s.wrapping_sub((*flow).last_seen_s) >= ACTIVITY_GRANULARITY_S {
            (*flow).last_seen_s = now_s;
        }
    }
}

/// A FIN or RST (or the host's own SYN) on a tracked subflow: mark it closing, or end it, and
/// the connection with its last subflow (`subflow_end_action` says which).
#[inline(never)]
fn subflow_end<C: PacketCtx>(ctx: &C, seg: &TcpSegment, jobs: &mut HmacJobs) {
    let (key, swapped) = seg.flow.canonical();
    let Some(flow) = MPTCP_FLOWS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let (conn_id, closing) = unsafe { ((*flow).conn_id, (*flow).closing) };
    let conn = MPTCP_CONNS.get_ptr_mut(&conn_id);
    match subflow_end_action(closing, seg.flags, swapped, ctx.from_host(), conn.is_some()) {
        SubflowEnd::Mark(marks) => {
            if marks != closing {
                // SAFETY: as above.
                unsafe { (*flow).closing = marks };
                count(Counter::SubflowCloseMarked);
            }
            return;
        }
        SubflowEnd::End => {}
    }
    if MPTCP_FLOWS.remove(&key).is_err() {
        // Another CPU already removed it (and counted it).
        return;
    }
    count(Counter::SubflowClosed);
    let Some(conn) = conn else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup; `subflows` is only changed atomically.
    // The BPF target (cpu v1) has atomic add but not fetch-and-add, so the count is re-read: two
    // CPUs ending the last two subflows at once may both see zero; forgetting twice is harmless.
    let last = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*conn).subflows, u32::MAX);
        core::ptr::read_volatile(&raw const (*conn).subflows) == 0
    };
    if last {
        forget_conn(conn_id, conn, jobs);
    }
}

/// Removes `token` if it names `conn_id` (after a collision, another connection holds it).
#[inline(always)]
fn remove_token_of(token: &Token, conn_id: u64) {
    if let Some(token_ref) = MPTCP_TOKENS.get_ptr(token) {
        // SAFETY: map value pointer from a successful lookup.
        if u64::from_ne_bytes(unsafe { (*token_ref).conn_id }) == conn_id {
            let _ = MPTCP_TOKENS.remove(token);
        }
    }
}

/// Removes a connection's state and its tokens (kept in its state; should they not be there
/// yet, they are derived again in `run_jobs`).
#[inline(always)]
fn forget_conn(conn_id: u64, conn: *const ConnState, jobs: &mut HmacJobs) {
    // SAFETY: map value pointer from a successful lookup, read before the removal.
    let (token_a, token_b) = unsafe { ((*conn).token_a, (*conn).token_b) };
    if token_a != [0; 4] && token_b != [0; 4] {
        remove_token_of(&token_a, conn_id);
        remove_token_of(&token_b, conn_id);
    } else {
        // SAFETY: as above.
        unsafe {
            jobs.tokens.key_a = (*conn).key_a;
            jobs.tokens.key_b = (*conn).key_b;
        }
        jobs.tokens.conn_id = conn_id;
        jobs.tokens.op = TOKENS_REMOVE;
    }
    if MPTCP_CONNS.remove(&conn_id).is_ok() {
        count(Counter::ConnClosed);
    }
}

/// MP_CAPABLE with both keys, sent by A (this segment's source) to B.
#[inline(never)]
fn learn_keys<C: PacketCtx>(
    ctx: &C,
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: OptRef,
    jobs: &mut HmacJobs,
) -> Counter {
    let Some((key_a, key_b)) = read_capable_keys(frame, opt) else {
        return Counter::Truncated;
    };
    let conn_id = ConnState::id_of(&key_a);
    let (flow_key, swapped) = seg.flow.canonical();
    let mode = jobs.mode;
    if let Some(flow) = MPTCP_FLOWS.get_ptr_mut(&flow_key) {
        // SAFETY: map value pointer from a successful lookup.
        let known_id = unsafe { (*flow).conn_id };
        if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&known_id) {
            // SAFETY: as above; the fields written are plain integers.
            unsafe {
                let same = (*conn).key_a == key_a && (*conn).key_b == key_b;
                let established = (*flow).flags & FLOW_ESTABLISHED != 0;
                let reason = capable_keys_reason(same, established, mode);
                if same && !established {
                    (*flow).flags |= FLOW_ESTABLISHED;
                }
                if reason as u32 == Counter::KeysConflict as u32 {
                    (*conn).flags |= CONN_FLAG_KEY_CONFLICT;
                }
                return reason;
            }
        }
        // The connection was evicted but the subflow was not: learn it again below.
        count(Counter::FlowWithoutConn);
    }
    let Some(scratch) = MPTCP_SCRATCH.get_ptr_mut(0) else {
        return Counter::MptcpOther;
    };
    let now = now_ns();
    // SAFETY: per-CPU scratch slot; map value pointers from successful lookups.
    let existing = unsafe {
        (*scratch).key_a = key_a;
        (*scratch).key_b = key_b;
        (*scratch).ready = 0;
        (*scratch).flags = 0;
        (*scratch).subflows = 1;
        // Derived at the end of this frame (run_token_job).
        (*scratch).token_a = [0; 4];
        (*scratch).token_b = [0; 4];
        (*scratch).learned_s = (now / NS_PER_S) as u32;
        (*scratch).pad = 0;
        (*scratch).crypto_tat = 0;
        if MPTCP_CONNS.insert(&conn_id, &*scratch, BPF_NOEXIST).is_ok() {
            // Counted only here, where an entry is created: the loader derives the LRU
            // evictions from this, the removals and the entries left.
            count(Counter::ConnInserted);
            None
        } else {
            // Already there (another subflow carried the same Key-A): it must agree, and a
            // segment that does not never changes the tracked connection.
            match MPTCP_CONNS.get_ptr_mut(&conn_id) {
                Some(conn) if (*conn).key_b == key_b => Some(conn),
                Some(_) => return capable_other_keys_reason(mode),
                None => {
                    count(Counter::MapInsertFailed);
                    return Counter::MptcpOther;
                }
            }
        }
    };
    let flow_ref = FlowRef {
        conn_id,
        last_seen_s: (now / NS_PER_S) as u32,
        src_role: if swapped { ROLE_B } else { ROLE_A },
        closing: 0,
        // The host's own keys need no second sighting.
        flags: if ctx.from_host() { FLOW_ESTABLISHED } else { 0 },
        pad: 0,
    };
    if MPTCP_FLOWS.insert(&flow_key, &flow_ref, BPF_ANY).is_err() {
        count(Counter::MapInsertFailed);
    }
    if let Some(conn) = existing {
        // Another subflow with the same keys: it joins the connection.
        // SAFETY: map value pointer; `subflows` is only changed atomically.
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*conn).subflows, 1)
        };
        return Counter::KeysKnown;
    }
    // Tokens are installed here, not only by the loader, so a join right after the handshake
    // is never refused for lack of them.
    jobs.tokens.key_a = key_a;
    jobs.tokens.key_b = key_b;
    jobs.tokens.conn_id = conn_id;
    jobs.tokens.op = TOKENS_INSTALL;
    match MPTCP_KEYEVENTS.reserve::<KeyEvent>(0) {
        Some(mut entry) => {
            entry.write(KeyEvent {
                flow: seg.flow,
                key_a,
                key_b,
                seen_ns: now,
                ifindex: ctx.ifindex(),
                mpc_flags: frame.load::<4>(opt.off).map_or(0, |b| b[3]),
                pad: [0; 3],
            });
            entry.submit(0);
        }
        None => count(Counter::KeyEventLost),
    }
    Counter::KeysLearned
}

/// The sender/receiver keys of a connection for a sender role, and whether its midstates are
/// installed (copied into `job.mid`).
#[inline(always)]
fn load_keys(conn: *const ConnState, sender_role: u8, job: &mut HmacJob) {
    load_sender_keys(conn, sender_role, job);
    load_midstates(conn, job);
}

/// The sender/receiver keys of a connection for a sender role (what the tag cache is keyed by).
#[inline(always)]
fn load_sender_keys(conn: *const ConnState, sender_role: u8, job: &mut HmacJob) {
    // SAFETY: map value pointer from a successful lookup.
    unsafe {
        if sender_role & 1 == ROLE_A {
            job.key_sender = (*conn).key_a;
            job.key_receiver = (*conn).key_b;
        } else {
            job.key_sender = (*conn).key_b;
            job.key_receiver = (*conn).key_a;
        }
    }
    job.role = sender_role & 1;
}

/// The midstates of `job.role`, if installed (else `need_midstate`).
#[inline(always)]
fn load_midstates(conn: *const ConnState, job: &mut HmacJob) {
    let idx = usize::from(job.role & 1);
    // SAFETY: map value pointer from a successful lookup. A concurrent writer (the loader, the
    // fast path on another CPU) only ever stores the same deterministic midstates.
    unsafe {
        if (*conn).ready & (1 << idx) != 0 {
            job.mid = (*conn).mid[idx];
            job.need_midstate = 0;
        } else {
            // The key-learning window: the loader has not installed the midstates yet.
            job.need_midstate = 1;
        }
    }
}

/// The connection of a tracked subflow, unless it is gone or untrusted.
#[inline(always)]
fn trusted_conn(conn_id: u64) -> Result<*mut ConnState, Counter> {
    let Some(conn) = MPTCP_CONNS.get_ptr_mut(&conn_id) else {
        count(Counter::FlowWithoutConn);
        return Err(Counter::MptcpOther);
    };
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*conn).flags } & CONN_FLAG_KEY_CONFLICT != 0 {
        return Err(Counter::UntrustedConn);
    }
    Ok(conn)
}

/// An E=0 ADD_ADDR: check the address policy, find its connection and the announcer's role,
/// and prepare HMAC job `slot`. Returns the reason if it can be decided without an HMAC, else
/// `MptcpOther` (job set).
#[inline(never)]
fn prepare_add_addr<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    jobs: &mut HmacJobs,
    slot: usize,
) -> Counter {
    let Some(add_addr) = read_add_addr(frame, *opt) else {
        return Counter::Truncated;
    };
    if jobs.note.family == 0 {
        jobs.note.family = add_addr.family;
        jobs.note.addr = add_addr.addr;
        jobs.note.port = add_addr.port;
        jobs.note.id = add_addr.id;
    }
    let mode = jobs.mode;
    if !add_addr_allowed(add_addr.family, &add_addr.addr, &add_addr.port) {
        return add_addr_policy_reason(mode);
    }
    let Some((flow, announcer_role)) = lookup_flow(seg) else {
        return unknown(Counter::AddAddrUnknownConn, mode);
    };
    refresh_last_seen(flow);
    // SAFETY: map value pointer from a successful lookup. An ADD_ADDR comes after the
    // handshake: the subflow is established.
    let conn_id = unsafe {
        if (*flow).flags & FLOW_ESTABLISHED == 0 {
            (*flow).flags |= FLOW_ESTABLISHED;
        }
        (*flow).conn_id
    };
    let conn = match trusted_conn(conn_id) {
        Ok(conn) => conn,
        Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
        Err(_) => return unknown(Counter::AddAddrUnknownConn, mode),
    };
    let Some(job) = jobs.jobs.get_mut(slot) else {
        return Counter::MptcpOther;
    };
    load_sender_keys(conn, announcer_role, job);
    job.tag_key = AddAddrTagKey {
        key_sender: job.key_sender,
        key_receiver: job.key_receiver,
        addr: add_addr.addr,
        port: add_addr.port,
        id: add_addr.id,
        family: add_addr.family,
        pad: [0; 4],
    };
    // Seen before (a retransmission, or the same forgery again): judged from the cache, before
    // anything a computation needs is prepared.
    if let Some(tag) = MPTCP_ADDTAGS.get_ptr(&job.tag_key) {
        count(Counter::AddAddrTagCached);
        // SAFETY: map value pointer from a successful lookup.
        return add_addr_reason(unsafe { *tag } == add_addr.hmac, mode);
    }
    load_midstates(conn, job);
    job.block = add_addr_block(&add_addr);
    job.expected[..8].copy_from_slice(&add_addr.hmac);
    job.conn_id = conn_id;
    job.kind = JOB_ADD_ADDR;
    Counter::MptcpOther
}

/// Whether one more HMAC computation fits the crypto budget (`Config::crypto_rate`): the CPU's,
/// and the connection's when `conn_tat` is not null. Spends it when it does. A racing CPU
/// updating the same connection's state only makes its budget slightly looser. (A raw pointer,
/// not an `Option`: the verifier rejects reading the unset pointer register of a `None`.)
#[inline(never)]
fn crypto_conforms(conn_tat: *mut u64) -> bool {
    let rate = config().crypto_rate;
    if rate == 0 {
        return true;
    }
    // The budgets are seconds long: the tick's time keeps their long-run rate exactly.
    let now = now_coarse_ns();
    let conn_next = match (!conn_tat.is_null()).then_some(conn_tat) {
        Some(tat) => {
            // SAFETY: a field of a map value from a successful lookup.
            let (ok, next) = gcra(
                unsafe { *tat },
                now,
                NS_PER_S / u64::from(CONN_CRYPTO_PER_S),
                u64::from(CONN_CRYPTO_BURST),
            );
            if !ok {
                return false;
            }
            Some((tat, next))
        }
        None => None,
    };
    let Some(cpu_tat) = MPTCP_CRYPTOBUD.get_ptr_mut(0) else {
        return true;
    };
    let (interval, burst) = crypto_budget(rate);
    // SAFETY: per-CPU slot.
    let (ok, next) = gcra(unsafe { *cpu_tat }, now, interval, burst);
    if !ok {
        return false;
    }
    // SAFETY: per-CPU slot; the connection's field as above.
    unsafe {
        *cpu_tat = next;
        if let Some((tat, next)) = conn_next {
            *tat = next;
        }
    }
    true
}

/// Whether a prepared check fits the crypto budget (`Config::crypto_rate`): the CPU's, and the
/// connection's for an ADD_ADDR, or at most `JOIN_CHECKS_MAX` for a pending join. Spends it
/// when it does. Decided here, where every job passes, rather than where each is prepared: the
/// verifier then checks the budget code once, not once per parser path.
#[inline(never)]
fn job_within_budget(job: &HmacJob) -> bool {
    if config().crypto_rate == 0 {
        return true;
    }
    if job.kind == JOB_ADD_ADDR {
        return match MPTCP_CONNS.get_ptr_mut(&job.conn_id) {
            // SAFETY: map value pointer from a successful lookup.
            Some(conn) => crypto_conforms(unsafe { &raw mut (*conn).crypto_tat }),
            None => crypto_conforms(core::ptr::null_mut()),
        };
    }
    let Some(state) = MPTCP_JOINS.get_ptr_mut(&job.flow) else {
        return crypto_conforms(core::ptr::null_mut());
    };
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*state).checks } >= JOIN_CHECKS_MAX || !crypto_conforms(core::ptr::null_mut()) {
        return false;
    }
    // SAFETY: as above.
    unsafe { (*state).checks += 1 };
    true
}

/// Whether the policy lets an ADD_ADDR announce this address and port (wire bytes; port
/// `[0, 0]` when the option has none).
#[inline(always)]
fn add_addr_allowed(family: u8, addr: &[u8; 16], port: &[u8; 2]) -> bool {
    let policy = config().addr_policy;
    if policy & ADDR_POLICY_PREFIXES != 0 {
        let matched = if family == FAMILY_V4 {
            let key = LpmKey::new(32, [addr[0], addr[1], addr[2], addr[3]]);
            MPTCP_ALLOW_V4.get(&key).is_some()
        } else {
            MPTCP_ALLOW_V6.get(&LpmKey::new(128, *addr)).is_some()
        };
        if !matched {
            return false;
        }
    }
    policy & ADDR_POLICY_PORTS == 0 || MPTCP_ALLOWPORT.get_ptr(port).is_some()
}

/// Whether this source may send another MP_JOIN SYN now (GCRA per source address).
#[inline(always)]
fn join_syn_conforms(seg: &TcpSegment) -> bool {
    let config = config();
    if config.join_syn_rate == 0 {
        return true;
    }
    let key = JoinRateKey {
        addr: seg.flow.saddr,
        family: seg.flow.family,
        pad: [0; 3],
    };
    let interval = NS_PER_S / u64::from(config.join_syn_rate);
    // GCRA keeps its long-run rate on the tick's time; only the instant of a refill is coarser.
    let now = now_coarse_ns();
    match MPTCP_JOINRATE.get_ptr_mut(&key) {
        Some(tat) => {
            // SAFETY: map value pointer; a racing CPU only makes the limit slightly looser.
            let (ok, next) = gcra(
                unsafe { *tat },
                now,
                interval,
                u64::from(config.join_syn_burst),
            );
            if ok {
                unsafe { *tat = next };
            }
            ok
        }
        None => {
            let _ = MPTCP_JOINRATE.insert(&key, &(now + interval), BPF_ANY);
            true
        }
    }
}

/// MP_JOIN on a SYN, SYN/ACK or third ACK (protocol doc §4). On ingress: the SYN's token must be
/// known; the SYN/ACK and third-ACK HMACs are prepared as jobs. On egress: remember the host's
/// own nonces.
#[inline(never)]
fn join<C: PacketCtx, const EGRESS: bool>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    jobs: &mut HmacJobs,
) -> Counter {
    let Some(option) = read_join(frame, *opt) else {
        return Counter::Truncated;
    };
    match option {
        Join::Syn {
            addr_id,
            token,
            nonce,
            ..
        } => {
            jobs.note.token = token;
            let Some(token_ref) = MPTCP_TOKENS.get_ptr(&token) else {
                if EGRESS {
                    count(Counter::EgressJoinUnknownToken);
                    return Counter::MptcpOther;
                }
                return join_syn_reason(false, jobs.mode);
            };
            // After the token: a blind join is dropped anyway, and must not spend the budget
            // of the source address it spoofs.
            if !EGRESS && !join_syn_conforms(seg) {
                return join_syn_rate_reason(jobs.mode);
            }
            // SAFETY: map value pointer from a successful lookup.
            let token_ref = unsafe { *token_ref };
            let conn_id = u64::from_ne_bytes(token_ref.conn_id);
            if MPTCP_CONNS.get_ptr(&conn_id).is_none() {
                // The token outlived its connection (evicted): not known well enough to judge.
                count(Counter::FlowWithoutConn);
                return if EGRESS {
                    Counter::MptcpOther
                } else {
                    unknown(Counter::JoinStateMissing, jobs.mode)
                };
            }
            if !EGRESS && keeps_pending_join(&seg.flow, &nonce) {
                return Counter::JoinSynKnownToken;
            }
            let state = JoinState {
                conn_id,
                created_ns: now_ns(),
                nonce_initiator: nonce,
                nonce_responder: [0; 4],
                // The token names the responder's key.
                initiator_role: (token_ref.role & 1) ^ 1,
                addr_id,
                flags: 0,
                checks: 0,
                pad: [0; 4],
            };
            if MPTCP_JOINS.insert(&seg.flow, &state, BPF_ANY).is_err() {
                count(Counter::MapInsertFailed);
            }
            if EGRESS {
                count(Counter::EgressJoinNonce);
                Counter::MptcpOther
            } else {
                Counter::JoinSynKnownToken
            }
        }
        Join::SynAck { hmac, nonce, .. } => {
            let initiator_to_responder = seg.flow.reversed();
            let Some(state) = fresh_join(&initiator_to_responder) else {
                return if EGRESS {
                    Counter::MptcpOther
                } else {
                    unknown(Counter::JoinStateMissing, jobs.mode)
                };
            };
            if EGRESS {
                // The host is the responder: remember R-B for the third ACK's check.
                // SAFETY: map value pointer from a successful lookup.
                unsafe {
                    (*state).nonce_responder = nonce;
                    (*state).flags |= JOIN_HAVE_RESPONDER_NONCE;
                }
                count(Counter::EgressJoinNonce);
                return Counter::MptcpOther;
            }
            // SAFETY: map value pointer from a successful lookup.
            let state = unsafe { *state };
            let conn = match trusted_conn(state.conn_id) {
                Ok(conn) => conn,
                Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
                Err(_) => return unknown(Counter::JoinStateMissing, jobs.mode),
            };
            // HMAC(Key-B || Key-A, R-B || R-A): the responder is the sender.
            let job = &mut jobs.jobs[JOIN_JOB_SLOT];
            load_keys(conn, state.initiator_role ^ 1, job);
            job.block = join_block(&nonce, &state.nonce_initiator);
            job.expected[..8].copy_from_slice(&hmac);
            job.conn_id = state.conn_id;
            job.flow = initiator_to_responder;
            job.nonce_responder = nonce;
            job.initiator_role = state.initiator_role;
            job.kind = JOB_JOIN_SYNACK;
            Counter::MptcpOther
        }
        Join::Ack { hmac } => {
            if EGRESS {
                return Counter::MptcpOther;
            }
            let Some(state) = fresh_join(&seg.flow) else {
                return unknown(Counter::JoinStateMissing, jobs.mode);
            };
            // SAFETY: map value pointer from a successful lookup.
            let state = unsafe { *state };
            if state.flags & JOIN_HAVE_RESPONDER_NONCE == 0 {
                return unknown(Counter::JoinStateMissing, jobs.mode);
            }
            let conn = match trusted_conn(state.conn_id) {
                Ok(conn) => conn,
                Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
                Err(_) => return unknown(Counter::JoinStateMissing, jobs.mode),
            };

            // HMAC(Key-A || Key-B, R-A || R-B): the initiator is the sender.
            let job = &mut jobs.jobs[JOIN_JOB_SLOT];
            load_keys(conn, state.initiator_role, job);
            job.block = join_block(&state.nonce_initiator, &state.nonce_responder);
            job.expected = hmac;
            job.conn_id = state.conn_id;
            job.flow = seg.flow;
            job.initiator_role = state.initiator_role;
            job.kind = JOB_JOIN_ACK;
            Counter::MptcpOther
        }
    }
}

/// Whether an MP_JOIN SYN must leave the pending join of its 4-tuple as it is: one that is
/// fresh and not yet validated keeps its first nonce, as Linux keeps its request socket (a
/// retransmission carries the same nonce; a SYN with another one is a forgery or a stale copy).
#[inline(always)]
fn keeps_pending_join(key: &FlowKey, nonce: &[u8; 4]) -> bool {
    let Some(state) = MPTCP_JOINS.get_ptr(key) else {
        return false;
    };
    // SAFETY: map value pointer from a successful lookup.
    let (created_ns, flags, first_nonce) = unsafe {
        (
            (*state).created_ns,
            (*state).flags,
            (*state).nonce_initiator,
        )
    };
    if !join_state_fresh(created_ns, now_ns()) || flags & (JOIN_SYNACK_VALID | JOIN_ACK_VALID) != 0
    {
        return false;
    }
    if first_nonce != *nonce {
        count(Counter::JoinSynPendingKept);
    }
    true
}

/// The pending join of this initiator -> responder subflow, unless missing or expired.
#[inline(always)]
fn fresh_join(key: &FlowKey) -> Option<*mut JoinState> {
    let state = MPTCP_JOINS.get_ptr_mut(key)?;
    // SAFETY: map value pointer from a successful lookup.
    if join_state_fresh(unsafe { (*state).created_ns }, now_ns()) {
        Some(state)
    } else {
        count(Counter::JoinStateExpired);
        None
    }
}

/// MP_FASTCLOSE: it must carry the receiver's key; then the connection is over.
#[inline(never)]
fn fastclose<C: PacketCtx, const EGRESS: bool>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    jobs: &mut HmacJobs,
) -> Counter {
    let Some(key) = read_fastclose_key(frame, *opt) else {
        return Counter::Truncated;
    };
    let unknown_conn = || {
        if EGRESS {
            Counter::MptcpOther
        } else {
            unknown(Counter::FastcloseUnknownConn, jobs.mode)
        }
    };
    let Some((flow, sender_role)) = lookup_flow(seg) else {
        return unknown_conn();
    };
    // SAFETY: map value pointer from a successful lookup.
    let conn_id = unsafe { (*flow).conn_id };
    let conn = match trusted_conn(conn_id) {
        Ok(conn) => conn,
        Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
        Err(_) => return unknown_conn(),
    };
    // SAFETY: map value pointer from a successful lookup.
    let receiver_key = unsafe {
        if sender_role == ROLE_A {
            (*conn).key_b
        } else {
            (*conn).key_a
        }
    };
    let key_ok = key == receiver_key;
    if key_ok {
        forget_conn(conn_id, conn, jobs);
    }
    if EGRESS {
        Counter::MptcpOther
    } else {
        fastclose_reason(key_ok, jobs.mode)
    }
}

/// Runs the prepared crypto work and returns the frame's final reason. Inlined into the entry
/// point: one call level less keeps the deepest chain (entry, run_job, compress) within 512
/// bytes of stack also on kernels before 6.9, which round every frame up to 32 bytes.
#[inline(always)]
fn run_jobs(jobs: &mut HmacJobs) -> Counter {
    run_token_job(jobs);
    let mode = jobs.mode;
    // Each job leaves its outcome in map memory and returns nothing, so the verifier sees the
    // same state after every job whatever its result, and verifies the next job only once.
    for i in 0..=JOIN_JOB_SLOT {
        run_job(&mut jobs.jobs[i], mode);
    }
    let mut reason = counter_from(jobs.reason);
    for i in 0..=JOIN_JOB_SLOT {
        if jobs.jobs[i].kind != JOB_NONE {
            reason = reason.max(counter_from(jobs.jobs[i].outcome));
        }
    }
    reason
}

/// One HMAC check: 2 compressions, plus 2 when the midstates are not installed yet.
#[inline(never)]
fn run_job(job: &mut HmacJob, mode: u32) {
    if job.kind == JOB_NONE {
        return;
    }
    if !job_within_budget(job) {
        job.outcome = crypto_budget_reason(mode) as u32;
        return;
    }
    if job.need_midstate != 0 {
        midstate_into(
            &job.key_sender,
            &job.key_receiver,
            &mut job.mid,
            &mut job.scratch,
        );
        if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&job.conn_id) {
            let idx = usize::from(job.role & 1);
            // SAFETY: map value pointer from a successful lookup (see load_keys).
            unsafe {
                (*conn).mid[idx] = job.mid;
                (*conn).ready |= 1 << idx;
            }
        }
        count(Counter::MidstateComputedInline);
    }
    if job.kind == JOB_ADD_ADDR {
        // Only the outer words the tag keeps are computed (`compress_h6_h7`).
        let tag = add_addr_tag_into(&job.mid, &mut job.block, &mut job.digest);
        let _ = MPTCP_ADDTAGS.insert(&job.tag_key, &tag, BPF_ANY);
        job.outcome = add_addr_reason(tag == job.expected[..8], mode) as u32;
        return;
    }
    finish_into(&job.mid, &mut job.block, &mut job.digest);
    let digest = &job.digest;
    let outcome = match job.kind {
        JOB_JOIN_SYNACK => {
            let ok = join_synack_truncated(digest) == job.expected[..8];
            if ok {
                join_validated(job, JOIN_SYNACK_VALID);
            }
            join_synack_reason(ok, mode)
        }
        _ => {
            let ok = leftmost_160_equal(digest, &job.expected);
            if ok {
                join_validated(job, JOIN_ACK_VALID);
            }
            join_ack_reason(ok, mode)
        }
    };
    job.outcome = outcome as u32;
}

#[inline(always)]
fn leftmost_160_equal(digest: &[u32; 8], expected: &[u8; 20]) -> bool {
    let mut i = 0;
    let mut equal = true;
    while i < 5 {
        let want = [
            expected[i * 4],
            expected[i * 4 + 1],
            expected[i * 4 + 2],
            expected[i * 4 + 3],
        ];
        equal &= digest[i] == u32::from_be_bytes(want);
        i += 1;
    }
    equal
}

/// A join's HMAC was right: record it and track the subflow as part of its connection, so its
/// ADD_ADDRs validate and its end is followed.
#[inline(always)]
fn join_validated(job: &HmacJob, flag: u8) {
    if let Some(state) = MPTCP_JOINS.get_ptr_mut(&job.flow) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            if job.kind == JOB_JOIN_SYNACK {
                (*state).nonce_responder = job.nonce_responder;
                (*state).flags |= JOIN_HAVE_RESPONDER_NONCE;
            }
            (*state).flags |= flag;
        }
    }
    let (key, swapped) = job.flow.canonical();
    let flow_ref = FlowRef {
        conn_id: job.conn_id,
        last_seen_s: (now_ns() / NS_PER_S) as u32,
        src_role: if swapped {
            job.initiator_role ^ 1
        } else {
            job.initiator_role
        } & 1,
        closing: 0,
        // Its HMAC proved the keys.
        flags: FLOW_ESTABLISHED,
        pad: 0,
    };
    // NOEXIST: a retransmitted third ACK (or a gateway seeing both SYN/ACK and ACK) must not
    // count the subflow twice.
    if MPTCP_FLOWS.insert(&key, &flow_ref, BPF_NOEXIST).is_ok() {
        if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&job.conn_id) {
            // SAFETY: map value pointer; `subflows` is only changed atomically.
            unsafe {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*conn).subflows, 1)
            };
        }
    }
}

/// Derives both tokens of a connection learned or ended by this frame (one compression each).
#[inline(never)]
fn run_token_job(jobs: &mut HmacJobs) {
    let job = &mut jobs.tokens;
    if job.op == TOKENS_NONE {
        return;
    }
    let token_a = token_into(&job.key_a, &mut job.block, &mut job.digest);
    let token_b = token_into(&job.key_b, &mut job.block, &mut job.digest);
    if job.op == TOKENS_INSTALL {
        let conn_id = job.conn_id.to_ne_bytes();
        let a = TokenRef {
            conn_id,
            role: ROLE_A,
        };
        let b = TokenRef {
            conn_id,
            role: ROLE_B,
        };
        install_token(&token_a, &a);
        install_token(&token_b, &b);
        if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&job.conn_id) {
            // SAFETY: map value pointer from a successful lookup.
            unsafe {
                (*conn).token_a = token_a;
                (*conn).token_b = token_b;
            }
        }
    } else if job.op == TOKENS_REMOVE {
        remove_token_of(&token_a, job.conn_id);
        remove_token_of(&token_b, job.conn_id);
    }
}

/// Installs a new connection's token, unless another tracked connection holds it: a token
/// chosen to collide (2^32 hashes offline) must not take a live connection's joins.
#[inline(always)]
fn install_token(token: &Token, token_ref: &TokenRef) {
    if MPTCP_TOKENS.insert(token, token_ref, BPF_NOEXIST).is_ok() {
        return;
    }
    if let Some(held) = MPTCP_TOKENS.get_ptr(token) {
        // SAFETY: map value pointer from a successful lookup.
        let owner = u64::from_ne_bytes(unsafe { (*held).conn_id });
        if owner != u64::from_ne_bytes(token_ref.conn_id) && MPTCP_CONNS.get_ptr(&owner).is_some() {
            count(Counter::TokenCollision);
            return;
        }
    }
    if MPTCP_TOKENS.insert(token, token_ref, BPF_ANY).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// The counter with this code (codes come from `prepare`, which only stores valid ones).
#[inline(always)]
fn counter_from(code: u32) -> Counter {
    match Counter::ALL.get(code as usize) {
        Some(c) => *c,
        None => Counter::MptcpOther,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
