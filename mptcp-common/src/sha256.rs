//! SHA-256 compression and the HMAC-SHA256 midstate arithmetic used by every MPTCP check.
//!
//! Written for the eBPF verifier: no loops over runtime bounds, no slices, no panicking index.
//! Words are big-endian, as in FIPS 180-4: a state is `[u32; 8]`, a block is `[u32; 16]`.

/// SHA-256 initial hash value H(0) (FIPS 180-4 §5.3.3).
pub const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A SHA-256 chaining state (eight big-endian words).
pub type State = [u32; 8];
/// One 64-byte message block as sixteen big-endian words.
pub type Block = [u32; 16];

/// Round constants K (FIPS 180-4 §4.2.2).
static K: [u32; 64] = [
    0x428a_2f98,
    0x7137_4491,
    0xb5c0_fbcf,
    0xe9b5_dba5,
    0x3956_c25b,
    0x59f1_11f1,
    0x923f_82a4,
    0xab1c_5ed5,
    0xd807_aa98,
    0x1283_5b01,
    0x2431_85be,
    0x550c_7dc3,
    0x72be_5d74,
    0x80de_b1fe,
    0x9bdc_06a7,
    0xc19b_f174,
    0xe49b_69c1,
    0xefbe_4786,
    0x0fc1_9dc6,
    0x240c_a1cc,
    0x2de9_2c6f,
    0x4a74_84aa,
    0x5cb0_a9dc,
    0x76f9_88da,
    0x983e_5152,
    0xa831_c66d,
    0xb003_27c8,
    0xbf59_7fc7,
    0xc6e0_0bf3,
    0xd5a7_9147,
    0x06ca_6351,
    0x1429_2967,
    0x27b7_0a85,
    0x2e1b_2138,
    0x4d2c_6dfc,
    0x5338_0d13,
    0x650a_7354,
    0x766a_0abb,
    0x81c2_c92e,
    0x9272_2c85,
    0xa2bf_e8a1,
    0xa81a_664b,
    0xc24b_8b70,
    0xc76c_51a3,
    0xd192_e819,
    0xd699_0624,
    0xf40e_3585,
    0x106a_a070,
    0x19a4_c116,
    0x1e37_6c08,
    0x2748_774c,
    0x34b0_bcb5,
    0x391c_0cb3,
    0x4ed8_aa4a,
    0x5b9c_ca4f,
    0x682e_6ff3,
    0x748f_82ee,
    0x78a5_636f,
    0x84c8_7814,
    0x8cc7_0208,
    0x90be_fffa,
    0xa450_6ceb,
    0xbef9_a3f7,
    0xc671_78f2,
];

/// Low 32 bits of a working value.
const LOW32: u64 = 0xffff_ffff;

/// The low 32 bits of `x` copied into both halves, so a 64-bit right shift by `n` leaves
/// `rotr32(x, n)` in the low half: one shift per rotation instead of two shifts, an or and a
/// zero-extension (BPF has no rotate instruction and, at cpu v1, no 32-bit ALU).
#[inline(always)]
const fn doubled(x: u64) -> u64 {
    (x << 32) | (x & LOW32)
}

/// Message schedule for round `i >= 16`, in the 16-word ring `w`.
macro_rules! schedule {
    ($w:ident, $i:expr) => {{
        let w15 = u64::from($w[($i + 1) & 15]);
        let w2 = u64::from($w[($i + 14) & 15]);
        let (x, y) = (doubled(w15), doubled(w2));
        let s0 = (x >> 7) ^ (x >> 18) ^ (w15 >> 3);
        let s1 = (y >> 17) ^ (y >> 19) ^ (w2 >> 10);
        let sum = u64::from($w[$i & 15])
            .wrapping_add(s0)
            .wrapping_add(u64::from($w[($i + 9) & 15]))
            .wrapping_add(s1);
        // Storing the low 32 bits is the reduction modulo 2^32.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the truncation is the reduction"
        )]
        let low = sum as u32;
        $w[$i & 15] = low;
    }};
}

/// `T1` of a round: `h + Σ1(e) + Ch(e, f, g) + K + W`.
#[inline(always)]
fn t1(e: u64, f: u64, g: u64, h: u64, k: u32, w: u32) -> u64 {
    let e2 = doubled(e);
    h.wrapping_add((e2 >> 6) ^ (e2 >> 11) ^ (e2 >> 25))
        .wrapping_add((e & f) ^ (!e & g))
        .wrapping_add(u64::from(k))
        .wrapping_add(u64::from(w))
}

/// One round on 64-bit working values whose high halves may hold garbage: only the low 32 bits
/// are ever read (additions and bitwise operations carry no information downwards, `doubled`
/// drops the high half). The caller rotates the roles of the eight working variables instead of
/// moving them, so a round is only its arithmetic.
macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $k:expr, $w:expr) => {{
        let t1 = t1($e, $f, $g, $h, $k, $w);
        let a2 = doubled($a);
        let t2 = ((a2 >> 2) ^ (a2 >> 13) ^ (a2 >> 22)).wrapping_add(($a & $b) | ($c & ($a | $b)));
        $d = $d.wrapping_add(t1);
        $h = t1.wrapping_add(t2);
    }};
}

/// One round that only advances `e` (in `$d`): the `a` it would compute (`T2`) is not needed
/// by the words a truncated digest keeps (see [`compress_h6_h7`]).
macro_rules! round_e_only {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $k:expr, $w:expr) => {{
        $d = $d.wrapping_add(t1($e, $f, $g, $h, $k, $w));
    }};
}

/// Round `i` with the schedule first (`i >= 16`).
macro_rules! scheduled {
    ($round:ident, $w:ident, $i:expr, $a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident) => {{
        schedule!($w, $i);
        $round!($a, $b, $c, $d, $e, $f, $g, $h, K[($i) & 63], $w[($i) & 15]);
    }};
}

/// Four rounds starting at round `base` (a multiple of 4), with or without the schedule.
macro_rules! four_rounds {
    ($s:ident, $w:ident, $base:expr, $sched:expr) => {{
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = $s;
        let base = $base;
        macro_rules! r {
            ($x0:ident, $x1:ident, $x2:ident, $x3:ident, $x4:ident, $x5:ident, $x6:ident, $x7:ident, $j:expr) => {{
                if $sched {
                    schedule!($w, base + $j);
                }
                round!($x0, $x1, $x2, $x3, $x4, $x5, $x6, $x7, K[(base + $j) & 63], $w[(base + $j) & 15]);
            }};
        }
        r!(a, b, c, d, e, f, g, h, 0);
        r!(h, a, b, c, d, e, f, g, 1);
        r!(g, h, a, b, c, d, e, f, 2);
        r!(f, g, h, a, b, c, d, e, 3);
        // After four rounds the roles have turned by four.
        $s = [e, f, g, h, a, b, c, d];
    }};
}

/// The low 32 bits of `a + b`.
#[inline(always)]
fn add32(a: u32, b: u64) -> u32 {
    (u64::from(a).wrapping_add(b) & LOW32) as u32
}

/// Rounds `0 .. 4 * steps` of a compression on the working variables `s`.
#[inline(always)]
fn rounds(s: &mut [u64; 8], w: &mut Block, steps: usize) {
    let mut s4 = *s;
    let mut j = 0usize;
    while j < 4 {
        four_rounds!(s4, w, j * 4, false);
        j += 1;
    }
    while j < steps {
        four_rounds!(s4, w, j * 4, true);
        j += 1;
    }
    *s = s4;
}

/// One SHA-256 compression in place (FIPS 180-4 §6.2.2): advances `state` by the block in `w`,
/// which is used as the message-schedule ring and left scrambled.
///
/// Written for the BPF JIT: four rounds per loop step with the working variables' roles rotated
/// rather than moved, 64-bit arithmetic with rotations done by [`doubled`] (BPF has no rotate
/// instruction: one 64-bit shift per rotation beats two 32-bit shifts and an or, also on CPU
/// v3). Longer loop steps measured slower (eight rounds: 6-8% more per check on CPU v3, more
/// stack spills), and a fully unrolled compression needs more than the 512-byte BPF stack.
/// Never inlined, so in eBPF it is one BPF subprogram; in place, so its frame holds no copy of
/// the block (the XDP program keeps it in map memory). Indexes are masked so no bounds check
/// can panic.
#[inline(never)]
pub fn compress(state: &mut State, w: &mut Block) {
    let mut s = state.map(u64::from);
    rounds(&mut s, w, 16);
    let mut i = 0;
    while i < 8 {
        state[i] = add32(state[i], s[i]);
        i += 1;
    }
}

/// Words 6 and 7 of what [`compress`] would leave in `state`, and only the work they need:
/// they are `g` and `h` after round 63, which are `e` after rounds 61 and 60. So rounds 62 and
/// 63 are skipped, and rounds 60 and 61 compute only `e` (their `a` would only reach words 0
/// to 5). The ADD_ADDR HMAC keeps digest bytes 24..31, these two words of the outer
/// compression.
#[inline(never)]
pub fn compress_h6_h7(state: &State, w: &mut Block) -> [u32; 2] {
    let mut s = state.map(u64::from);
    rounds(&mut s, w, 15);
    // `a` and `b` are not read: only `t2` would.
    let [_a, _b, mut c, mut d, e, f, g, h] = s;
    scheduled!(round_e_only, w, 60, _a, _b, c, d, e, f, g, h);
    scheduled!(round_e_only, w, 61, h, _a, _b, c, d, e, f, g);
    // Round 60 left its `e` in `d`, round 61 in `c`: g and h after round 63.
    [add32(state[6], c), add32(state[7], d)]
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
