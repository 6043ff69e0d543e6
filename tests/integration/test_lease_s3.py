"""Job leases on a real S3 endpoint over HTTP (moto's server on 127.0.0.1): creates are
`If-None-Match: *`, renewals and take-overs `If-Match: <etag>`; of racing contenders exactly one
wins, and two keepers hand a lease over as on a local folder."""

from __future__ import annotations

import pytest
from helpers import MotoServer, race

from farm.core.errors import CommitConflict
from farm.core.lease import Holder, LeasePolicy, LeaseRecord
from farm.runtime.leases import LeaseKeeper
from farm.storage.config import StorageConfig
from farm.storage.lease import LeaseStore, lease_storage_config
from farm.storage.s3 import S3Store

pytestmark = pytest.mark.integration

JOB = "j-00000000000b"
WALL = 1_700_000_000.0


@pytest.fixture(scope="module")
def endpoint():
    import boto3

    server = MotoServer().start()
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="state")
    yield server.endpoint
    server.stop()


@pytest.fixture
def leases(endpoint, monkeypatch, request):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = lease_storage_config(StorageConfig(endpoint_url=endpoint, region="us-east-1"), ttl_s=6.0)

    def make(prefix: str | None = None) -> LeaseStore:
        return LeaseStore(S3Store(f"s3://state/{prefix or request.node.name}", config))

    return make


def record(holder: str, token: str = "t", job: str = JOB) -> LeaseRecord:
    return LeaseRecord(job, holder, token, WALL, WALL, WALL + 60, 60.0)


def test_lease_io_is_short_next_to_the_ttl():
    config = lease_storage_config(StorageConfig(), ttl_s=60.0)
    assert config.retry_window_s == 10.0 and config.read_timeout_s == 10.0 and config.max_attempts == 2


def test_create_is_exclusive_and_replace_needs_the_current_etag(leases):
    store = leases()
    assert store.read(JOB) == (None, None) and store.exclusive
    first = store.create(record("a"))
    with pytest.raises(CommitConflict):
        store.create(record("b"))
    found, etag = store.read(JOB)
    assert found.holder == "a" and etag == first
    renewed = store.replace(record("a", token="t"), first)
    with pytest.raises(CommitConflict):
        store.replace(record("b"), first)  # stale etag: 412
    store.delete(JOB)
    with pytest.raises(CommitConflict):
        store.replace(record("b"), renewed)  # gone: S3 answers 404 to If-Match, still a lost race


def test_of_racing_creators_and_takers_exactly_one_wins(leases):
    contenders = [leases("race") for _ in range(5)]  # a client each, as separate coordinators have
    for n in range(8):
        job = f"j-{n:012x}"
        assert len(race(5, lambda i, job=job: contenders[i].create(record(f"c{i}", job=job)))) == 1
        _, etag = contenders[0].read(job)
        winners = race(5, lambda i, job=job, etag=etag: contenders[i].replace(record(f"t{i}", token=f"k{i}", job=job),
                                                                                etag))
        assert len(winners) == 1 and contenders[0].read(job)[0].holder == f"t{winners[0]}"


def test_two_keepers_hand_a_lease_over_once_it_lapses(leases):
    clock = {"now": 0.0}

    def keeper(name, calls):
        return LeaseKeeper(leases("handover"), Holder(name), LeasePolicy(6.0), wanted=lambda j: True,
                           gained=calls.append, lost=lambda j, r: calls.append(("lost", r)),
                           clock=lambda: clock["now"], wall=lambda: WALL + clock["now"])

    a_calls, b_calls = [], []
    a, b = keeper("A", a_calls), keeper("B", b_calls)
    a.create(JOB)
    b.watch(JOB)
    for _ in range(4):
        clock["now"] += 2.0
        a.run_once()
        b.run_once()
    assert b.held_elsewhere(JOB).holder == "A" and not b_calls
    stopped = clock["now"]
    while not b_calls:
        clock["now"] += 0.5
        b.run_once()
    assert 6.0 <= clock["now"] - stopped <= 8.5 and b_calls == [JOB] and b.holds(JOB)
    a.run_once()
    assert a_calls and a_calls[0][0] == "lost" and not a.holds(JOB)
    b.release(JOB)
    assert b.leases.read(JOB) == (None, None)
