"""Linux ``PACKET_FANOUT``: the capture sockets of all workers share the packets by flow.

Each worker's libpcap handle is an ``AF_PACKET`` socket; once all of them have joined one
fanout group, the kernel delivers each packet to exactly one of them.  In hash mode it picks
the socket by the packet's flow hash, which Linux computes symmetrically (the same for both
directions of a connection); with the defragment flag it first reassembles IP fragments, so
every fragment of a datagram goes with its flow.  (packet(7), "PACKET_FANOUT".)

The group id is 16 bits; the agent uses its own process id, so two agents on one host do not
share a group.  When a socket of the group closes (its worker died), the kernel spreads the
flows over the sockets that are left.
"""

from __future__ import annotations

import socket
import struct

from captagent_tls.errors import UserFacingError

SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000


class FanoutError(UserFacingError):
    """The capture socket cannot join the group; the message is for the user as it is."""


def group_id(pid: int) -> int:
    return pid & 0xFFFF


def join_fanout(fd: int, group: int) -> None:
    """Put the packet socket ``fd`` (a libpcap handle's descriptor) in fanout group
    ``group``, hash mode, defragmenting."""
    mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
    sock = socket.socket(fileno=fd)
    try:
        # as bytes: with the defragment flag the value does not fit a signed int
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", (mode << 16) | group))
    except OSError as exc:
        raise FanoutError(
            f"cannot share the capture between workers (PACKET_FANOUT): "
            f"{exc.strerror or exc}; use --workers 1"
        ) from None
    finally:
        sock.detach()  # the descriptor stays libpcap's
