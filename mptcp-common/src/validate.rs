//! Verdict rules: pure functions shared by the XDP program and host-side tests.

use crate::counters::Counter;
use crate::hmac::{add_addr_truncated, add_addr_v4_block, add_addr_v6_block, finish, Midstate};
use crate::maps::{FAMILY_V4, MODE_ENFORCE};
use crate::sha256::Block;
use crate::packet::AddAddr;

/// The final inner HMAC block of an ADD_ADDR: `id || address || port` padded.
#[inline(always)]
#[must_use]
pub fn add_addr_block(a: &AddAddr) -> Block {
    if a.family == FAMILY_V4 {
        add_addr_v4_block(a.id, &[a.addr[0], a.addr[1], a.addr[2], a.addr[3]], &a.port)
    } else {
        add_addr_v6_block(a.id, &a.addr, &a.port)
    }
}

/// Whether an ADD_ADDR's carried HMAC is right, from the announcer's midstates (2 compressions).
#[inline(always)]
#[must_use]
pub fn add_addr_hmac_ok(sender_mid: &Midstate, a: &AddAddr) -> bool {
    add_addr_truncated(&finish(sender_mid, &add_addr_block(a))) == a.hmac
}

/// The reason for an ADD_ADDR whose HMAC was checked, under the configured mode.
#[inline(always)]
#[must_use]
pub fn add_addr_reason(hmac_ok: bool, mode: u32) -> Counter {
    match (hmac_ok, mode) {
        (true, _) => Counter::AddAddrValid,
        (false, MODE_ENFORCE) => Counter::AddAddrBadHmacDropped,
        (false, _) => Counter::AddAddrBadHmacWouldDrop,
    }
}

/// Whether a packet counted under `reason` is dropped. Only an enforced check failure drops:
/// everything the program does not know passes.
#[inline(always)]
#[must_use]
pub const fn drops(reason: Counter) -> bool {
    matches!(reason, Counter::AddAddrBadHmacDropped)
}
