"""``pagebatch watch``: list an S3 inbox every few seconds and start a batch for each new object version."""
from __future__ import annotations

import threading
from collections.abc import Callable

import redis
from botocore.exceptions import BotoCoreError, ClientError

from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.trigger_events import ObjectRef, Outcome, TriggerOptions, normalize_etag, object_problem
from pagebatch.jobs.pipeline.trigger_start import SourceUnavailable, start_object
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.storage import bucket_storage, parse_s3_url

log = get_logger(__name__)


def poll_once(svc: Services, bucket: str, prefix: str, options: TriggerOptions) -> list[Outcome]:
    """List the inbox and start a batch for every object version not started yet."""
    outcomes = []
    try:
        for key, etag in bucket_storage(bucket).list_versions(prefix):
            if object_problem(bucket, key) is None:
                outcomes.append(start_object(svc, ObjectRef(bucket, key, normalize_etag(etag)), options))
    except (BotoCoreError, ClientError) as e:
        raise SourceUnavailable(f"cannot list s3://{bucket}/{prefix}: {e}") from e
    return outcomes


def watch(svc: Services, url: str, options: TriggerOptions, *, interval_s: float, once: bool,
          stop: threading.Event, report: Callable[[list[Outcome]], None] = lambda _: None) -> None:
    """Poll ``url`` every ``interval_s`` seconds until ``stop`` is set (or once); storage outages are retried."""
    bucket, prefix = parse_s3_url(url)
    while True:
        try:
            report(poll_once(svc, bucket, prefix, options))
        except (SourceUnavailable, redis.RedisError) as e:
            if once:
                raise
            log.warning("poll failed; retrying next interval", error=str(e))
        if once or stop.wait(interval_s):
            return
