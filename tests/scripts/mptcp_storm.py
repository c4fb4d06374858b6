#!/usr/bin/env python3
"""A storm of real MPTCP connections, and one genuine connection that stays active
(Python standard library). Runs inside a lab namespace:

    mptcp_storm.py server <ipv4> <port>
        LISTENING <addr:port>      once listening (IPPROTO_MPTCP); then accepts every
                                   connection, holds it and reads and discards its data;
                                   answers "count" on stdin with ACCEPTED <n> <bytes>;
                                   exits 0 when stdin closes
    mptcp_storm.py storm <ipv4> <port> <n> <per_second>
        OPENED <n> <seconds>       after opening n connections one after the other, at most
                                   per_second of them a second (each sends one byte, so its
                                   MP_CAPABLE third ACK carries both keys);
                                   holds them all open until stdin closes, then exits 0
    mptcp_storm.py genuine <ipv4> <port>
        CONNECTED <addr:port>      connected; then sends 1000 bytes every 2 ms (an active
                                   connection) and obeys stdin, one command a line:
            quiet                  stops sending, answers QUIET <bytes sent>
            close                  closes and exits 0

The connections of a storm are kept open on purpose: a connection that ends is removed by the
firewall itself; only connections that stay can overfill its maps.
"""

import resource
import selectors
import socket
import sys
import threading
import time

from wire import mptcp_socket, say

TRICKLE = bytes(i % 251 for i in range(1000))
TRICKLE_PERIOD_SECS = 0.002


def raise_fd_limit():
    """Storms hold thousands of sockets: use the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def server(addr, port):
    listener = mptcp_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(4096)
    listener.setblocking(False)
    say("LISTENING %s:%d" % listener.getsockname())
    lock = threading.Lock()
    totals = {"accepted": 0, "bytes": 0}
    stop = threading.Event()

    def serve():
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.fileobj is listener:
                    try:
                        conn, _peer = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    with lock:
                        totals["accepted"] += 1
                    continue
                try:
                    data = key.fileobj.recv(1 << 16)
                except (BlockingIOError, ConnectionError):
                    continue
                if data:
                    with lock:
                        totals["bytes"] += len(data)
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    for line in sys.stdin:
        if line.strip() == "count":
            with lock:
                say("ACCEPTED %d %d" % (totals["accepted"], totals["bytes"]))
        elif line.strip():
            say("ERR unknown command %r" % line.strip())
    stop.set()
    worker.join()


def storm(addr, port, n, per_second):
    held = []
    began = time.monotonic()
    for i in range(n):
        ahead = began + i / per_second - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        conn = mptcp_socket()
        conn.settimeout(10)
        conn.connect((addr, port))
        conn.sendall(b"s")
        held.append(conn)
    say("OPENED %d %.2f" % (len(held), time.monotonic() - began))
    for _line in sys.stdin:
        pass
    for conn in held:
        conn.close()


def genuine(addr, port):
    conn = mptcp_socket()
    conn.settimeout(10)
    conn.connect((addr, port))
    say("CONNECTED %s:%d" % conn.getsockname())
    quiet = threading.Event()
    sent = {"bytes": 0}

    def trickle():
        while not quiet.is_set():
            conn.sendall(TRICKLE)
            sent["bytes"] += len(TRICKLE)
            time.sleep(TRICKLE_PERIOD_SECS)

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    for line in sys.stdin:
        words = line.split()
        if words == ["quiet"]:
            quiet.set()
            worker.join()
            say("QUIET %d" % sent["bytes"])
        elif words == ["close"]:
            break
        elif words:
            say("ERR unknown command %r" % line.strip())
    quiet.set()
    worker.join()
    conn.close()


def main():
    args = sys.argv[1:]
    usage = (
        "usage: mptcp_storm.py server|genuine <ipv4> <port>"
        " | storm <ipv4> <port> <n> <per_second>\n"
    )
    if len(args) < 3 or args[0] not in ("server", "storm", "genuine"):
        sys.stderr.write(usage)
        return 2
    role, addr, port = args[0], args[1], int(args[2])
    raise_fd_limit()
    if role == "server" and len(args) == 3:
        server(addr, port)
    elif role == "storm" and len(args) == 5:
        storm(addr, port, int(args[3]), float(args[4]))
    elif role == "genuine" and len(args) == 3:
        genuine(addr, port)
    else:
        sys.stderr.write(usage)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
