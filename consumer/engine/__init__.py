"""The engine: the poll loop and what it coordinates (partitions, sequencing, the write gate,
publishing, commits, health). It drives the stages and the adapters; it holds no mapping rules.
"""
