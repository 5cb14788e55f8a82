"""Reproductions of findings of the chaos suite, handed to the engine's owner (run each with
``python -m tests.chaos.repros.<name>``; not collected by pytest: they fail until fixed)."""
