"""asyncjobs.delivery."""
