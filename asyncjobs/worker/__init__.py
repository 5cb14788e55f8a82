"""asyncjobs.worker."""
