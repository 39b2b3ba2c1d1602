import pytest
from pydantic import ValidationError

from pagebatch.jobs.settings import Settings


def test_reads_the_environment(monkeypatch):
    monkeypatch.setenv("PAGEBATCH_REDIS_URL", "redis://127.0.0.1:7777/3")
    monkeypatch.setenv("PAGEBATCH_STORAGE", "s3://bucket/prefix")
    monkeypatch.setenv("PAGEBATCH_API_KEYS", "k1=acme, k2=globex")
    monkeypatch.setenv("PAGEBATCH_SHARD_SIZE", "50")
    monkeypatch.setenv("PAGEBATCH_VISIBILITY_TIMEOUT", "10")
    s = Settings()
    assert s.redis_url.endswith(":7777/3") and s.storage == "s3://bucket/prefix"
    assert s.api_keys == {"k1": "acme", "k2": "globex"}
    assert (s.shard_size, s.visibility_timeout) == (50, 10)
    assert s.unacked_restore_interval == 2 and s.lease_renew_interval_s == 2.5


@pytest.mark.parametrize("keys", ["no-equals-sign", "k=", "k=../escape"])
def test_rejects_malformed_api_keys(monkeypatch, keys):
    monkeypatch.setenv("PAGEBATCH_API_KEYS", keys)
    with pytest.raises(ValidationError):
        Settings()


def test_rejects_a_zero_shard_size(monkeypatch):
    monkeypatch.setenv("PAGEBATCH_SHARD_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_trigger_settings(monkeypatch):
    monkeypatch.setenv("PAGEBATCH_DEFAULT_MODEL", "llama-3-8b")
    monkeypatch.setenv("PAGEBATCH_TRIGGER_CLAIM_TTL_S", "60")
    s = Settings()
    assert (s.default_model, s.trigger_claim_ttl_s, s.max_event_bytes) == ("llama-3-8b", 60, 1024 * 1024)
    monkeypatch.setenv("PAGEBATCH_DEFAULT_MODEL", "")  # compose's "VAR=" means unset
    assert Settings().default_model is None


def test_inbox_bucket_owners_exact_before_longest_prefix():
    from pagebatch.jobs.settings import Settings

    settings = Settings(inbox_buckets="nightly=ops,team-*=teams,team-a*=a")
    assert settings.inbox_owner("nightly") == "ops"
    assert settings.inbox_owner("team-a-inbox") == "a"
    assert settings.inbox_owner("team-b") == "teams"
    assert settings.inbox_owner("other") is None
