"""Shared records: the Didomi envelope, parse results, merged writes, outcomes, input messages.

The ground floor: every stage and adapter may import from here, and nothing here imports a
stage or an adapter, so no stage needs another stage for a type.
"""
