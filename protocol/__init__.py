"""Lienthong protocol: the sans-IO core.

Formats, cryptography, receipts, Merkle proofs and policy as pure functions and small
state objects over bytes.  No network, no database, no event loop: the hub and the node
agent own files, sockets and time, and feed this package bytes.
"""
