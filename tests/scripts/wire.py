"""Helpers shared by the forgers: line output for the Rust side, TCP option walk, checksum."""

import struct
import sys


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
