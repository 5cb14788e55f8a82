"""Running the engine: one process or several, health probes, metrics sampling, logging set-up,
the ``rq worker -w`` adapter; the only place that reads the worker's ``ASYNCJOBS_*`` environment."""
