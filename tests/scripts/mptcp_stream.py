#!/usr/bin/env python3
"""An MPTCP server or client whose client sends data when told to (Python standard library).

Runs inside a lab namespace:

    mptcp_stream.py server <ipv4> <port>
        LISTENING                  once listening (IPPROTO_MPTCP, backlog 128)
        ACCEPTED <addr:port>       on the first connection
        RECEIVED <bytes>           when the peer has closed its side; then closes and exits 0
    mptcp_stream.py client <ipv4> <port>
        CONNECTED <addr:port>      connected with IPPROTO_MPTCP; then obeys stdin, one a line:
            send <bytes>           writes that many bytes, answers SENT <bytes>
            close                  shuts down its side, waits for the server's FIN,
                                   answers CLOSED and exits 0

Unlike `mptcp-peer`, the client sends nothing until told to, so a test can wait until the
extra subflows are up and then check that data flows on them.
"""

import socket
import sys

from wire import mptcp_socket, say

CHUNK = bytes(i % 251 for i in range(1 << 16))
IO_TIMEOUT_SECS = 60


def server(addr, port):
    listener = mptcp_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    # Room for forged joins that stay half-open next to the genuine ones.
    listener.listen(128)
    say("LISTENING %s:%d" % listener.getsockname())
    conn, peer = listener.accept()
    say("ACCEPTED %s:%d" % peer)
    conn.settimeout(IO_TIMEOUT_SECS * 4)
    total = 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        total += len(data)
    say("RECEIVED %d" % total)
    conn.close()
    listener.close()


def client(addr, port):
    conn = mptcp_socket()
    conn.settimeout(IO_TIMEOUT_SECS)
    conn.connect((addr, port))
    say("CONNECTED %s:%d" % conn.getsockname())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "send" and len(words) == 2:
            left = int(words[1])
            while left > 0:
                n = min(left, len(CHUNK))
                conn.sendall(CHUNK[:n])
                left -= n
            say("SENT %s" % words[1])
        elif words[0] == "close":
            break
        else:
            say("ERR unknown command %r" % line.strip())
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(4096):
        pass
    conn.close()
    say("CLOSED")


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("server", "client"):
        sys.stderr.write("usage: mptcp_stream.py server|client <ipv4> <port>\n")
        return 2
    role, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "server":
        server(addr, port)
    else:
        client(addr, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
