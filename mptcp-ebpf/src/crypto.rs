//! The crypto stage: every SHA-256 computation of a frame, from one place, after `decide` has
//! prepared it (see `mptcp_common::maps::HmacJob`): HMAC checks within the crypto budgets, the
//! tag cache of ADD_ADDRs, and the tokens of connections learned or ended.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use mptcp_common::{
    counters::Counter,
    hmac::{add_addr_tag_into, finish_into, join_synack_truncated, midstate_into, token_into},
    maps::{
        FlowRef, FrameChecks, HmacJob, KeyEvent, Token, TokenRef, CONN_CRYPTO_BURST,
        CONN_CRYPTO_PER_S, FLOW_ESTABLISHED, JOB_ADD_ADDR, JOB_JOIN_SYNACK, JOB_NONE,
        JOIN_ACK_VALID, JOIN_CHECKS_MAX, JOIN_HAVE_RESPONDER_NONCE, JOIN_JOB_SLOT,
        JOIN_SYNACK_VALID, KEY_EVENT_JOINED, ROLE_A, ROLE_B, TOKENS_INSTALL, TOKENS_NONE,
        TOKENS_REMOVE,
    },
    validate::{
        add_addr_reason, crypto_budget, crypto_budget_reason, gcra, join_ack_reason,
        join_synack_reason,
    },
};

use crate::{
    conn::remove_token_of,
    maps::{
        config, count, counter_from, now_coarse_ns, now_ns, BPF_ANY, BPF_NOEXIST, MPTCP_ADDTAGS,
        MPTCP_CONNS, MPTCP_CRYPTOBUD, MPTCP_FLOWS, MPTCP_JOINS, MPTCP_TOKENS, NS_PER_S,
    },
};

/// Runs the prepared crypto work and returns the frame's final reason. Inlined into the entry
/// point: one call level less keeps the deepest chain (entry, run_job, compress) within 512
/// bytes of stack also on kernels before 6.9, which round every frame up to 32 bytes.
#[inline(always)]
pub(crate) fn run_jobs(checks: &mut FrameChecks, reason_so_far: Counter) -> Counter {
    run_token_job(checks);
    let mode = checks.mode;
    // Each job leaves its outcome in map memory and returns nothing, so the verifier sees the
    // same state after every job whatever its result, and verifies the next job only once.
    for i in 0..=JOIN_JOB_SLOT {
        run_job(&mut checks.jobs[i], &mut checks.announce, mode);
    }
    let mut reason = reason_so_far;
    for i in 0..=JOIN_JOB_SLOT {
        if checks.jobs[i].kind != JOB_NONE {
            reason = reason.max(counter_from(checks.jobs[i].outcome));
        }
    }
    reason
}

/// One HMAC check: 2 compressions, plus 2 when the midstates are not installed yet.
#[inline(never)]
fn run_job(job: &mut HmacJob, announce: &mut KeyEvent, mode: u32) {
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
    let outcome = if job.kind == JOB_JOIN_SYNACK {
        let ok = join_synack_truncated(digest) == job.expected[..8];
        if ok {
            join_validated(job, announce, JOIN_SYNACK_VALID);
        }
        join_synack_reason(ok, mode)
    } else {
        let ok = leftmost_160_equal(digest, &job.expected);
        if ok {
            join_validated(job, announce, JOIN_ACK_VALID);
        }
        join_ack_reason(ok, mode)
    };
    job.outcome = outcome as u32;
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
/// ADD_ADDRs validate and its end is followed. The first valid third ACK announces the subflow
/// to the loader (for other boxes): only then have both ends proved the keys, since a SYN/ACK
/// answers a SYN anyone who saw the token can send.
#[inline(always)]
fn join_validated(job: &HmacJob, announce: &mut KeyEvent, flag: u8) {
    let mut first_ack = false;
    if let Some(state) = MPTCP_JOINS.get_ptr_mut(&job.flow) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            if job.kind == JOB_JOIN_SYNACK {
                (*state).nonce_responder = job.nonce_responder;
                (*state).flags |= JOIN_HAVE_RESPONDER_NONCE;
            }
            first_ack = flag == JOIN_ACK_VALID && (*state).flags & JOIN_ACK_VALID == 0;
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
    if first_ack {
        announce.flow = job.flow;
        announce.key_a = job.conn_id.to_ne_bytes();
        announce.key_b = [0; 8];
        announce.role = job.initiator_role & 1;
        announce.kind = KEY_EVENT_JOINED;
    }
}

/// Derives both tokens of a connection learned or ended by this frame (one compression each).
#[inline(never)]
fn run_token_job(checks: &mut FrameChecks) {
    let job = &mut checks.tokens;
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
