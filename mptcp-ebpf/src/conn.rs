//! Connection and subflow state both directions share: learning keys from MP_CAPABLE,
//! following subflows and their ends, pending joins, and the keys a check needs.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use mptcp_common::{
    counters::Counter,
    maps::{
        ConnState, FlowKey, FlowRef, FrameChecks, HmacJob, JoinState, KeyEvent, Token, TokenRef,
        ACTIVITY_GRANULARITY_S, ACTIVITY_SAMPLE_ONE_IN, CONN_FLAG_KEY_CONFLICT, FLOW_ESTABLISHED,
        KEY_EVENT_ENDED, KEY_EVENT_LEARNED, ROLE_A, ROLE_B, TOKENS_INSTALL, TOKENS_REMOVE,
    },
    packet::{read_capable_keys, read_fastclose_key, MptcpOptions, OptRef, PacketView, TcpSegment},
    validate::{
        capable_keys_reason, capable_other_keys_reason, end_flags, join_state_fresh,
        options_reason, subflow_end_action, unknown_conn_reason, SubflowEnd,
    },
};

use crate::{
    context::{Frame, PacketCtx},
    maps::{
        config, count, now_coarse_ns, now_ns, BPF_ANY, BPF_NOEXIST, MPTCP_CONNS, MPTCP_FLOWS,
        MPTCP_JOINS, MPTCP_KEYEVENTS, MPTCP_TOKENS, NS_PER_S,
    },
};

/// What both directions do first with a segment's MPTCP options: the reason the options give
/// by themselves (`Break`: the frame is decided, after its end is followed), key learning from
/// an MP_CAPABLE, and the sampled activity refresh of a data segment's subflow.
#[inline(always)]
pub(crate) fn begin<C: PacketCtx, const EGRESS: bool>(
    ctx: &C,
    seg: &TcpSegment,
    opts: &MptcpOptions,
    checks: &mut FrameChecks,
) -> core::ops::ControlFlow<Counter, Counter> {
    let reason = match options_reason(opts) {
        core::ops::ControlFlow::Break(reason) => {
            if seg.flags & end_flags(EGRESS) != 0 {
                subflow_end(ctx, seg, checks);
            }
            return core::ops::ControlFlow::Break(reason);
        }
        core::ops::ControlFlow::Continue(reason) => reason,
    };
    if let Some(opt) = opts.capable_keys {
        return core::ops::ControlFlow::Continue(reason.max(learn_keys(
            ctx,
            &Frame(ctx),
            seg,
            opt,
            checks,
        )));
    }
    if opts.add_addrs[0].is_none()
        && opts.join.is_none()
        // SAFETY: helper without preconditions.
        && unsafe { bpf_get_prandom_u32() } & (ACTIVITY_SAMPLE_ONE_IN - 1) == 0
    {
        // An ADD_ADDR refreshes its subflow where it looks it up (`prepare_add_addr`), and an
        // MP_JOIN's subflow is not tracked before its HMAC is checked: neither pays for a
        // second round of lookups here.
        note_activity(seg);
    }
    core::ops::ControlFlow::Continue(reason)
}

/// What both directions do last: follow a FIN or RST (after MP_FASTCLOSE, which Linux sends on
/// an RST and which must be judged first).
#[inline(always)]
pub(crate) fn finish<C: PacketCtx, const EGRESS: bool>(
    ctx: &C,
    seg: &TcpSegment,
    checks: &mut FrameChecks,
) {
    if seg.flags & end_flags(EGRESS) != 0 {
        subflow_end(ctx, seg, checks);
    }
}

/// The reason for signalling of a connection the program does not know (fail-open or -closed).
#[inline(always)]
pub(crate) fn unknown(pass_reason: Counter, mode: u32) -> Counter {
    unknown_conn_reason(pass_reason, config().unknown_conn, mode)
}

/// The tracked subflow of `seg`, and the role of the segment's sender in its connection.
#[inline(always)]
pub(crate) fn lookup_flow(seg: &TcpSegment) -> Option<(*mut FlowRef, u8)> {
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
pub(crate) fn note_activity(seg: &TcpSegment) {
    note_activity_of(&seg.flow);
}

/// [`note_activity`] for the subflow of a segment going `flow`'s way.
#[inline(never)]
pub(crate) fn note_activity_of(flow: &FlowKey) {
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
pub(crate) fn refresh_last_seen(flow: *mut FlowRef) {
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
pub(crate) fn subflow_end<C: PacketCtx>(ctx: &C, seg: &TcpSegment, checks: &mut FrameChecks) {
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
        forget_conn(conn_id, conn, checks);
    }
}

/// Removes `token` if it names `conn_id` (after a collision, another connection holds it).
#[inline(always)]
pub(crate) fn remove_token_of(token: &Token, conn_id: u64) {
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
pub(crate) fn forget_conn(conn_id: u64, conn: *const ConnState, checks: &mut FrameChecks) {
    // SAFETY: map value pointer from a successful lookup, read before the removal.
    let (token_a, token_b) = unsafe { ((*conn).token_a, (*conn).token_b) };
    if token_a != [0; 4] && token_b != [0; 4] {
        remove_token_of(&token_a, conn_id);
        remove_token_of(&token_b, conn_id);
    } else {
        // SAFETY: as above.
        unsafe {
            checks.tokens.key_a = (*conn).key_a;
            checks.tokens.key_b = (*conn).key_b;
        }
        checks.tokens.conn_id = conn_id;
        checks.tokens.op = TOKENS_REMOVE;
    }
    // Every caller has authenticated the end: announced to the loader (for other boxes).
    // SAFETY: as above.
    unsafe {
        checks.announce.key_a = (*conn).key_a;
        checks.announce.key_b = (*conn).key_b;
    }
    checks.announce.flow = FlowKey::default();
    checks.announce.kind = KEY_EVENT_ENDED;
    if MPTCP_CONNS.remove(&conn_id).is_ok() {
        count(Counter::ConnClosed);
    }
}

/// MP_CAPABLE with both keys, sent by A (this segment's source) to B.
#[inline(never)]
pub(crate) fn learn_keys<C: PacketCtx>(
    ctx: &C,
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: OptRef,
    checks: &mut FrameChecks,
) -> Counter {
    let Some((key_a, key_b)) = read_capable_keys(frame, opt) else {
        return Counter::Truncated;
    };
    let conn_id = ConnState::id_of(&key_a);
    let (flow_key, swapped) = seg.flow.canonical();
    let mode = checks.mode;
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
    let now = now_ns();
    let new_conn = &mut checks.new_conn;
    new_conn.key_a = key_a;
    new_conn.key_b = key_b;
    new_conn.ready = 0;
    new_conn.flags = 0;
    new_conn.subflows = 1;
    // Derived at the end of this frame (run_token_job).
    new_conn.token_a = [0; 4];
    new_conn.token_b = [0; 4];
    new_conn.learned_s = (now / NS_PER_S) as u32;
    new_conn.pad = 0;
    new_conn.crypto_tat = 0;
    let existing = if MPTCP_CONNS.insert(&conn_id, new_conn, BPF_NOEXIST).is_ok() {
        // Counted only here, where an entry is created: the loader derives the LRU evictions
        // from this, the removals and the entries left.
        count(Counter::ConnInserted);
        None
    } else {
        // Already there (another subflow carried the same Key-A): it must agree, and a segment
        // that does not never changes the tracked connection.
        match MPTCP_CONNS.get_ptr_mut(&conn_id) {
            // SAFETY: map value pointer from a successful lookup.
            Some(conn) if unsafe { (*conn).key_b } == key_b => Some(conn),
            Some(_) => return capable_other_keys_reason(mode),
            None => {
                count(Counter::MapInsertFailed);
                return Counter::MptcpOther;
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
    checks.tokens.key_a = key_a;
    checks.tokens.key_b = key_b;
    checks.tokens.conn_id = conn_id;
    checks.tokens.op = TOKENS_INSTALL;
    match MPTCP_KEYEVENTS.reserve::<KeyEvent>(0) {
        Some(mut entry) => {
            entry.write(KeyEvent {
                flow: seg.flow,
                key_a,
                key_b,
                seen_ns: now,
                ifindex: ctx.ifindex(),
                mpc_flags: frame.load::<4>(opt.off).map_or(0, |b| b[3]),
                kind: KEY_EVENT_LEARNED,
                role: 0,
                pad: 0,
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
pub(crate) fn load_keys(conn: *const ConnState, sender_role: u8, job: &mut HmacJob) {
    load_sender_keys(conn, sender_role, job);
    load_midstates(conn, job);
}

/// The sender/receiver keys of a connection for a sender role (what the tag cache is keyed by).
#[inline(always)]
pub(crate) fn load_sender_keys(conn: *const ConnState, sender_role: u8, job: &mut HmacJob) {
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
pub(crate) fn load_midstates(conn: *const ConnState, job: &mut HmacJob) {
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
pub(crate) fn trusted_conn(conn_id: u64) -> Result<*mut ConnState, Counter> {
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

/// The pending join of this initiator -> responder subflow, unless missing or expired.
#[inline(always)]
pub(crate) fn fresh_join(key: &FlowKey) -> Option<*mut JoinState> {
    let state = MPTCP_JOINS.get_ptr_mut(key)?;
    // SAFETY: map value pointer from a successful lookup.
    if join_state_fresh(unsafe { (*state).created_ns }, now_ns()) {
        Some(state)
    } else {
        count(Counter::JoinStateExpired);
        None
    }
}

/// What the token of an MP_JOIN SYN names.
pub(crate) enum JoinToken {
    /// No tracked connection announced it.
    Unknown,
    /// It outlived its connection (evicted): not known well enough to judge (counted).
    Stale,
    /// A tracked connection's.
    Known(TokenRef),
}

/// Looks up the token of an MP_JOIN SYN.
#[inline(always)]
pub(crate) fn join_token(token: &Token) -> JoinToken {
    let Some(token_ref) = MPTCP_TOKENS.get_ptr(token) else {
        return JoinToken::Unknown;
    };
    // SAFETY: map value pointer from a successful lookup.
    let token_ref = unsafe { *token_ref };
    if MPTCP_CONNS
        .get_ptr(&u64::from_ne_bytes(token_ref.conn_id))
        .is_none()
    {
        count(Counter::FlowWithoutConn);
        return JoinToken::Stale;
    }
    JoinToken::Known(token_ref)
}

/// Opens the pending join of an MP_JOIN SYN with a known token, with the initiator's nonce.
#[inline(always)]
pub(crate) fn open_pending_join(flow: &FlowKey, token_ref: &TokenRef, addr_id: u8, nonce: [u8; 4]) {
    let state = JoinState {
        conn_id: u64::from_ne_bytes(token_ref.conn_id),
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
    if MPTCP_JOINS.insert(flow, &state, BPF_ANY).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// MP_FASTCLOSE, either way: it must carry the receiver's key; then the connection is over.
/// Ok(whether the key was right, the connection forgotten if so), or the reason it cannot be
/// judged: `Truncated`, `UntrustedConn`, or `MptcpOther` for a connection not tracked.
#[inline(always)]
pub(crate) fn fastclose_ends_conn<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    checks: &mut FrameChecks,
) -> Result<bool, Counter> {
    let Some(key) = read_fastclose_key(frame, *opt) else {
        return Err(Counter::Truncated);
    };
    let Some((flow, sender_role)) = lookup_flow(seg) else {
        return Err(Counter::MptcpOther);
    };
    // SAFETY: map value pointer from a successful lookup.
    let conn_id = unsafe { (*flow).conn_id };
    let conn = match trusted_conn(conn_id) {
        Ok(conn) => conn,
        Err(Counter::UntrustedConn) => return Err(Counter::UntrustedConn),
        Err(_) => return Err(Counter::MptcpOther),
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
        forget_conn(conn_id, conn, checks);
    }
    Ok(key_ok)
}
