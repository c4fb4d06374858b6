#!/usr/bin/env python3
"""Forge MPTCP MP_JOIN handshakes against a live connection's server, from the client side.

Runs inside the client network namespace, as root:
    ip netns exec <client-ns> python3 forge_join.py --tx-iface cveth2 \
        --src 198.18.2.66 --src-mac 02:00:00:00:02:01 --dst-mac 02:00:00:00:02:02 \
        --client 198.18.1.1 --server 198.18.1.2 --port 10000

Python standard library only (AF_PACKET sockets, struct, hmac).

It sniffs every interface of the namespace (one unbound AF_PACKET socket) for two things:

- the MP_CAPABLE third ACK (or MPC + data) of the connection CLIENT -> SERVER:PORT, which
  carries both keys in clear: key A (client) and key B (server). The server's token is
  SHA-256(key B)[0..4], the client's SHA-256(key A)[0..4];
- SYN/ACKs with MP_JOIN from SERVER:PORT to SRC, the answers to its own forged SYNs.

SRC is an address the client kernel does not own (the server has a static neighbour entry for
it pointing at the client's interface): the server's SYN/ACKs and RSTs reach the wire and this
sniffer, and the client kernel drops them silently (not its address, no forwarding) instead of
answering with a RST. Frames leave TX_IFACE from SRC_MAC to DST_MAC.

Commands, one a line on stdin:

    syn-unknown <count>
        <count> SYNs with MP_JOIN carrying random tokens that name neither key of the
        connection (a blind join), each from its own source port. Answers
        `SENT n=<count> kind=syn-unknown-token ...`.
    join <bad|good> <count>
        <count> join handshakes, one after the other: a SYN with MP_JOIN and the server's right
        token, then, once the server's SYN/ACK has been sniffed (up to 3 s), the third ACK with
        MP_JOIN whose 160-bit HMAC is random ("bad") or right ("good", computed from the
        sniffed keys and both nonces). After a "good" third ACK the forger waits 200 ms and
        resets the subflow it opened. Answers
        `SENT n=<count> kind=join-<bad|good> syns=<n> synacks=<n> synack_hmac_ok=<n>
        acks=<n> rsts=<n> ...` (synacks/acks: handshakes that got a SYN/ACK and the third ACK
        sent for them).
    state
        Answers `STATE keys=<yes|no> token_a=<hex> token_b=<hex> ...`.
    quit  (or end of input)
        Exits.

`ERR <reason>` answers a command that could not run. `READY` is printed once sniffing.
"""

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys
import threading
import time

from wire import ETH_P_IP, ipv4_tcp_frame, say, sniffer, walk_options

MPTCP_KIND = 30
MSS_KIND = 2
SUBTYPE_MP_CAPABLE = 0
SUBTYPE_MP_JOIN = 1
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
# MP_CAPABLE lengths that carry both keys (third ACK, with or without data / checksum).
MPC_BOTH_KEYS_LENGTHS = (20, 22, 24)
MPJ_SYNACK_LENGTH = 16
SYNACK_WAIT_SECS = 3.0
GOOD_ACK_HOLD_SECS = 0.2
# Address ID the forged joins announce for themselves.
FORGED_ADDR_ID = 7
SNAP = 256


def token_of(key):
    """RFC 8684 token: the first 4 bytes of SHA-256(key as on the wire)."""
    return hashlib.sha256(key).digest()[:4]


def join_hmac(key_sender, key_receiver, nonce_sender, nonce_receiver):
    """MP_JOIN HMAC: HMAC-SHA256(Ks || Kr, Rs || Rr), full 32 bytes."""
    return hmac.new(key_sender + key_receiver, nonce_sender + nonce_receiver, hashlib.sha256).digest()


def parse_mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


class State:
    """What the sniffer learned: the connection's keys and the SYN/ACKs to our forged joins."""

    def __init__(self):
        self.cond = threading.Condition()
        self.conn_sport = None
        self.key_a = None
        self.key_b = None
        # forged source port -> (server ISN, truncated HMAC, server nonce)
        self.synacks = {}

    def describe(self):
        if self.key_a is None:
            return "keys=no"
        return "keys=yes conn_sport=%d token_a=%s token_b=%s" % (
            self.conn_sport,
            token_of(self.key_a).hex(),
            token_of(self.key_b).hex(),
        )


def parse_frame(frame):
    """The IPv4/TCP fields we need, or None."""
    if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    if frame[ip + 9] != socket.IPPROTO_TCP or len(frame) < ip + ihl + 20:
        return None
    tcp = ip + ihl
    sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", frame, tcp)
    doff = (off_flags >> 12) * 4
    return dict(
        src=socket.inet_ntoa(frame[ip + 12 : ip + 16]),
        dst=socket.inet_ntoa(frame[ip + 16 : ip + 20]),
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=off_flags & 0x3F,
        options=frame[tcp + 20 : tcp + doff],
    )


def observe(state, args, p):
    mptcp = [body for kind, body in walk_options(p["options"]) if kind == MPTCP_KIND and body]
    if not mptcp:
        return
    if p["src"] == args.client and p["dst"] == args.server and p["dport"] == args.port:
        for body in mptcp:
            if (body[0] >> 4) == SUBTYPE_MP_CAPABLE and len(body) + 2 in MPC_BOTH_KEYS_LENGTHS:
                with state.cond:
                    if state.conn_sport != p["sport"]:
                        state.conn_sport = p["sport"]
                        state.key_a, state.key_b = bytes(body[2:10]), bytes(body[10:18])
                        state.cond.notify_all()
    elif (
        p["src"] == args.server
        and p["sport"] == args.port
        and p["dst"] == args.src
        and p["flags"] & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK)
    ):
        for body in mptcp:
            if (body[0] >> 4) == SUBTYPE_MP_JOIN and len(body) + 2 == MPJ_SYNACK_LENGTH:
                with state.cond:
                    state.synacks.setdefault(p["dport"], (p["seq"], bytes(body[2:10]), bytes(body[10:14])))
                    state.cond.notify_all()


def sniff(sock, state, args):
    buf = bytearray(SNAP)
    while True:
        try:
            nbytes, _addr = sock.recvfrom_into(buf, SNAP, socket.MSG_TRUNC)
        except OSError:
            return  # socket closed at exit
        parsed = parse_frame(bytes(buf[: min(nbytes, SNAP)]))
        if parsed is not None:
            observe(state, args, parsed)


class Sender:
    """Builds Ethernet + IPv4 + TCP frames from SRC to SERVER:PORT and sends them."""

    def __init__(self, args):
        self.args = args
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((args.tx_iface, 0))
        self.src_mac = parse_mac(args.src_mac)
        self.dst_mac = parse_mac(args.dst_mac)
        self.used_ports = set()

    def fresh_port(self):
        while True:
            port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
            if port not in self.used_ports:
                self.used_ports.add(port)
                return port

    def send(self, sport, seq, ack, flags, options):
        self.sock.send(ipv4_tcp_frame(
            self.dst_mac, self.src_mac, self.args.src, self.args.server, sport, self.args.port,
            seq, ack, flags, 64240, options,
        ))

    def syn(self, sport, isn, token, nonce):
        """SYN with MSS 1460 and a 12-byte MP_JOIN (B=0, address ID, token, nonce)."""
        mss = struct.pack("!BBH", MSS_KIND, 4, 1460)
        mpj = bytes([MPTCP_KIND, 12, SUBTYPE_MP_JOIN << 4, FORGED_ADDR_ID]) + token + nonce
        self.send(sport, isn, 0, TCP_SYN, mss + mpj)

    def third_ack(self, sport, seq, ack, hmac20):
        """ACK with a 24-byte MP_JOIN carrying the 160-bit HMAC."""
        mpj = bytes([MPTCP_KIND, 24, SUBTYPE_MP_JOIN << 4, 0]) + hmac20
        self.send(sport, seq, ack, TCP_ACK, mpj)

    def rst(self, sport, seq):
        self.send(sport, seq, 0, TCP_RST, b"")


def keys_or_none(state):
    with state.cond:
        if state.key_a is None:
            return None
        return state.key_a, state.key_b


def syn_unknown(state, sender, words):
    if len(words) != 2:
        return "ERR usage: syn-unknown <count>"
    count = int(words[1])
    keys = keys_or_none(state)
    known = {token_of(k) for k in keys} if keys else set()
    tokens = []
    for _ in range(count):
        token = os.urandom(4)
        while token in known:
            token = os.urandom(4)
        tokens.append(token)
        sender.syn(sender.fresh_port(), int.from_bytes(os.urandom(4), "big"), token, os.urandom(4))
        time.sleep(0.01)
    return "SENT n=%d kind=syn-unknown-token keys_known=%s tokens=%s" % (
        count, "yes" if keys else "no", ",".join(t.hex() for t in tokens),
    )


def wait_synack(state, sport):
    deadline = time.monotonic() + SYNACK_WAIT_SECS
    with state.cond:
        while sport not in state.synacks:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            state.cond.wait(left)
        return state.synacks[sport]


def join(state, sender, words):
    if len(words) != 3 or words[1] not in ("bad", "good"):
        return "ERR usage: join <bad|good> <count>"
    kind, count = words[1], int(words[2])
    keys = keys_or_none(state)
    if keys is None:
        return "ERR keys unknown (MP_CAPABLE third ACK not seen)"
    key_a, key_b = keys
    token = token_of(key_b)
    syns = synacks = synack_ok = acks = rsts = 0
    ports = []
    for _ in range(count):
        sport = sender.fresh_port()
        isn = int.from_bytes(os.urandom(4), "big")
        nonce_a = os.urandom(4)
        sender.syn(sport, isn, token, nonce_a)
        syns += 1
        ports.append(str(sport))
        answer = wait_synack(state, sport)
        if answer is None:
            continue
        synacks += 1
        server_isn, thmac, nonce_b = answer
        # SYN/ACK: sent by the server (B): HMAC(Key-B || Key-A, R-B || R-A), leftmost 64 bits.
        if join_hmac(key_b, key_a, nonce_b, nonce_a)[:8] == thmac:
            synack_ok += 1
        # Third ACK: sent by us as the client (A): HMAC(Key-A || Key-B, R-A || R-B), 160 bits.
        right = join_hmac(key_a, key_b, nonce_a, nonce_b)[:20]
        if kind == "good":
            mac = right
        else:
            mac = os.urandom(20)
            while mac == right:
                mac = os.urandom(20)
        seq = (isn + 1) & 0xFFFFFFFF
        sender.third_ack(sport, seq, (server_isn + 1) & 0xFFFFFFFF, mac)
        acks += 1
        if kind == "good":
            # The server now holds an established subflow nobody serves: take it down again.
            time.sleep(GOOD_ACK_HOLD_SECS)
            sender.rst(sport, seq)
            rsts += 1
    return "SENT n=%d kind=join-%s syns=%d synacks=%d synack_hmac_ok=%d acks=%d rsts=%d token=%s ports=%s" % (
        count, kind, syns, synacks, synack_ok, acks, rsts, token.hex(), ",".join(ports),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tx-iface", required=True, help="interface the forged frames leave by")
    parser.add_argument("--src", required=True, help="forged source IPv4 (not owned by the client)")
    parser.add_argument("--src-mac", required=True, help="source MAC of the forged frames")
    parser.add_argument("--dst-mac", required=True, help="destination MAC (the server's interface)")
    parser.add_argument("--client", required=True, help="client IPv4 address of the initial subflow")
    parser.add_argument("--server", required=True, help="server IPv4 address")
    parser.add_argument("--port", required=True, type=int, help="server port")
    args = parser.parse_args()

    state = State()
    rx = sniffer()
    sender = Sender(args)
    threading.Thread(target=sniff, args=(rx, state, args), daemon=True).start()
    say("READY")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            if words[0] == "state":
                with state.cond:
                    say("STATE " + state.describe())
            elif words[0] == "syn-unknown":
                say(syn_unknown(state, sender, words))
            elif words[0] == "join":
                say(join(state, sender, words))
            else:
                say("ERR unknown command %r" % words[0])
        except (ValueError, OSError) as err:
            say("ERR %s" % err)
    sender.sock.close()
    rx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
