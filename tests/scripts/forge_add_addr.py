#!/usr/bin/env python3
"""Forge MPTCP ADD_ADDR segments (and state-changing segments) into a live connection, from the
client side.

Runs inside the client network namespace, as root:
    ip netns exec <client-ns> python3 forge_add_addr.py --iface cveth1 \
        --client 198.18.1.1 --server 198.18.1.2 --port 10000

Python standard library only (AF_PACKET sockets, struct, hmac).

It sniffs the interface (both directions) for the connection between CLIENT and SERVER:PORT
and keeps the state of its initial subflow, seen from the client:

- snd_nxt: the highest end of a client -> server segment, or the highest ack of a
  server -> client segment (whichever is later: the two directions back each other up when
  the sniffer misses packets during a burst);
- rcv_nxt: the highest ack of a client -> server segment, or the highest end of a
  server -> client segment;
- TSval/TSecr: the latest client TSval (or server TSecr) and the latest server TSval;
- the window, the MAC addresses, and the two MPTCP keys of the MP_CAPABLE third ACK
  (they travel in clear: key A = client, key B = server).

Then it obeys commands read from stdin, one a line:

    inject <bad|good> <addr-id> <ipv4-address> <count> [interval-ms]
        Sends <count> pure ACKs shaped like Linux's own ADD_ADDR: seq = snd_nxt,
        ack = rcv_nxt, NOP NOP TS when the connection uses timestamps (Linux drops segments
        without TS on a TS connection), then the 16-byte ADD_ADDR option (E=0, no port).
        "bad" carries 8 random HMAC bytes; "good" carries the right truncated HMAC computed
        from the sniffed keys (a positive control: the kernel must accept it).
        Answers `SENT n=<count> ...` or `ERR <reason>`.
    rst [seq-offset]
        Sends one blind RST (flags RST only, ack 0, no options: all a blind attacker needs is
        the 4-tuple) with seq = snd_nxt + seq-offset (default 2^31: as far outside the
        server's receive window as a sequence number can be, so Linux silently discards it and
        the connection lives on). Answers `SENT n=1 kind=rst sport=.. seq=..` or `ERR ...`.
    capable [seq-offset]
        Sends one segment shaped like an MP_CAPABLE third ACK (flags ACK, NOP NOP TS when the
        connection uses timestamps, then kind 30, length 20, version 1, flags 0x01 (H), sender
        key, receiver key) carrying 16 random key bytes instead of the connection's keys, with
        seq = snd_nxt + seq-offset (default 2^31, out of window: Linux discards it before
        looking at its options, and ignores an MP_CAPABLE on an established subflow anyway)
        and ack = rcv_nxt. Answers `SENT n=1 kind=capable sport=.. seq=.. ack=.. key_a=<hex>
        key_b=<hex>` or `ERR ...`.
    state
        Answers `STATE ...` with what has been learned.
    quit  (or end of input)
        Exits.

Everything it prints on stdout is one line per event; it prints `READY` once sniffing.
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

PACKET_OUTGOING = 4
MPTCP_KIND = 30
SUBTYPE_MP_CAPABLE = 0
SUBTYPE_ADD_ADDR = 3
TS_KIND = 8
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
# MP_CAPABLE third ACK without data: length 20, version 1, flags H (HMAC-SHA256).
MPC_THIRD_ACK_LEN = 20
MPC_VERSION_1 = 0x01
MPC_FLAG_H = 0x01
# Default sequence offset of the state-changing segments: half the sequence space away from
# snd_nxt, outside any receive window (before(seq, rcv_nxt) holds for the server).
OUT_OF_WINDOW = 1 << 31
# MP_CAPABLE lengths that carry both keys (third ACK, with or without data / checksum).
MPC_BOTH_KEYS_LENGTHS = (20, 22, 24)
# Before injecting, wait until the connection has been quiet this long, so the state is final.
QUIET_SECS = 0.15
QUIET_MAX_WAIT_SECS = 5.0
# Headers are all we need from a frame: Ethernet 14 + IPv4 <= 60 + TCP <= 60.
SNAP = 256


def seq_after(a, b):
    """True if sequence number a is after b (mod 2^32)."""
    d = (a - b) & 0xFFFFFFFF
    return d != 0 and d < 0x80000000


def later(current, candidate):
    """The later of two sequence numbers (current may be None)."""
    if current is None or seq_after(candidate, current):
        return candidate
    return current


class Conn:
    """What has been learned about the connection's initial subflow, from the client's side."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sport = None
        self.segments = 0
        self.last_seen = 0.0
        self.reset(None)

    def reset(self, sport):
        """Forget everything but the lock: a new connection (or the first one seen)."""
        self.sport = sport
        self.snd_nxt = None
        self.rcv_nxt = None
        self.window = None
        self.tsval = None  # client's latest TSval
        self.tsecr = None  # server's latest TSval
        self.mac_client = None
        self.mac_server = None
        self.key_a = None  # client's key (MP_CAPABLE initiator)
        self.key_b = None  # server's key
        self.segments = 0
        # Sequence numbers of the out-of-window segments this forger sent (`rst`, `capable`):
        # the sniffer sees them too, and must not learn from them.
        self.own_seqs = set()

    def describe(self):
        ts = "%s/%s" % (self.tsval, self.tsecr) if self.tsval is not None else "none"
        return "sport=%s seq=%s ack=%s ts=%s keys=%s segments=%d" % (
            self.sport,
            self.snd_nxt,
            self.rcv_nxt,
            ts,
            "yes" if self.key_a is not None else "no",
            self.segments,
        )


def parse_frame(frame, wire_len):
    """(eth_src, eth_dst, ip_src, ip_dst, tcp fields..., payload_len, options) or None."""
    if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    if frame[ip + 9] != socket.IPPROTO_TCP or len(frame) < ip + ihl + 20:
        return None
    tot_len = struct.unpack_from("!H", frame, ip + 2)[0] or (wire_len - 14)
    tcp = ip + ihl
    sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", frame, tcp)
    doff = (off_flags >> 12) * 4
    flags = off_flags & 0x3F
    options = frame[tcp + 20 : tcp + doff]
    payload = max(0, tot_len - ihl - doff)
    return dict(
        mac_src=frame[6:12],
        mac_dst=frame[0:6],
        src=socket.inet_ntoa(frame[ip + 12 : ip + 16]),
        dst=socket.inet_ntoa(frame[ip + 16 : ip + 20]),
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        payload=payload,
        options=options,
    )


def observe(conn, args, p):
    to_server = p["src"] == args.client and p["dst"] == args.server and p["dport"] == args.port
    to_client = p["src"] == args.server and p["dst"] == args.client and p["sport"] == args.port
    if not (to_server or to_client):
        return
    client_port = p["sport"] if to_server else p["dport"]
    syn, fin, has_ack = p["flags"] & TCP_SYN, p["flags"] & TCP_FIN, p["flags"] & TCP_ACK
    end = (p["seq"] + p["payload"] + (1 if syn else 0) + (1 if fin else 0)) & 0xFFFFFFFF
    with conn.lock:
        if to_server and syn and not has_ack:
            conn.reset(client_port)  # a new connection
        elif conn.sport is None:
            conn.reset(client_port)  # started mid-connection: keys stay unknown
        if client_port != conn.sport or (to_server and p["seq"] in conn.own_seqs):
            return
        ts = None
        for kind, body in walk_options(p["options"]):
            if kind == TS_KIND and len(body) == 8:
                ts = struct.unpack("!II", body)
            elif to_server and kind == MPTCP_KIND and body and (body[0] >> 4) == SUBTYPE_MP_CAPABLE:
                if len(body) + 2 in MPC_BOTH_KEYS_LENGTHS and conn.key_a is None:
                    conn.key_a, conn.key_b = bytes(body[2:10]), bytes(body[10:18])
        if to_server:
            conn.snd_nxt = later(conn.snd_nxt, end)
            if has_ack:
                conn.rcv_nxt = later(conn.rcv_nxt, p["ack"])
            conn.window = p["window"]
            conn.mac_client, conn.mac_server = p["mac_src"], p["mac_dst"]
            if ts:
                conn.tsval = later(conn.tsval, ts[0])
                conn.tsecr = later(conn.tsecr, ts[1]) if ts[1] else conn.tsecr
        else:
            conn.rcv_nxt = later(conn.rcv_nxt, end)
            if has_ack:
                conn.snd_nxt = later(conn.snd_nxt, p["ack"])
            conn.mac_client, conn.mac_server = p["mac_dst"], p["mac_src"]
            if ts:
                conn.tsecr = later(conn.tsecr, ts[0])
                conn.tsval = later(conn.tsval, ts[1]) if ts[1] else conn.tsval
        conn.segments += 1
        conn.last_seen = time.monotonic()


def sniff(sock, conn, args):
    buf = bytearray(SNAP)
    while True:
        try:
            nbytes, _addr = sock.recvfrom_into(buf, SNAP, socket.MSG_TRUNC)
        except OSError:
            return  # socket closed at exit
        frame = bytes(buf[: min(nbytes, SNAP)])
        parsed = parse_frame(frame, nbytes)
        if parsed is not None:
            observe(conn, args, parsed)


def add_addr_option(addr_id, addr, hmac8):
    """Kind 30, length 16, subtype 3 with E=0, id, IPv4 address, 8-byte truncated HMAC."""
    return bytes([MPTCP_KIND, 16, SUBTYPE_ADD_ADDR << 4, addr_id]) + socket.inet_aton(addr) + hmac8


def truncated_hmac(key_sender, key_receiver, addr_id, addr):
    """RFC 8684 ADD_ADDR HMAC: HMAC-SHA256(Ks || Kr, id || addr || port 00 00), bytes 24..31."""
    msg = bytes([addr_id]) + socket.inet_aton(addr) + b"\x00\x00"
    return hmac.new(key_sender + key_receiver, msg, hashlib.sha256).digest()[24:32]


def capable_option(key_sender, key_receiver):
    """Kind 30, length 20, subtype 0 / version 1, flags H, then both keys (a third ACK's)."""
    return bytes([MPTCP_KIND, MPC_THIRD_ACK_LEN, MPC_VERSION_1, MPC_FLAG_H]) + key_sender + key_receiver


def build_frame(args, snap, option_bytes, flags=TCP_ACK, seq=None, ack=None, timestamps=True):
    """Ethernet + IPv4 (DF, TTL 64) + TCP segment (a pure ACK unless told otherwise) with
    NOP NOP TS (when the connection uses timestamps and `timestamps`) and the given options,
    checksums filled. `seq` and `ack` default to snd_nxt and rcv_nxt."""
    options = b""
    if timestamps and snap["tsval"] is not None:
        options += b"\x01\x01" + struct.pack("!BBII", TS_KIND, 10, snap["tsval"], snap["tsecr"] or 0)
    options += option_bytes
    return ipv4_tcp_frame(
        snap["mac_server"], snap["mac_client"], args.client, args.server, snap["sport"],
        args.port, snap["seq"] if seq is None else seq, snap["ack"] if ack is None else ack,
        flags, snap["window"], options,
    )


def wait_quiet(conn):
    deadline = time.monotonic() + QUIET_MAX_WAIT_SECS
    while time.monotonic() < deadline:
        with conn.lock:
            if time.monotonic() - conn.last_seen >= QUIET_SECS:
                return
        time.sleep(0.02)


def snapshot(conn):
    """Once the connection has been quiet, what a forged segment needs of it (None if unseen)."""
    wait_quiet(conn)
    with conn.lock:
        if conn.sport is None or conn.snd_nxt is None or conn.rcv_nxt is None or conn.mac_client is None:
            return None
        return dict(
            sport=conn.sport, seq=conn.snd_nxt, ack=conn.rcv_nxt, window=conn.window or 0,
            tsval=conn.tsval, tsecr=conn.tsecr, mac_client=conn.mac_client,
            mac_server=conn.mac_server, key_a=conn.key_a, key_b=conn.key_b,
        )


def seq_offset(words, usage):
    """The optional sequence offset argument of `rst` and `capable` (default 2^31)."""
    if len(words) not in (1, 2):
        raise ValueError(usage)
    return (int(words[1], 0) if len(words) == 2 else OUT_OF_WINDOW) & 0xFFFFFFFF


def remember_own(conn, seq):
    """Notes that the forger sends an out-of-window segment at `seq` (mod 2^32); returns it."""
    seq &= 0xFFFFFFFF
    with conn.lock:
        conn.own_seqs.add(seq)
    return seq


def inject_rst(args, conn, out, words):
    """One blind RST: no ACK, no options, seq outside the window."""
    offset = seq_offset(words, "usage: rst [seq-offset]")
    snap = snapshot(conn)
    if snap is None:
        return "ERR the connection has not been seen yet"
    seq = remember_own(conn, snap["seq"] + offset)
    out.send(build_frame(args, snap, b"", flags=TCP_RST, seq=seq, ack=0, timestamps=False))
    return "SENT n=1 kind=rst sport=%d seq=%d snd_nxt=%d" % (snap["sport"], seq, snap["seq"])


def inject_capable(args, conn, out, words):
    """One MP_CAPABLE third ACK with random keys (never the connection's), seq outside the
    window."""
    offset = seq_offset(words, "usage: capable [seq-offset]")
    snap = snapshot(conn)
    if snap is None:
        return "ERR the connection has not been seen yet"
    key_a, key_b = os.urandom(8), os.urandom(8)
    while key_a == snap["key_a"] or key_b == snap["key_b"]:
        key_a, key_b = os.urandom(8), os.urandom(8)  # 2^-64, but stay honest
    seq = remember_own(conn, snap["seq"] + offset)
    out.send(build_frame(args, snap, capable_option(key_a, key_b), seq=seq))
    return "SENT n=1 kind=capable sport=%d seq=%d ack=%d snd_nxt=%d key_a=%s key_b=%s" % (
        snap["sport"], seq, snap["ack"], snap["seq"], key_a.hex(), key_b.hex(),
    )


def inject(args, conn, out, words):
    if len(words) not in (5, 6) or words[1] not in ("bad", "good"):
        return "ERR usage: inject <bad|good> <addr-id> <ipv4> <count> [interval-ms]"
    kind, addr_id, addr, count = words[1], int(words[2]), words[3], int(words[4])
    interval = (int(words[5]) if len(words) == 6 else 20) / 1000.0
    socket.inet_aton(addr)  # validates
    snap = snapshot(conn)
    if snap is None:
        return "ERR the connection has not been seen yet"
    if kind == "good" and snap["key_a"] is None:
        return "ERR keys unknown (MP_CAPABLE third ACK not seen)"
    right = None
    if snap["key_a"] is not None:
        # The client is the MP_CAPABLE initiator (A) and the announcer: key A || key B.
        right = truncated_hmac(snap["key_a"], snap["key_b"], addr_id, addr)
    for i in range(count):
        if kind == "good":
            mac = right
        else:
            mac = os.urandom(8)
            if mac == right:
                mac = bytes(b ^ 0xFF for b in mac)  # 2^-64, but stay honest
        out.send(build_frame(args, snap, add_addr_option(addr_id, addr, mac)))
        if i + 1 < count:
            time.sleep(interval)
    ts = "%s/%s" % (snap["tsval"], snap["tsecr"]) if snap["tsval"] is not None else "none"
    return "SENT n=%d kind=%s id=%d addr=%s sport=%d seq=%d ack=%d ts=%s" % (
        count, kind, addr_id, addr, snap["sport"], snap["seq"], snap["ack"], ts,
    )


COMMANDS = {"inject": inject, "rst": inject_rst, "capable": inject_capable}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True, help="client-side interface to sniff and send on")
    parser.add_argument("--client", required=True, help="client IPv4 address of the initial subflow")
    parser.add_argument("--server", required=True, help="server IPv4 address")
    parser.add_argument("--port", required=True, type=int, help="server port")
    args = parser.parse_args()

    conn = Conn()
    rx = sniffer(args.iface)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((args.iface, 0))
    threading.Thread(target=sniff, args=(rx, conn, args), daemon=True).start()
    say("READY")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "state":
            with conn.lock:
                say("STATE " + conn.describe())
        elif words[0] in COMMANDS:
            try:
                say(COMMANDS[words[0]](args, conn, tx, words))
            except (ValueError, OSError) as err:
                say("ERR %s" % err)
        else:
            say("ERR unknown command %r" % words[0])
    tx.close()
    rx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
