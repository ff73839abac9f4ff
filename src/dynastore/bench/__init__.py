"""Benchmarks and experiments: workloads and measurements run offline, never by a node.

Nothing in this package may be imported by the node runtime; modules here may be slow or memory-hungry.
"""
