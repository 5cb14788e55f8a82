"""Runnable examples: the demo (``make demo``) and the private redis-server it and the tests use."""
