"""asyncjobs.protocol."""
