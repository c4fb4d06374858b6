//! Key material of one MPTCP connection: tokens, IDSNs (protocol doc §3) and the HMAC midstates
//! of both sending directions (doc §6.2), computed on the host with `mptcp_common::hmac`, the same
//! SHA-256/HMAC the fast path runs. Computing midstates here takes that work off the packet path;
//! the unit tests cross-check them against the independent `sha2`/`hmac` crates.

pub use mptcp_common::hmac::{midstate as hmac_midstate, token_and_idsn};
use mptcp_common::{
    hmac::Midstate,
    maps::{ConnState, READY_A, READY_B, ROLE_A, ROLE_B},
};

/// Everything derived from a connection's two keys. Holds no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Token of Key-A (what B's MP_JOINs towards A carry): SHA-256(Key-A)[0..4].
    pub token_a: [u8; 4],
    /// Token of Key-B: SHA-256(Key-B)[0..4].
    pub token_b: [u8; 4],
    /// IDSN of Key-A: SHA-256(Key-A)[24..32] as a big-endian integer.
    pub idsn_a: u64,
    /// IDSN of Key-B.
    pub idsn_b: u64,
    /// Midstates for HMACs sent by A (key Key-A || Key-B).
    pub mid_a: Midstate,
    /// Midstates for HMACs sent by B (key Key-B || Key-A).
    pub mid_b: Midstate,
}

/// Tokens, IDSNs and both directions' midstates of the connection with these keys.
#[must_use]
pub fn derive(key_a: &[u8; 8], key_b: &[u8; 8]) -> KeyMaterial {
    let (token_a, idsn_a) = token_and_idsn(key_a);
    let (token_b, idsn_b) = token_and_idsn(key_b);
    KeyMaterial {
        token_a,
        token_b,
        idsn_a,
        idsn_b,
        mid_a: hmac_midstate(key_a, key_b),
        mid_b: hmac_midstate(key_b, key_a),
    }
}

/// `state` with both directions' midstates filled in and marked ready. Keys, flags and
/// `learned_s` are kept as they are.
#[must_use]
pub fn with_midstates(state: &ConnState, material: &KeyMaterial) -> ConnState {
    let mut out = *state;
    out.mid[usize::from(ROLE_A)] = material.mid_a;
    out.mid[usize::from(ROLE_B)] = material.mid_b;
    out.ready |= READY_A | READY_B;
    out
}

/// Lower-case hex of a token or key, as it appears on the wire (e.g. in `tcpdump` or Wireshark):
/// [`mptcp_common::hex::Hex`] as a string.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    mptcp_common::hex::Hex(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac as _};
    use sha2::{Digest as _, Sha256};

    fn k8(s: &str) -> [u8; 8] {
        u64::from_str_radix(s, 16).unwrap().to_be_bytes()
    }

    #[test]
    fn live_linux_tokens_and_idsns() {
        // Protocol doc §7.4: connection 1 of tests/fixtures/linux-6.18-mptcp-mixed.pcap.
        let m = derive(&k8("fdcf3c40bd104a60"), &k8("060f78484ab985d8"));
        assert_eq!(m.token_a, 0x322a_76f3_u32.to_be_bytes());
        assert_eq!(m.token_b, 0x3ba6_4055_u32.to_be_bytes());
        assert_eq!(m.idsn_a, 0x0662_3b58_4498_ac2c);
        assert_eq!(m.idsn_b, 0xd36c_4ec9_b23f_4d68);
        assert_eq!(hex(&m.token_a), "322a76f3");
    }

    #[test]
    fn doc_midstate_example() {
        // Protocol doc §6.2: Key-A || Key-B = 0102030405060708 || 1112131415161718.
        let mid = hmac_midstate(&k8("0102030405060708"), &k8("1112131415161718"));
        assert_eq!(
            mid.inner,
            [
                0xc677_6c37,
                0x0671_f00e,
                0x9732_8050,
                0xaaeb_02c6,
                0x8a7e_1d2a,
                0x6fc5_9991,
                0x640d_bde3,
                0x7d16_a064
            ]
        );
        assert_eq!(
            mid.outer,
            [
                0x40fc_3ebe,
                0xc9a9_72b2,
                0xf35c_3fa5,
                0x1ee4_35e1,
                0xfed6_2347,
                0x7689_4b30,
                0x95a0_c52d,
                0x970b_197b
            ]
        );
    }

    /// The independent implementation: SHA-256 compressions of the padded key blocks by `sha2`.
    fn sha2_midstate(key_sender: &[u8; 8], key_receiver: &[u8; 8]) -> Midstate {
        let state_after = |pad: u8| {
            let mut block = [pad; 64];
            for (b, k) in block.iter_mut().zip(key_sender.iter().chain(key_receiver)) {
                *b ^= k;
            }
            let mut state = mptcp_common::sha256::IV;
            sha2::compress256(&mut state, &[block.into()]);
            state
        };
        Midstate {
            inner: state_after(mptcp_common::hmac::IPAD),
            outer: state_after(mptcp_common::hmac::OPAD),
        }
    }

    #[test]
    fn agrees_with_the_sha2_crate() {
        // A spread of keys, including all-zero and all-one bytes.
        let keys = [
            [0u8; 8],
            [0xff; 8],
            k8("fdcf3c40bd104a60"),
            k8("060f78484ab985d8"),
            k8("7397c812405c860a"),
        ];
        for a in &keys {
            for b in &keys {
                let m = derive(a, b);
                assert_eq!(m.mid_a, sha2_midstate(a, b));
                assert_eq!(m.mid_b, sha2_midstate(b, a));
                let digest = Sha256::digest(a);
                assert_eq!(m.token_a[..], digest[..4]);
                assert_eq!(m.idsn_a.to_be_bytes()[..], digest[24..32]);
            }
        }
    }

    #[test]
    fn midstates_finish_to_the_hmac_crate_result() {
        // ADD_ADDR from B in the live capture (doc §7.4): id 2, 127.0.0.3, port 10100.
        let (ka, kb) = (k8("fdcf3c40bd104a60"), k8("060f78484ab985d8"));
        let m = derive(&ka, &kb);
        let block =
            mptcp_common::hmac::add_addr_v4_block(2, &[127, 0, 0, 3], &10100u16.to_be_bytes());
        let ours = mptcp_common::hmac::finish(&m.mid_b, &block);
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&kb);
        key[8..].copy_from_slice(&ka);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&[2, 127, 0, 0, 3, 0x27, 0x74]);
        let want = mac.finalize().into_bytes();
        let got: Vec<u8> = ours.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(got, want.to_vec());
        assert_eq!(hex(&got[24..]), "fab1765ecb5cacf5");
    }

    #[test]
    fn with_midstates_keeps_keys_flags_and_time() {
        let state = ConnState {
            key_a: k8("fdcf3c40bd104a60"),
            key_b: k8("060f78484ab985d8"),
            flags: 1,
            learned_s: 77,
            ready: READY_B,
            ..ConnState::default()
        };
        let m = derive(&state.key_a, &state.key_b);
        let out = with_midstates(&state, &m);
        assert_eq!(
            (out.key_a, out.key_b, out.flags, out.learned_s),
            (state.key_a, state.key_b, 1, 77)
        );
        assert_eq!(out.ready, READY_A | READY_B);
        assert_eq!(out.mid[usize::from(ROLE_A)], m.mid_a);
        assert_eq!(out.mid[usize::from(ROLE_B)], m.mid_b);
    }
}
