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
