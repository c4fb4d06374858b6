"""Helpers shared by the lab's scripts: line output for the Rust side, sockets (MPTCP, raw
sniffer), TCP option walk, checksum."""

import os
import socket
import struct
import sys

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SO_RCVBUFFORCE = 33
IPPROTO_MPTCP = 262


def say(line):
    """One line to the Rust side that drives the forger (read line by line)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def walk_options(opts):
    """Yield (kind, body) for each TCP option; body excludes the kind and length bytes."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            return
        length = opts[i + 1]
        if length < 2 or i + length > len(opts):
            return
        yield kind, opts[i + 2 : i + length]
        i += length


def checksum(data):
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mptcp_socket():
    """An IPv4 MPTCP stream socket."""
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)


def sniffer(iface=None):
    """A raw socket receiving every frame of `iface` (of every interface when None)."""
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        # A burst of GSO frames must not overflow the queue while Python parses.
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    if iface is not None:
        rx.bind((iface, ETH_P_ALL))
    return rx


def ipv4_tcp_frame(dst_mac, src_mac, src, dst, sport, dport, seq, ack, flags, window, options):
    """Ethernet + IPv4 (DF, TTL 64, random ID) + TCP with `options` (padded to 4 bytes),
    checksums filled. `src` and `dst` are dotted IPv4 strings."""
    options += b"\x00" * (-len(options) % 4)
    doff = 20 + len(options)
    src, dst = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack(
        "!HHIIHHHH", sport, dport, seq, ack, ((doff // 4) << 12) | flags, window, 0, 0,
    ) + options
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), int.from_bytes(os.urandom(2), "big"),
        0x4000, 64, socket.IPPROTO_TCP, 0, src, dst,
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp
