"""Task adapters; importing this package registers each of them (see base.register)."""
