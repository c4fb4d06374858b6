//! SHA-256 compression and the HMAC-SHA256 midstate arithmetic used by every MPTCP check.
//!
//! Written for the eBPF verifier: no loops over runtime bounds, no slices, no panicking index.
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

/// Round constants K (FIPS 180-4 §4.2.2).
static K: [u32; 64] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4,
    0xab1c_5ed5, 0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe,
    0x9bdc_06a7, 0xc19b_f174, 0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f,
    0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da, 0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7,
    0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967, 0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc,
    0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85, 0xa2bf_e8a1, 0xa81a_664b,
    0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070, 0x19a4_c116,
    0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7,
    0xc671_78f2,
];

/// One SHA-256 compression in place (FIPS 180-4 §6.2.2): advances `state` by the block in `w`,
/// which is used as the message-schedule ring and left scrambled.
///
/// A rolled loop over the 64 rounds: a fully unrolled version needs more than the 512-byte BPF
/// stack for spills. Never inlined, so in eBPF it is one BPF subprogram; in place, so its frame
/// holds no copy of the block or the state (the XDP program keeps both in map memory). Indexes
/// are masked so no bounds check can panic.
#[inline(never)]
pub fn compress(state: &mut State, w: &mut Block) {
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    let mut i = 0usize;
    while i < 64 {
        if i >= 16 {
            let w15 = w[(i + 1) & 15];
            let w2 = w[(i + 14) & 15];
            let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            w[i & 15] = w[i & 15].wrapping_add(s0).wrapping_add(w[(i + 9) & 15]).wrapping_add(s1);
        }
        let big_s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(big_s1)
            .wrapping_add(ch)
            .wrapping_add(K[i & 63])
            .wrapping_add(w[i & 15]);
        let big_s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(big_s0.wrapping_add(maj));
        i += 1;
    }
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
    state[4] = state[4].wrapping_add(e);
    state[5] = state[5].wrapping_add(f);
    state[6] = state[6].wrapping_add(g);
    state[7] = state[7].wrapping_add(h);
}

/// [`compress`] on copies: returns the advanced state, leaves the inputs alone.
#[inline(always)]
#[must_use]
pub fn compressed(state: &State, block: &Block) -> State {
    let mut s = *state;
    let mut w = *block;
    compress(&mut s, &mut w);
    s
}
