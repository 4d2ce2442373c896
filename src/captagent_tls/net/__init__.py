"""Network stage: frames to TCP segments, and TCP reassembly into byte streams (sans-IO)."""
