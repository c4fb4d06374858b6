//! SHA-256 compression and the HMAC-SHA256 midstate arithmetic used by every MPTCP check.
//!
//! Written for the eBPF verifier: no loops over runtime bounds, no slices, no panicking index.
//! The 64 rounds are unrolled by a macro so that the round constants become immediates.
//! Words are big-endian, as in FIPS 180-4: a state is `[u32; 8]`, a block is `[u32; 16]`.

/// SHA-256 initial hash value H(0) (FIPS 180-4 §5.3.3).
pub const IV: [u32; 8] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab,
    0x5be0_cd19,
];

/// A SHA-256 chaining state (eight big-endian words).
pub type State = [u32; 8];
/// One 64-byte message block as sixteen big-endian words.
pub type Block = [u32; 16];

macro_rules! round {
    ($s:ident, $w:ident, $i:expr, $k:expr) => {{
        // Message schedule kept in a 16-word ring: w[i] for i >= 16 overwrites w[i - 16].
        if $i >= 16 {
            let w15 = $w[($i + 1) & 15];
            let w2 = $w[($i + 14) & 15];
            let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            $w[$i & 15] = $w[$i & 15]
                .wrapping_add(s0)
                .wrapping_add($w[($i + 9) & 15])
                .wrapping_add(s1);
        }
        let [a, b, c, d, e, f, g, h] = $s;
        let big_s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(big_s1)
            .wrapping_add(ch)
            .wrapping_add($k)
            .wrapping_add($w[$i & 15]);
        let big_s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = big_s0.wrapping_add(maj);
        $s = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
    }};
}

/// One SHA-256 compression: returns `state` advanced by `block` (FIPS 180-4 §6.2.2).
#[inline(always)]
#[must_use]
pub fn compress(state: &State, block: &Block) -> State {
    let mut w = *block;
    let mut s = *state;
    round!(s, w, 0, 0x428a_2f98);
    round!(s, w, 1, 0x7137_4491);
    round!(s, w, 2, 0xb5c0_fbcf);
    round!(s, w, 3, 0xe9b5_dba5);
    round!(s, w, 4, 0x3956_c25b);
    round!(s, w, 5, 0x59f1_11f1);
    round!(s, w, 6, 0x923f_82a4);
    round!(s, w, 7, 0xab1c_5ed5);
    round!(s, w, 8, 0xd807_aa98);
    round!(s, w, 9, 0x1283_5b01);
    round!(s, w, 10, 0x2431_85be);
    round!(s, w, 11, 0x550c_7dc3);
    round!(s, w, 12, 0x72be_5d74);
    round!(s, w, 13, 0x80de_b1fe);
    round!(s, w, 14, 0x9bdc_06a7);
    round!(s, w, 15, 0xc19b_f174);
    round!(s, w, 16, 0xe49b_69c1);
    round!(s, w, 17, 0xefbe_4786);
    round!(s, w, 18, 0x0fc1_9dc6);
    round!(s, w, 19, 0x240c_a1cc);
    round!(s, w, 20, 0x2de9_2c6f);
    round!(s, w, 21, 0x4a74_84aa);
    round!(s, w, 22, 0x5cb0_a9dc);
    round!(s, w, 23, 0x76f9_88da);
    round!(s, w, 24, 0x983e_5152);
    round!(s, w, 25, 0xa831_c66d);
    round!(s, w, 26, 0xb003_27c8);
    round!(s, w, 27, 0xbf59_7fc7);
    round!(s, w, 28, 0xc6e0_0bf3);
    round!(s, w, 29, 0xd5a7_9147);
    round!(s, w, 30, 0x06ca_6351);
    round!(s, w, 31, 0x1429_2967);
    round!(s, w, 32, 0x27b7_0a85);
    round!(s, w, 33, 0x2e1b_2138);
    round!(s, w, 34, 0x4d2c_6dfc);
    round!(s, w, 35, 0x5338_0d13);
    round!(s, w, 36, 0x650a_7354);
    round!(s, w, 37, 0x766a_0abb);
    round!(s, w, 38, 0x81c2_c92e);
    round!(s, w, 39, 0x9272_2c85);
    round!(s, w, 40, 0xa2bf_e8a1);
    round!(s, w, 41, 0xa81a_664b);
    round!(s, w, 42, 0xc24b_8b70);
    round!(s, w, 43, 0xc76c_51a3);
    round!(s, w, 44, 0xd192_e819);
    round!(s, w, 45, 0xd699_0624);
    round!(s, w, 46, 0xf40e_3585);
    round!(s, w, 47, 0x106a_a070);
    round!(s, w, 48, 0x19a4_c116);
    round!(s, w, 49, 0x1e37_6c08);
    round!(s, w, 50, 0x2748_774c);
    round!(s, w, 51, 0x34b0_bcb5);
    round!(s, w, 52, 0x391c_0cb3);
    round!(s, w, 53, 0x4ed8_aa4a);
    round!(s, w, 54, 0x5b9c_ca4f);
    round!(s, w, 55, 0x682e_6ff3);
    round!(s, w, 56, 0x748f_82ee);
    round!(s, w, 57, 0x78a5_636f);
    round!(s, w, 58, 0x84c8_7814);
    round!(s, w, 59, 0x8cc7_0208);
    round!(s, w, 60, 0x90be_fffa);
    round!(s, w, 61, 0xa450_6ceb);
    round!(s, w, 62, 0xbef9_a3f7);
    round!(s, w, 63, 0xc671_78f2);
    let mut out = *state;
    let mut i = 0;
    while i < 8 {
        out[i] = out[i].wrapping_add(s[i]);
        i += 1;
    }
    out
}
