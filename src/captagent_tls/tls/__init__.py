"""TLS stage: records, handshakes, key schedules and record decryption (sans-IO)."""
