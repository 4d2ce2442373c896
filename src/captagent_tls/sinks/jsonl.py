"""JSON lines sink: one object per message."""

from __future__ import annotations

import base64
import json
from typing import Any, TextIO

from captagent_tls.net.addresses import ip_text
from captagent_tls.sip import Message


def message_record(message: Message) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": round(message.ts_ns / 1e9, 6),
        "src_ip": ip_text(message.src[0]),
        "src_port": message.src[1],
        "dst_ip": ip_text(message.dst[0]),
        "dst_port": message.dst[1],
        "transport": message.transport,
        "direction": "c2s" if message.from_client else "s2c",
        "tls_version": message.tls_version or None,
        "cipher_suite": message.cipher_suite or None,
        "kind": "sip" if message.is_sip else "raw",
        "call_id": message.call_id,
    }
    try:
        record["payload"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        record["payload_b64"] = base64.b64encode(message.payload).decode("ascii")
    return record


class JsonLinesSink:
    def __init__(self, out: TextIO, flush_each: bool = False):
        self.out = out
        self.flush_each = flush_each
        self._dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode

    def emit(self, message: Message) -> None:
        self.out.write(self._dumps(message_record(message)) + "\n")
        if self.flush_each:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()
