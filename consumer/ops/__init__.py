"""Operator commands: ``replay`` (offset reset) and ``redrive`` (dead letters back to input)."""
