"""Helpers shared by tests/, compat/ and benchmarks/: real servers started and stopped by PID."""
