"""SIP stage: frame decrypted byte streams into messages (sans-IO)."""
