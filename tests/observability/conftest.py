from tests.worker.conftest import start_worker  # noqa: F401  (the in-process worker fixture)
