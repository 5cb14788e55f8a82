"""Built-in hook adapters for error tracking and tracing (optional extras).

* :mod:`asyncjobs.observability.sentry` (``pip install 'asyncjobs-rq[sentry]'``): what
  ``sentry_sdk.integrations.rq`` does for ``rq worker``: one error event per failed job, a
  transaction (sentry-sdk 2.x) or span (3.x) per job continuing the producer's trace.
* :mod:`asyncjobs.observability.otel` (``pip install 'asyncjobs-rq[otel]'``): a span per job,
  child of the producer's context (``opentelemetry-instrumentation-rq``'s ``traceparent`` in
  ``job.meta``).

Each is a hooks module (``--hooks asyncjobs.observability.sentry``), and is also enabled on its
own when its library is set up for RQ in the worker process (Sentry initialised with
``RqIntegration``; ``RQInstrumentor().instrument()`` called), as stock ``rq worker`` would be.
"""
