"""Edge stage: where frames come from (capture files now, live interfaces later)."""

from __future__ import annotations

from typing import NamedTuple

from captagent_tls.errors import UserFacingError


class Frame(NamedTuple):
    ts_ns: int  # capture time, nanoseconds since the epoch
    linktype: int  # LINKTYPE_* value of the interface that captured the frame
    data: bytes | memoryview


class CaptureError(UserFacingError):
    """A capture source cannot be used; the message is meant for the user as it is."""
