"""The service's one typed configuration object, read from ``PAGEBATCH_*`` environment variables."""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pagebatch.engine.cache import cache_root

MiB = 1024 * 1024
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TokenPrices(BaseModel):
    """USD per million tokens of one model: prompt tokens computed, prompt tokens read from the prefix cache, output."""

    input: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    output: float = Field(ge=0)


class Quota(BaseModel):
    """What one tenant may hold at once; 0 is no limit. Enqueued lines and tokens count per model, from a
    batch's validation until it ends (tokens: each line's prompt, estimated, plus n x max_tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bytes: int = Field(0, ge=0)  # bytes stored in files (uploads and batch results)
    files: int = Field(0, ge=0)  # files stored
    batches_in_flight: int = Field(0, ge=0)  # batches not finished
    lines_enqueued: int = Field(0, ge=0)  # per model
    tokens_enqueued: int = Field(0, ge=0)  # per model


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGEBATCH_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # "s3://bucket/prefix" (boto3 reads AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ... itself) or a directory.
    storage: str = "./pagebatch-data"
    # "key=tenant,key2=tenant2"
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    shard_size: int = Field(200, ge=1, le=100_000)
    # Seconds a delivered task may go without a lease renewal before the broker hands it to another
    # worker. Running tasks renew their lease, so this bounds recovery time, not task duration.
    visibility_timeout: int = Field(300, ge=3)
    max_shard_attempts: int = Field(3, ge=1)
    # Fair share: shards of one model in flight (queued in the broker or running) at once; the rest wait
    # in Redis and are released round-robin between tenants. About the model's workers x --concurrency.
    dispatch_window: int = Field(8, ge=1)
    # Lines of one tenant in flight per model at once (0: no cap); a tenant always gets at least one shard.
    tenant_max_lines_in_flight: int = Field(0, ge=0)

    # Per-tenant quotas (0: no limit): the default for every tenant, and overrides per tenant as JSON,
    # '{"team1": {"bytes": 10737418240, "batches_in_flight": 50}}' (fields not named keep the default).
    quota_bytes: int = Field(0, ge=0)
    quota_files: int = Field(0, ge=0)
    quota_batches_in_flight: int = Field(0, ge=0)
    quota_lines_enqueued: int = Field(0, ge=0)
    quota_tokens_enqueued: int = Field(0, ge=0)
    tenant_quotas: dict[str, dict[str, int]] = Field(default_factory=dict)

    max_upload_bytes: int = Field(200 * MiB, ge=1)
    max_batch_bytes: int = Field(200 * MiB, ge=1)
    max_batch_lines: int = Field(50_000, ge=1)
    max_line_bytes: int = Field(4 * MiB, ge=1)
    max_completion_window_s: int = Field(7 * 24 * 3600, ge=1)
    default_max_tokens: int = Field(256, ge=1)

    # How often a running shard looks for cancel / expiry and publishes progress.
    poll_interval_s: float = Field(0.5, gt=0)
    # How often the recovery sweeper looks for batches whose Redis state was lost.
    sweep_interval_s: float = Field(5.0, gt=0)
    # How long finished batches' live state stays in Redis (the durable batch.json stays forever).
    state_ttl_s: int = Field(7 * 24 * 3600, ge=60)

    # What pagebatch makes or fetches once: the demo models (models/ holds SmolLM2 once fetched) and converted
    # GGUF checkpoints (gguf/). The engine reads the same variable (pagebatch.engine.cache), so both agree.
    cache_dir: Path = Field(default_factory=cache_root)

    # S3 triggers (webhook and `pagebatch watch`): the model for lines of an inbox file that name none,
    # when the webhook URL (?model=) or the watch command (--model) does not say.
    default_model: str | None = Field(None, max_length=256)
    # How long a started-but-unfinished trigger claim blocks redeliveries before another may retry it.
    trigger_claim_ttl_s: int = Field(900, ge=10)
    max_event_bytes: int = Field(1 * MiB, ge=1024)
    # Which tenant owns each inbox bucket, "bucket=tenant,prefix*=tenant": an upload notification starts a
    # batch only for a bucket its caller's tenant owns, so no tenant can make the server read another's bucket.
    inbox_buckets: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    # Completion webhooks (docs/api.md#webhooks), "tenant=https://host/path,tenant2=...": where each tenant's
    # batch.completed / failed / expired / cancelled events are POSTed (http or https; redirects are not followed).
    webhooks: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # "tenant=whsec_<base64>,...": each endpoint's Standard Webhooks signing secret (every endpoint needs one).
    webhook_secrets: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # A failed delivery (error, timeout, non-2xx) is retried after base * 2^(attempt-1) seconds, jittered down
    # by up to half and capped at webhook_retry_max_s, until webhook_max_attempts or webhook_max_age_s after the event.
    webhook_retry_base_s: float = Field(10.0, gt=0)
    webhook_retry_max_s: float = Field(3600.0, gt=0)
    webhook_max_attempts: int = Field(30, ge=1)
    webhook_max_age_s: int = Field(24 * 3600, ge=1)
    # One delivery's HTTP timeout (connect, write, read), and how often each worker looks for due deliveries.
    webhook_timeout_s: float = Field(5.0, gt=0, le=60)
    webhook_interval_s: float = Field(1.0, gt=0)

    # Watching and steering batches (docs/api.md#watching-a-batch): how often a progress stream looks for news;
    # how long an Idempotency-Key is remembered; per-model prices in USD per million tokens for estimates,
    # "model=input:cached_input:output,..." (cached_input may be left empty: the input price).
    progress_interval_s: float = Field(1.0, gt=0)
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    prices: Annotated[dict[str, TokenPrices], NoDecode] = Field(default_factory=dict)
    # How long POST /v1/estimates waits for a worker's answer before it returns the estimate still running.
    estimate_wait_s: float = Field(60.0, ge=0, le=600)

    # GET /metrics answers only "Authorization: Bearer <token>" when set (it shows model names and queue depths).
    metrics_token: str | None = Field(None, min_length=16)
    # Serve /docs and /openapi.json (the interactive API description); off hides them.
    api_docs: bool = True

    # Which kernels the engine runs: torch (the references), triton, cpu (C++ decode attention), or auto (Triton on
    # CUDA, cpu on CPU).
    kernels: str = Field("auto", pattern="^(auto|torch|triton|cpu)$")

    log_level: str = "INFO"
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    # How often each worker publishes its engine stats and request latencies to Redis for /metrics.
    stats_interval_s: float = Field(2.0, gt=0)
    # Celery task events and worker heartbeats: what Flower needs to show tasks and workers
    # (off by default: they cost a Redis publish per task state change).
    task_events: bool = False

    @field_validator("default_model", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return _tenant_map(value, "PAGEBATCH_API_KEYS entries look like key=tenant (tenant: letters, digits, - or _)")

    @field_validator("inbox_buckets", mode="before")
    @classmethod
    def _parse_inbox_buckets(cls, value: object) -> object:
        return _tenant_map(value, "PAGEBATCH_INBOX_BUCKETS entries look like bucket=tenant or bucket-prefix*=tenant")

    @field_validator("webhooks", mode="before")
    @classmethod
    def _parse_webhooks(cls, value: object) -> object:
        return _pair_map(value, "PAGEBATCH_WEBHOOKS entries look like tenant=https://host/path",
                         lambda tenant, url: bool(_TENANT.match(tenant)) and _is_http_url(url))

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _parse_webhook_secrets(cls, value: object) -> object:
        return _pair_map(value, "PAGEBATCH_WEBHOOK_SECRETS entries look like tenant=whsec_<base64>",
                         lambda tenant, secret: bool(_TENANT.match(tenant)) and _is_webhook_secret(secret))

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        usage = "PAGEBATCH_PRICES entries look like model=input:cached_input:output (USD per million tokens)"
        pairs = _pair_map(value, usage, lambda model, prices: bool(model) and prices.count(":") == 2)
        assert isinstance(pairs, dict)
        out = {}
        for model, text in pairs.items():
            try:
                given, cached, output = (float(p) if p.strip() else None for p in text.split(":"))
            except ValueError:
                raise ValueError(usage) from None
            if given is None or output is None:
                raise ValueError(usage)
            out[model] = {"input": given, "cached_input": given if cached is None else cached, "output": output}
        return out

    @field_validator("tenant_quotas")
    @classmethod
    def _check_tenant_quotas(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for tenant, limits in value.items():
            if not _TENANT.match(tenant):
                raise ValueError(f"PAGEBATCH_TENANT_QUOTAS: {tenant[:64]!r} is not a tenant name")
            Quota(**limits)  # names and ranges
        return value

    def quota_for(self, tenant: str) -> Quota:
        """The tenant's quotas: its overrides in tenant_quotas over the quota_* defaults."""
        defaults = {name: getattr(self, f"quota_{name}") for name in Quota.model_fields}
        return Quota(**{**defaults, **self.tenant_quotas.get(tenant, {})})

    @model_validator(mode="after")
    def _every_webhook_is_signed(self) -> "Settings":
        unsigned = sorted(set(self.webhooks) - set(self.webhook_secrets))
        if unsigned:
            raise ValueError(f"PAGEBATCH_WEBHOOK_SECRETS has no secret for the webhooks of: {', '.join(unsigned)}")
        return self

    def inbox_owner(self, bucket: str) -> str | None:
        """The tenant that owns an inbox bucket: an exact entry, else the longest matching ``prefix*`` entry."""
        if bucket in self.inbox_buckets:
            return self.inbox_buckets[bucket]
        matches = [p for p in self.inbox_buckets if p.endswith("*") and bucket.startswith(p[:-1])]
        return self.inbox_buckets[max(matches, key=len)] if matches else None

    @property
    def unacked_restore_interval(self) -> int:
        # kombu re-queues expired unacked messages on this period; a fraction of the
        # visibility timeout keeps a dead worker's shards from waiting much longer than that.
        return max(1, self.visibility_timeout // 5)

    @property
    def lease_renew_interval_s(self) -> float:
        return max(1.0, self.visibility_timeout / 4)


def _tenant_map(value: object, usage: str) -> object:
    """Parse "name=tenant,name2=tenant2" (an environment string); anything else is left to pydantic."""
    if not isinstance(value, str):
        return value
    return _pair_map(value, usage, lambda _name, tenant: bool(_TENANT.match(tenant)))


def _pair_map(value: object, usage: str, valid: Callable[[str, str], bool]) -> object:
    """Parse "name=value,name2=value2" (split at each entry's first "="), each pair checked by ``valid``.

    A dict is checked the same way; anything else is left to pydantic.
    """
    if isinstance(value, dict):
        items = [(str(k).strip(), str(v).strip()) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, val = item.partition("=")
            if not sep:
                raise ValueError(usage)
            items.append((name.strip(), val.strip()))
    else:
        return value
    pairs: dict[str, str] = {}
    for name, val in items:
        if not name or not valid(name, val):
            raise ValueError(usage)
        pairs[name] = val
    return pairs


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_webhook_secret(secret: str) -> bool:
    if not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
