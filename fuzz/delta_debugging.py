"""Delta debugging: shrink a failing input while it keeps failing.

Generic over what "failing" means (a predicate); :mod:`fuzz.minimize` applies it to a
target's input bytes with the finding's signature, and the pipeline target
(:func:`fuzz.targets.pipeline.minimize_capture`) to a capture's packets.
"""

from __future__ import annotations

from collections.abc import Callable


def ddmin(data: bytes, fails: Callable[[bytes], bool], budget: int = 4000) -> bytes:
    """Delta debugging over bytes: remove chunks, halving their size, while ``fails``."""
    tries = 0
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and tries < budget:
        at = 0
        changed = False
        while at < len(data) and tries < budget:
            candidate = data[:at] + data[at + chunk :]
            tries += 1
            if candidate != data and fails(candidate):
                data = candidate
                changed = True
            else:
                at += chunk
        if not changed:
            chunk //= 2
    # then make the bytes left as small as they can be
    for at in range(len(data)):
        for value in (0, 1, data[at] // 2):
            if tries >= budget or value >= data[at]:
                continue
            candidate = data[:at] + bytes([value]) + data[at + 1 :]
            tries += 1
            if fails(candidate):
                data = candidate
                break
    return data


def minimize_list(
    items: list[bytes], fails: Callable[[list[bytes]], bool], budget: int = 2000
) -> list[bytes]:
    """Delta debugging over a list (of packets)."""
    tries = 0
    chunk = max(1, len(items) // 2)
    while chunk >= 1 and tries < budget:
        at = 0
        changed = False
        while at < len(items) and tries < budget:
            candidate = items[:at] + items[at + chunk :]
            tries += 1
            if candidate and fails(candidate):
                items = candidate
                changed = True
            else:
                at += chunk
        if not changed:
            chunk //= 2
    return items
