//! MPTCP option bytes with genuine HMACs, computed independently of the fast path with the
//! `hmac`/`sha2` crates: for the BPF_PROG_TEST_RUN tests, the benchmark and traffic profiles.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The protocol doc's synthetic keys (§7.3).
pub use mptcp_common::testing::{KEY_A, KEY_B};

/// HMAC-SHA256 keyed `sender key || receiver key` (protocol doc §6.1).
#[must_use]
pub fn hmac_sha256(key_sender: &[u8; 8], key_receiver: &[u8; 8], msg: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(key_sender);
    key[8..].copy_from_slice(key_receiver);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length works");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Token of a key: SHA-256(key)[0..4] (protocol doc §3).
#[must_use]
pub fn token(key: &[u8; 8]) -> [u8; 4] {
    let digest = Sha256::digest(key);
    [digest[0], digest[1], digest[2], digest[3]]
}

/// MP_CAPABLE of the third ACK (length 20): sender's key, then receiver's key.
#[must_use]
pub fn mpc_third_ack(key_sender: &[u8; 8], key_receiver: &[u8; 8]) -> Vec<u8> {
    [&[30u8, 20, 0x01, 0x01][..], key_sender, key_receiver].concat()
}

/// E=0 ADD_ADDR (length 16/18/28/30) with the HMAC the sender would compute.
#[must_use]
pub fn add_addr(
    key_sender: &[u8; 8],
    key_receiver: &[u8; 8],
    id: u8,
    addr: &[u8],
    port: Option<u16>,
) -> Vec<u8> {
    let port_bytes = port.map_or([0, 0], u16::to_be_bytes);
    let digest = hmac_sha256(
        key_sender,
        key_receiver,
        &[&[id][..], addr, &port_bytes].concat(),
    );
    let len = 4 + addr.len() + if port.is_some() { 2 } else { 0 } + 8;
    let mut o = vec![30, u8::try_from(len).expect("ADD_ADDR length"), 0x30, id];
    o.extend_from_slice(addr);
    if port.is_some() {
        o.extend_from_slice(&port_bytes);
    }
    o.extend_from_slice(&digest[24..32]);
    o
}

/// MP_JOIN of a SYN (length 12): the responder's token and the initiator's nonce.
#[must_use]
pub fn join_syn(addr_id: u8, token: &[u8; 4], nonce: &[u8; 4]) -> Vec<u8> {
    [&[30u8, 12, 0x10, addr_id][..], token, nonce].concat()
}

/// MP_JOIN of a SYN/ACK (length 16): HMAC(Key-resp || Key-init, R-resp || R-init)[0..8], R-resp.
#[must_use]
pub fn join_synack(
    addr_id: u8,
    key_responder: &[u8; 8],
    key_initiator: &[u8; 8],
    nonce_responder: &[u8; 4],
    nonce_initiator: &[u8; 4],
) -> Vec<u8> {
    let digest = hmac_sha256(
        key_responder,
        key_initiator,
        &[*nonce_responder, *nonce_initiator].concat(),
    );
    [
        &[30u8, 16, 0x10, addr_id][..],
        &digest[..8],
        nonce_responder,
    ]
    .concat()
}

/// MP_JOIN of the third ACK (length 24): HMAC(Key-init || Key-resp, R-init || R-resp)[0..20].
#[must_use]
pub fn join_ack(
    key_initiator: &[u8; 8],
    key_responder: &[u8; 8],
    nonce_initiator: &[u8; 4],
    nonce_responder: &[u8; 4],
) -> Vec<u8> {
    let digest = hmac_sha256(
        key_initiator,
        key_responder,
        &[*nonce_initiator, *nonce_responder].concat(),
    );
    [&[30u8, 24, 0x10, 0][..], &digest[..20]].concat()
}

/// A DSS as Linux sends it with data: 32-bit data ACK, 64-bit DSN, subflow sequence, length.
#[must_use]
pub fn dss() -> Vec<u8> {
    let mut o = vec![30, 22, 0x20, 0x0d];
    o.extend_from_slice(&[0, 0, 0x10, 0]); // data ACK
    o.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x20, 0]); // DSN
    o.extend_from_slice(&[0, 0, 0, 1]); // subflow sequence
    o.extend_from_slice(&[5, 0xa8]); // data-level length 1448
    o
}

/// NOP NOP TS, as Linux writes timestamps.
#[must_use]
pub fn timestamps() -> Vec<u8> {
    vec![1, 1, 8, 10, 0, 1, 0xe2, 0x40, 0, 0, 0x30, 0x39]
}
