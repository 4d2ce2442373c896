"""Media stage: the rest of the call (sans-IO).

What the decrypted SIP says about the media (``sdp``), the RTP headers and per-stream
statistics (``rtp``), RTCP and its HEP type 5 rendering (``rtcp``), SRTP/SRTCP with SDES keys
(``srtp``), DTLS-SRTP keys from key logs (``dtls``), and the correlation of UDP datagrams to
calls (``calls``: ``MediaTracker``).  Bytes and timestamps in, events out: nothing here opens
a socket or a file.
"""
