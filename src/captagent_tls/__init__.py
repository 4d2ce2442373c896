"""captagent-tls: rebuild TCP streams, decrypt TLS and ship the SIP inside as HEPv3.

The sub-packages are the pipeline stages, in order: ``capture`` (frames in), ``net`` (IP and
TCP reassembly), ``tls`` (records, handshakes, decryption), ``sip`` (message framing) and
``sinks`` (console, JSON, HEP out).  ``net``, ``tls`` and ``sip`` are sans-IO: they take bytes
and timestamps and return events.
"""

__version__ = "0.1.0"
