"""Where each object lives in storage. Every key is built here from server-generated ids."""
from __future__ import annotations


def files_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/files/"


def file_meta(tenant: str, file_id: str) -> str:
    return f"{files_prefix(tenant)}{file_id}.json"


def file_content(tenant: str, file_id: str) -> str:
    return f"tenants/{tenant}/file-content/{file_id}.jsonl"


def batches_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/batches/"


def batch_json(tenant: str, batch_id: str) -> str:
    return f"{batches_prefix(tenant)}{batch_id}.json"


def work_prefix(tenant: str, batch_id: str) -> str:
    return f"tenants/{tenant}/work/{batch_id}/"


def manifest(tenant: str, batch_id: str) -> str:
    return work_prefix(tenant, batch_id) + "manifest.json"


def shard_input(tenant: str, batch_id: str, shard: int) -> str:
    return work_prefix(tenant, batch_id) + f"shards/{shard:06d}.jsonl"


def shard_result(tenant: str, batch_id: str, shard: int) -> str:
    return work_prefix(tenant, batch_id) + f"results/{shard:06d}.json"


def prepare_result(tenant: str, batch_id: str) -> str:
    return work_prefix(tenant, batch_id) + "results/prepare.json"


SERVED_MODELS_PREFIX = "registry/models/"


def served_model(digest: str) -> str:
    """A model some worker served (its name inside); the durable copy of Redis' models set."""
    return f"{SERVED_MODELS_PREFIX}{digest}.json"


ACTIVE_PREFIX = "active/"


def active_marker(batch_id: str) -> str:
    """Present while a batch is not finished: what the recovery sweeper walks."""
    return f"{ACTIVE_PREFIX}{batch_id}"


def trigger_marker(claim_id: str) -> str:
    """The durable record that one S3 object version (bucket/key/etag) started a batch."""
    return f"triggers/{claim_id}.json"
