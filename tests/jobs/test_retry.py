"""Riding out outages: transient errors are retried, a refused request is not."""
import pytest
import redis
from botocore.exceptions import ClientError

from pagebatch.jobs.retry import through_outages


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("error", [redis.ConnectionError("down"), client_error(503, "SlowDown"),
                                   client_error(500, "InternalError"), ConnectionError("reset")])
def test_an_outage_is_retried_until_it_passes(error):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "ok"

    assert through_outages(flaky, what="test", sleep=lambda _: None) == "ok" and len(calls) == 3


def test_a_refused_request_is_not_retried():
    calls = []

    def refused():
        calls.append(1)
        raise client_error(403, "AccessDenied")

    with pytest.raises(ClientError):
        through_outages(refused, what="test", sleep=lambda _: None)
    assert len(calls) == 1


def test_a_long_backoff_keeps_reporting_that_it_is_waiting():
    """A shard waiting out a long outage must not look stuck: its lease is renewed only while it reports."""
    clock, reports, attempts = [0.0], [], []

    def down_for_a_while():
        attempts.append(clock[0])
        if clock[0] < 120:
            raise ConnectionError("reset")
        return "ok"

    def sleep(seconds):
        clock[0] += seconds

    assert through_outages(down_for_a_while, what="test", sleep=sleep, base_s=30, cap_s=30,
                           on_wait=lambda: reports.append(clock[0])) == "ok"
    gaps = [b - a for a, b in zip([0.0, *reports], reports)]
    assert clock[0] >= 120 and max(gaps) <= 1.0 + 1e-9, "a report at least every second of waiting"
