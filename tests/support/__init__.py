"""Test-side helpers for captagent-tls.

Everything here is written for the tests and shares no code with ``captagent_tls``:
the point of these helpers is to check the product against independent oracles
(tshark's decrypted output, the npm package ``hep-js``, and the plaintext that the
capture scripts really sent).
"""
