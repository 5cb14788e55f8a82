"""asyncjobs.cli."""
