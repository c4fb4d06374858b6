//! Differential: random keys and messages through `mptcp_common::hmac` (midstates + finish,
//! tokens and IDSNs, the raw compression) and `mptcp_common::validate::add_addr_hmac_ok`,
//! compared against the `hmac` and `sha2` crates.
//!
//! Input: sender key 8, receiver key 8, address ID 1, IPv4 address 4, IPv6 address 16, port 2,
//! sender nonce 4, receiver nonce 4, SHA-256 state 32, block 64. Bytes past the end of a
//! shorter input come from a generator seeded with the input, so that every run checks fresh
//! full-size values: this code has almost no branches for coverage to steer by.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use mptcp_common::hmac::{
    add_addr_truncated, add_addr_v4_block, add_addr_v6_block, finish, finish_into, join_block,
    join_synack_truncated, key_block, midstate, midstate_into, token_and_idsn, token_into,
    Midstate, IPAD, OPAD,
};
use mptcp_common::maps::{FAMILY_V4, FAMILY_V6};
use mptcp_common::packet::AddAddr;
use mptcp_common::sha256::{compressed, Block, State, IV};
use mptcp_common::validate::{add_addr_block, add_addr_hmac_ok};
use sha2::{Digest, Sha256};

/// Reads fixed-size fields one after the other; past the end of the input, from a `SplitMix64`
/// generator seeded with the input.
struct Fields<'a> {
    data: &'a [u8],
    seed: u64,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        // FNV-1a of the input.
        let seed = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self { data, seed }
    }

    fn next_byte(&mut self) -> u8 {
        if let Some((&b, rest)) = self.data.split_first() {
            self.data = rest;
            return b;
        }
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()[0]
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| self.next_byte())
    }
}

fn reference_hmac(ks: [u8; 8], kr: [u8; 8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(&[&ks[..], &kr[..]].concat()).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn bytes_of(state: &State) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn words_of<const N: usize>(bytes: &[u8]) -> [u32; N] {
    core::array::from_fn(|i| u32::from_be_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// `sha2`'s compression of one block from `state`.
fn reference_compress(state: &State, block: &[u8; 64]) -> State {
    let mut s = *state;
    sha2::compress256(&mut s, &[(*block).into()]);
    s
}

/// `finish` and `finish_into` (with a dirty output) against the `hmac` crate.
fn check_hmac(mid: &Midstate, block: &Block, ks: [u8; 8], kr: [u8; 8], msg: &[u8]) -> State {
    let got = finish(mid, block);
    assert_eq!(
        bytes_of(&got),
        reference_hmac(ks, kr, msg),
        "HMAC of {msg:02x?}"
    );
    let (mut scratch, mut out) = (*block, [0xdead_beef; 8]);
    finish_into(mid, &mut scratch, &mut out);
    assert_eq!(out, got, "finish_into");
    got
}

/// The validator's `ADD_ADDR` check: right HMAC accepted, one flipped bit refused.
fn check_add_addr(mid: &Midstate, a: AddAddr, hmac: &State, block: &Block) {
    assert_eq!(add_addr_block(&a), *block, "add_addr_block");
    let good = AddAddr {
        hmac: add_addr_truncated(hmac),
        ..a
    };
    assert!(add_addr_hmac_ok(mid, &good), "right ADD_ADDR HMAC refused");
    for bit in [0, 63] {
        let mut bad = good;
        bad.hmac[bit / 8] ^= 1 << (bit % 8);
        assert!(!add_addr_hmac_ok(mid, &bad), "wrong ADD_ADDR HMAC accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut f = Fields::new(data);
    let (ks, kr) = (f.take::<8>(), f.take::<8>());
    let [id] = f.take::<1>();
    let (a4, a6, port) = (f.take::<4>(), f.take::<16>(), f.take::<2>());
    let (rs, rr) = (f.take::<4>(), f.take::<4>());
    let (state, block) = (words_of::<8>(&f.take::<32>()), f.take::<64>());

    // The raw compression.
    assert_eq!(
        compressed(&state, &words_of::<16>(&block)),
        reference_compress(&state, &block),
        "compress"
    );

    // Midstates: key blocks, then one compression each from the IV.
    let mid = midstate(&ks, &kr);
    let mut key = [0u8; 64];
    key[..8].copy_from_slice(&ks);
    key[8..16].copy_from_slice(&kr);
    for (pad, want) in [(IPAD, mid.inner), (OPAD, mid.outer)] {
        let padded = key.map(|b| b ^ pad);
        assert_eq!(
            key_block(&ks, &kr, pad),
            words_of::<16>(&padded),
            "key_block"
        );
        assert_eq!(reference_compress(&IV, &padded), want, "midstate");
    }
    let (mut dirty, mut scratch) = (
        Midstate {
            inner: [1; 8],
            outer: [2; 8],
        },
        [3; 16],
    );
    midstate_into(&ks, &kr, &mut dirty, &mut scratch);
    assert_eq!(dirty, mid, "midstate_into");

    // ADD_ADDR, both families, as hashed (`id || address || port`), and the validator's check.
    let msg4 = [&[id][..], &a4, &port].concat();
    let block4 = add_addr_v4_block(id, &a4, &port);
    let hmac4 = check_hmac(&mid, &block4, ks, kr, &msg4);
    let reference4 = reference_hmac(ks, kr, &msg4);
    assert_eq!(
        add_addr_truncated(&hmac4)[..],
        reference4[24..],
        "truncation"
    );
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&a4);
    let v4 = AddAddr {
        id,
        family: FAMILY_V4,
        addr,
        port,
        hmac: [0; 8],
    };
    check_add_addr(&mid, v4, &hmac4, &block4);

    let msg6 = [&[id][..], &a6, &port].concat();
    let block6 = add_addr_v6_block(id, &a6, &port);
    let hmac6 = check_hmac(&mid, &block6, ks, kr, &msg6);
    let v6 = AddAddr {
        family: FAMILY_V6,
        addr: a6,
        ..v4
    };
    check_add_addr(&mid, v6, &hmac6, &block6);

    // MP_JOIN: `R_sender || R_receiver`; the SYN/ACK carries the first 8 bytes.
    let msg = [rs, rr].concat();
    let join = check_hmac(&mid, &join_block(&rs, &rr), ks, kr, &msg);
    assert_eq!(join_synack_truncated(&join)[..], bytes_of(&join)[..8]);

    // Token and IDSN: SHA-256 of the key, bytes 0..4 and 24..32.
    let digest = Sha256::digest(ks);
    let (token, idsn) = token_and_idsn(&ks);
    assert_eq!(token[..], digest[..4], "token");
    assert_eq!(idsn.to_be_bytes()[..], digest[24..], "IDSN");
    let (mut scratch, mut out) = ([7; 16], [8; 8]);
    assert_eq!(token_into(&ks, &mut scratch, &mut out), token, "token_into");
});
