"""The captured fixtures restore into Redis and read back through RQ's own APIs as captured."""

from __future__ import annotations

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from compat.capture_fixtures import describe_job
from compat.fixture_data import fixture_names, load_fixture, restore_fixture

NAMES = fixture_names()


def test_fixtures_exist() -> None:
    assert len(NAMES) >= 25, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_reads_back_through_rq(name: str, sync_redis: redis.Redis) -> None:
    fx = load_fixture(name)
    assert fx["rq_version"] == "2.12.0"
    restore_fixture(sync_redis, fx)
    serializer = JSONSerializer if fx["serializer"] == "json" else None
    got = describe_job(sync_redis, fx["job_id"], serializer)
    assert got == fx["expect"]


def test_finished_fixture_result_value(sync_redis: redis.Redis) -> None:
    restore_fixture(sync_redis, load_fixture("finished_int"))
    job = Job.fetch("fx-finished", connection=sync_redis)
    assert job.return_value() == 5
    assert job.worker_name == "fx-w-finished"
