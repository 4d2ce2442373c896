"""The settings of one run, typed: what the option table (:mod:`.options`) makes of the
command line laid over the configuration files.

The parser fills an ``argparse.Namespace``; the command line hands it on as ``Settings``, so
everything that assembles and runs the job reads typed values.  One attribute per option,
named by its ``dest``, typed by its kind (``tests/test_options_table.py`` holds the two
together: a new row needs a line here).
"""

from __future__ import annotations

from typing import Protocol


class Settings(Protocol):
    # input
    read: str | None
    interface: str | None
    filter: str | None
    promisc: bool
    snaplen: int
    buffer_size: int
    # keys
    key: list[str]
    key_password: str | None
    keylog: list[str]
    keylog_listen: list[str]
    keylog_listen_remote: bool
    key_wait: float
    key_hold_flow: int
    key_hold_total: int
    export_keylog: str | None
    # outputs
    json: bool
    write: str | None
    console: bool
    hep: list[str]
    hep_id: int
    hep_password: str
    hep_ip_proto: int
    hep_node_name: str
    hep_correlation: bool
    hep_ca: str | None
    hep_insecure: bool
    hep_queue: str
    # the agent
    user: str | None
    stats_interval: float
    metrics: str | None
    workers: int | str  # a count, or "auto"
    # limits
    flow_timeout: float
    max_flow_buffer: int
    max_flows: int
    session_cache: int
    # views
    progress: bool
    status: bool
    color: str
    brief: bool
    report: str | None
    write_decryptable: str | None
    # media
    media: bool
    media_pcap: str | None
    # the first section of --help
    quiet: bool
    config: str | None
    captagent_config: str | None
    verbose: int
