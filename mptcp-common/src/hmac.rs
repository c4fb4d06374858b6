//! HMAC-SHA256 as MPTCP uses it (RFC 8684 §3.2, §3.4.1; protocol doc §6), split so that a check
//! costs exactly two compressions once the per-direction midstates are known.
//!
//! The HMAC key is always `sender key || receiver key` (16 wire bytes, zero-padded to 64).
//! Every MPTCP message (7, 8 or 19 bytes) fits one final block with its padding.

use crate::sha256::{compress, compress_h6_h7, compressed, Block, State, IV};

/// Inner and outer SHA-256 states after absorbing `key ^ ipad` and `key ^ opad`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Midstate {
    /// State after compressing `(Key_S || Key_R || 0^48) ^ 0x36..`.
    pub inner: State,
    /// State after compressing `(Key_S || Key_R || 0^48) ^ 0x5c..`.
    pub outer: State,
}
const _: () = assert!(core::mem::size_of::<Midstate>() == 64);

/// HMAC inner pad byte (RFC 2104).
pub const IPAD: u8 = 0x36;
/// HMAC outer pad byte (RFC 2104).
pub const OPAD: u8 = 0x5c;
/// Bit length of the outer hash input: one key block plus a 32-byte digest.
const OUTER_BIT_LEN: u32 = (64 + 32) * 8;
/// Bit length of the inner hash input for the 7-byte IPv4 ADD_ADDR message.
pub const ADD_ADDR_V4_BIT_LEN: u32 = (64 + 7) * 8;
/// Bit length of the inner hash input for the 19-byte IPv6 ADD_ADDR message.
pub const ADD_ADDR_V6_BIT_LEN: u32 = (64 + 19) * 8;
/// Bit length of the inner hash input for the 8-byte MP_JOIN nonce pair.
pub const JOIN_BIT_LEN: u32 = (64 + 8) * 8;

#[inline(always)]
const fn be_word(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// The 64-byte HMAC key block `(key_sender || key_receiver || 0^48) ^ pad` as words.
#[inline(always)]
#[must_use]
pub fn key_block(key_sender: &[u8; 8], key_receiver: &[u8; 8], pad: u8) -> Block {
    let p = u32::from_ne_bytes([pad; 4]);
    let k = key_sender;
    let r = key_receiver;
    [
        be_word([k[0], k[1], k[2], k[3]]) ^ p,
        be_word([k[4], k[5], k[6], k[7]]) ^ p,
        be_word([r[0], r[1], r[2], r[3]]) ^ p,
        be_word([r[4], r[5], r[6], r[7]]) ^ p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
    ]
}

/// Precomputes the midstates of one sending direction (2 compressions).
#[inline(always)]
#[must_use]
pub fn midstate(key_sender: &[u8; 8], key_receiver: &[u8; 8]) -> Midstate {
    let mut mid = Midstate::default();
    let mut scratch = [0u32; 16];
    midstate_into(key_sender, key_receiver, &mut mid, &mut scratch);
    mid
}

/// [`midstate`] writing into `out`, with `scratch` as the block buffer (no large stack frame).
#[inline(always)]
pub fn midstate_into(
    key_sender: &[u8; 8],
    key_receiver: &[u8; 8],
    out: &mut Midstate,
    scratch: &mut Block,
) {
    key_block_into(key_sender, key_receiver, IPAD, scratch);
    out.inner = IV;
    compress(&mut out.inner, scratch);
    key_block_into(key_sender, key_receiver, OPAD, scratch);
    out.outer = IV;
    compress(&mut out.outer, scratch);
}

/// [`key_block`] written in place.
#[inline(always)]
fn key_block_into(key_sender: &[u8; 8], key_receiver: &[u8; 8], pad: u8, out: &mut Block) {
    let p = u32::from_ne_bytes([pad; 4]);
    let (k, r) = (key_sender, key_receiver);
    out[0] = be_word([k[0], k[1], k[2], k[3]]) ^ p;
    out[1] = be_word([k[4], k[5], k[6], k[7]]) ^ p;
    out[2] = be_word([r[0], r[1], r[2], r[3]]) ^ p;
    out[3] = be_word([r[4], r[5], r[6], r[7]]) ^ p;
    let mut i = 4;
    while i < 16 {
        out[i] = p;
        i += 1;
    }
}

/// Finishes an HMAC from the midstates and the message's final inner block (2 compressions).
/// Returns the full 256-bit HMAC as eight big-endian words.
#[inline(always)]
#[must_use]
pub fn finish(mid: &Midstate, inner_block: &Block) -> State {
    let mut block = *inner_block;
    let mut out = [0u32; 8];
    finish_into(mid, &mut block, &mut out);
    out
}

/// [`finish`] in place: `block` holds the inner block and is consumed (reused for the outer
/// block); the HMAC is written to `out`.
#[inline(always)]
pub fn finish_into(mid: &Midstate, block: &mut Block, out: &mut State) {
    inner_into_outer_block(mid, block, out);
    *out = mid.outer;
    compress(out, block);
}

/// The 8 bytes an ADD_ADDR carries (digest bytes 24..31, outer words H6 and H7), from the
/// midstates and its final inner block, with only the outer work those words need
/// ([`compress_h6_h7`]). `block` is consumed as in [`finish_into`]; `scratch` holds the inner
/// digest.
#[inline(always)]
pub fn add_addr_tag_into(mid: &Midstate, block: &mut Block, scratch: &mut State) -> [u8; 8] {
    inner_into_outer_block(mid, block, scratch);
    let [h6, h7] = compress_h6_h7(&mid.outer, block);
    let (a, b) = (h6.to_be_bytes(), h7.to_be_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// [`add_addr_tag_into`] on a copy of the block.
#[inline(always)]
#[must_use]
pub fn add_addr_tag(mid: &Midstate, inner_block: &Block) -> [u8; 8] {
    let mut block = *inner_block;
    let mut scratch = [0u32; 8];
    add_addr_tag_into(mid, &mut block, &mut scratch)
}

/// The inner compression, leaving the outer hash's one block (the inner digest and its padding)
/// in `block`, written in place (a temporary would cost the BPF stack 64 bytes); `digest` is
/// scratch.
#[inline(always)]
fn inner_into_outer_block(mid: &Midstate, block: &mut Block, digest: &mut State) {
    *digest = mid.inner;
    compress(digest, block);
    let mut i = 0;
    while i < 8 {
        block[i] = digest[i];
        block[i + 8] = 0;
        i += 1;
    }
    block[8] = 0x8000_0000;
    block[15] = OUTER_BIT_LEN;
}

/// Final inner block for an IPv4 ADD_ADDR: `id || addr(4) || port(2)` (port `00 00` when absent).
#[inline(always)]
#[must_use]
pub fn add_addr_v4_block(id: u8, addr: &[u8; 4], port: &[u8; 2]) -> Block {
    [
        be_word([id, addr[0], addr[1], addr[2]]),
        be_word([addr[3], port[0], port[1], 0x80]),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        ADD_ADDR_V4_BIT_LEN,
    ]
}

/// Final inner block for an IPv6 ADD_ADDR: `id || addr(16) || port(2)` (port `00 00` when absent).
#[inline(always)]
#[must_use]
pub fn add_addr_v6_block(id: u8, a: &[u8; 16], port: &[u8; 2]) -> Block {
    [
        be_word([id, a[0], a[1], a[2]]),
        be_word([a[3], a[4], a[5], a[6]]),
        be_word([a[7], a[8], a[9], a[10]]),
        be_word([a[11], a[12], a[13], a[14]]),
        be_word([a[15], port[0], port[1], 0x80]),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        ADD_ADDR_V6_BIT_LEN,
    ]
}

/// Final inner block for an MP_JOIN HMAC: `R_sender || R_receiver` (wire bytes).
#[inline(always)]
#[must_use]
pub fn join_block(nonce_sender: &[u8; 4], nonce_receiver: &[u8; 4]) -> Block {
    [
        be_word(*nonce_sender),
        be_word(*nonce_receiver),
        0x8000_0000,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        JOIN_BIT_LEN,
    ]
}

/// The 8 bytes an ADD_ADDR carries: digest bytes 24..31 (outer words H6, H7).
#[inline(always)]
#[must_use]
pub fn add_addr_truncated(hmac: &State) -> [u8; 8] {
    let a = hmac[6].to_be_bytes();
    let b = hmac[7].to_be_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// The 8 bytes an MP_JOIN SYN/ACK carries: digest bytes 0..7 (outer words H0, H1).
#[inline(always)]
#[must_use]
pub fn join_synack_truncated(hmac: &State) -> [u8; 8] {
    let a = hmac[0].to_be_bytes();
    let b = hmac[1].to_be_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// Token and IDSN of a key: SHA-256(key wire bytes) bytes 0..3 and 24..31 (protocol doc §3).
/// One compression. The token is returned as its 4 wire bytes.
#[inline(always)]
#[must_use]
pub fn token_and_idsn(key: &[u8; 8]) -> ([u8; 4], u64) {
    let d = compressed(&IV, &key_digest_block(key));
    (
        d[0].to_be_bytes(),
        (u64::from(d[6]) << 32) | u64::from(d[7]),
    )
}

/// [`token_and_idsn`]'s token with caller-provided buffers (no large stack frame).
#[inline(always)]
pub fn token_into(key: &[u8; 8], block: &mut Block, digest: &mut State) -> [u8; 4] {
    *block = key_digest_block(key);
    *digest = IV;
    compress(digest, block);
    digest[0].to_be_bytes()
}

/// The single padded block of SHA-256 over an 8-byte key.
#[inline(always)]
fn key_digest_block(key: &[u8; 8]) -> Block {
    [
        be_word([key[0], key[1], key[2], key[3]]),
        be_word([key[4], key[5], key[6], key[7]]),
        0x8000_0000,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    fn hex(s: &str) -> std::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn bytes_of(state: &State) -> std::vec::Vec<u8> {
        state.iter().flat_map(|w| w.to_be_bytes()).collect()
    }
    fn reference_hmac(key_s: &[u8; 8], key_r: &[u8; 8], msg: &[u8]) -> std::vec::Vec<u8> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(key_s);
        key[8..].copy_from_slice(key_r);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }
    fn k8(s: &str) -> [u8; 8] {
        hex(s).try_into().unwrap()
    }

    proptest! {
        #[test]
        fn compress_matches_sha2(state in any::<[u32; 8]>(), block in any::<[u8; 64]>()) {
            let mut expected = state;
            sha2::compress256(&mut expected, &[block.into()]);
            let words: Block = core::array::from_fn(|i| u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap()));
            prop_assert_eq!(compressed(&state, &words), expected);
        }

        #[test]
        fn add_addr_matches_hmac_crate(ks in any::<[u8; 8]>(), kr in any::<[u8; 8]>(), id in any::<u8>(),
                                       a4 in any::<[u8; 4]>(), a6 in any::<[u8; 16]>(), port in any::<[u8; 2]>()) {
            let mid = midstate(&ks, &kr);
            let mut msg = std::vec![id]; msg.extend_from_slice(&a4); msg.extend_from_slice(&port);
            prop_assert_eq!(bytes_of(&finish(&mid, &add_addr_v4_block(id, &a4, &port))), reference_hmac(&ks, &kr, &msg));
            let mut msg = std::vec![id]; msg.extend_from_slice(&a6); msg.extend_from_slice(&port);
            prop_assert_eq!(bytes_of(&finish(&mid, &add_addr_v6_block(id, &a6, &port))), reference_hmac(&ks, &kr, &msg));
        }

        #[test]
        fn compress_h6_h7_matches_sha2(state in any::<[u32; 8]>(), block in any::<[u8; 64]>()) {
            let mut expected = state;
            sha2::compress256(&mut expected, &[block.into()]);
            let mut words: Block = core::array::from_fn(|i| u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap()));
            prop_assert_eq!(crate::sha256::compress_h6_h7(&state, &mut words), [expected[6], expected[7]]);
        }

        #[test]
        fn add_addr_tag_matches_hmac_crate(ks in any::<[u8; 8]>(), kr in any::<[u8; 8]>(), id in any::<u8>(),
                                           a4 in any::<[u8; 4]>(), a6 in any::<[u8; 16]>(), port in any::<[u8; 2]>()) {
            // The shortcut against the full HMAC of the `hmac` crate: its rightmost 8 bytes.
            let mid = midstate(&ks, &kr);
            let mut msg = std::vec![id]; msg.extend_from_slice(&a4); msg.extend_from_slice(&port);
            prop_assert_eq!(&add_addr_tag(&mid, &add_addr_v4_block(id, &a4, &port))[..], &reference_hmac(&ks, &kr, &msg)[24..]);
            let mut msg = std::vec![id]; msg.extend_from_slice(&a6); msg.extend_from_slice(&port);
            prop_assert_eq!(&add_addr_tag(&mid, &add_addr_v6_block(id, &a6, &port))[..], &reference_hmac(&ks, &kr, &msg)[24..]);
        }

        #[test]
        fn join_matches_hmac_crate(ks in any::<[u8; 8]>(), kr in any::<[u8; 8]>(), rs in any::<[u8; 4]>(), rr in any::<[u8; 4]>()) {
            let mut msg = rs.to_vec(); msg.extend_from_slice(&rr);
            prop_assert_eq!(bytes_of(&finish(&midstate(&ks, &kr), &join_block(&rs, &rr))), reference_hmac(&ks, &kr, &msg));
        }

        #[test]
        fn token_matches_sha2(key in any::<[u8; 8]>()) {
            let d = Sha256::digest(key);
            let (token, idsn) = token_and_idsn(&key);
            prop_assert_eq!(&token[..], &d[..4]);
            prop_assert_eq!(idsn, u64::from_be_bytes(d[24..32].try_into().unwrap()));
        }
    }

    #[test]
    fn kernel_kunit_vectors() {
        // net/mptcp/crypto_test.c: the hex-looking strings are used as ASCII bytes (doc §7.1).
        let cases = [
            (
                "0b0b0b0b0b0b0b0b",
                "48692054",
                "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa",
            ),
            (
                "aaaaaaaaaaaaaaaa",
                "dddddddd",
                "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9",
            ),
            (
                "0102030405060708",
                "cdcdcdcd",
                "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d",
            ),
        ];
        for (key, msg, want) in cases {
            let k = key.as_bytes();
            let m = msg.as_bytes();
            let mid = midstate(k[..8].try_into().unwrap(), k[8..].try_into().unwrap());
            let got = finish(
                &mid,
                &join_block(m[..4].try_into().unwrap(), m[4..].try_into().unwrap()),
            );
            assert_eq!(bytes_of(&got), hex(want), "key {key}");
        }
    }

    #[test]
    fn doc_midstate_example() {
        let mid = midstate(&k8("0102030405060708"), &k8("1112131415161718"));
        assert_eq!(
            mid.inner,
            [
                0xc6776c37, 0x0671f00e, 0x97328050, 0xaaeb02c6, 0x8a7e1d2a, 0x6fc59991, 0x640dbde3,
                0x7d16a064
            ]
        );
        assert_eq!(
            mid.outer,
            [
                0x40fc3ebe, 0xc9a972b2, 0xf35c3fa5, 0x1ee435e1, 0xfed62347, 0x76894b30, 0x95a0c52d,
                0x970b197b
            ]
        );
    }

    #[test]
    fn doc_synthetic_vectors() {
        let (ka, kb) = (k8("0102030405060708"), k8("1112131415161718"));
        assert_eq!(
            token_and_idsn(&ka),
            ([0x66, 0x84, 0x0d, 0xda], 0xf5a1_01d3_d29d_6f72)
        );
        assert_eq!(
            token_and_idsn(&kb),
            ([0xcc, 0xad, 0x45, 0xac], 0x535b_eea3_8e08_7c8e)
        );
        assert_eq!(
            token_and_idsn(&k8("0000000000000002")),
            ([0xcd, 0x04, 0xa4, 0x75], 0x8865_40e5_dce7_7f70)
        );
        let (ra, rb) = ([0xa1, 0xa2, 0xa3, 0xa4], [0xb1, 0xb2, 0xb3, 0xb4]);
        let synack = finish(&midstate(&kb, &ka), &join_block(&rb, &ra));
        assert_eq!(
            join_synack_truncated(&synack).to_vec(),
            hex("864b40428762fd06")
        );
        let ack = finish(&midstate(&ka, &kb), &join_block(&ra, &rb));
        assert_eq!(
            bytes_of(&ack)[..20].to_vec(),
            hex("53037f2899475529844115fd07e665d23d3554fb")
        );
        let v4 = [10, 0, 0, 2];
        let v6: [u8; 16] = hex("20010db8000000000000000000000002").try_into().unwrap();
        let cases: [(&[u8; 8], &[u8; 8], State, &str); 8] = [
            (
                &ka,
                &kb,
                finish(&midstate(&ka, &kb), &add_addr_v4_block(1, &v4, &[0, 0])),
                "4e42b6a25d2d16fb",
            ),
            (
                &kb,
                &ka,
                finish(&midstate(&kb, &ka), &add_addr_v4_block(1, &v4, &[0, 0])),
                "f703ec3efc2f29dd",
            ),
            (
                &ka,
                &kb,
                finish(
                    &midstate(&ka, &kb),
                    &add_addr_v4_block(1, &v4, &8080u16.to_be_bytes()),
                ),
                "62220c00a0eb2116",
            ),
            (
                &kb,
                &ka,
                finish(
                    &midstate(&kb, &ka),
                    &add_addr_v4_block(1, &v4, &8080u16.to_be_bytes()),
                ),
                "8417eeb9fa366047",
            ),
            (
                &ka,
                &kb,
                finish(&midstate(&ka, &kb), &add_addr_v6_block(3, &v6, &[0, 0])),
                "b3edc574dd69d688",
            ),
            (
                &kb,
                &ka,
                finish(&midstate(&kb, &ka), &add_addr_v6_block(3, &v6, &[0, 0])),
                "f3529ef004b551a5",
            ),
            (
                &ka,
                &kb,
                finish(
                    &midstate(&ka, &kb),
                    &add_addr_v6_block(3, &v6, &443u16.to_be_bytes()),
                ),
                "e95b6c12d64016c7",
            ),
            (
                &kb,
                &ka,
                finish(
                    &midstate(&kb, &ka),
                    &add_addr_v6_block(3, &v6, &443u16.to_be_bytes()),
                ),
                "caa42c86995e1e2b",
            ),
        ];
        for (_, _, got, want) in cases {
            assert_eq!(add_addr_truncated(&got).to_vec(), hex(want));
        }
        // The shortcut on the same vectors (the first of each key order).
        assert_eq!(
            add_addr_tag(&midstate(&ka, &kb), &add_addr_v4_block(1, &v4, &[0, 0])).to_vec(),
            hex("4e42b6a25d2d16fb")
        );
        assert_eq!(
            add_addr_tag(
                &midstate(&kb, &ka),
                &add_addr_v6_block(3, &v6, &443u16.to_be_bytes())
            )
            .to_vec(),
            hex("caa42c86995e1e2b")
        );
    }

    #[test]
    fn live_linux_vectors() {
        // tests/fixtures/linux-6.18-mptcp-mixed.pcap, connection 1 (protocol doc §7.4).
        let (ka, kb) = (k8("fdcf3c40bd104a60"), k8("060f78484ab985d8"));
        assert_eq!(
            token_and_idsn(&ka),
            ([0x32, 0x2a, 0x76, 0xf3], 0x0662_3b58_4498_ac2c)
        );
        assert_eq!(
            token_and_idsn(&kb),
            ([0x3b, 0xa6, 0x40, 0x55], 0xd36c_4ec9_b23f_4d68)
        );
        let lo3 = [127, 0, 0, 3];
        let lo2 = [127, 0, 0, 2];
        let v6: [u8; 16] = hex("20010db8000000000000000000000002").try_into().unwrap();
        let port = 10100u16.to_be_bytes();
        let (from_a, from_b) = (midstate(&ka, &kb), midstate(&kb, &ka));
        let check = |mid: &Midstate, block: Block, want: &str| {
            assert_eq!(add_addr_truncated(&finish(mid, &block)).to_vec(), hex(want));
            assert_eq!(add_addr_tag(mid, &block).to_vec(), hex(want), "shortcut");
        };
        check(
            &from_b,
            add_addr_v4_block(2, &lo3, &port),
            "fab1765ecb5cacf5",
        );
        check(
            &from_a,
            add_addr_v4_block(2, &lo3, &port),
            "db16fda51db54d8f",
        );
        check(
            &from_a,
            add_addr_v4_block(1, &lo2, &[0, 0]),
            "9ae6ac5e4e7a7e74",
        );
        check(
            &from_b,
            add_addr_v4_block(1, &lo2, &[0, 0]),
            "3620b99b7241d85f",
        );
        check(
            &from_a,
            add_addr_v6_block(3, &v6, &[0, 0]),
            "5f46ce9bf890b842",
        );
        check(
            &from_b,
            add_addr_v6_block(3, &v6, &[0, 0]),
            "27b88bd4a10b2d06",
        );
        // MP_JOIN, client (A) joins the server: R-A 4058dd91, R-B 5678cf7c.
        let (ra, rb) = (
            hex("4058dd91").try_into().unwrap(),
            hex("5678cf7c").try_into().unwrap(),
        );
        assert_eq!(
            join_synack_truncated(&finish(&from_b, &join_block(&rb, &ra))).to_vec(),
            hex("440ce91eb0998048")
        );
        assert_eq!(
            bytes_of(&finish(&from_a, &join_block(&ra, &rb)))[..20].to_vec(),
            hex("96df7804c9f10bfc48d35f5867a35f6b1252b92a")
        );
        // IPv6 + port example: Key-A 7397c812405c860a, Key-B e1f7b1b13e45bef0, server announces id 5.
        let (ka6, kb6) = (k8("7397c812405c860a"), k8("e1f7b1b13e45bef0"));
        let a: [u8; 16] = hex("20010db8000000000000000000000003").try_into().unwrap();
        check(
            &midstate(&kb6, &ka6),
            add_addr_v6_block(5, &a, &10200u16.to_be_bytes()),
            "e35ef13e3306ab38",
        );
    }
}
