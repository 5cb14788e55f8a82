"""asyncjobs.outbox."""
