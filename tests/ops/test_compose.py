"""compose.yaml, checked by structure (no Docker engine runs here): the services, Redis' durability,
MinIO's webhook to the API, the GPU reservation, and that every pagebatch command and PAGEBATCH_*
variable in it is one the code accepts."""
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError

from pagebatch.jobs.settings import Settings
from tests.ops.commands import parse_error

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def pagebatch_services() -> dict:
    return {name: s for name, s in SERVICES.items() if s.get("build") == "."}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_stack_has_every_service():
    assert {"redis", "minio", "minio-init", "api", "worker", "flower"} <= set(SERVICES)
    assert set(pagebatch_services()) == {"api", "worker"}


def test_the_image_runs_the_pagebatch_cli():
    entrypoint = re.search(r"^ENTRYPOINT\s+(.*)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert entrypoint and yaml.safe_load(entrypoint.group(1)) == ["pagebatch"]


def test_redis_keeps_its_data_and_never_evicts():
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert flag(command, "--appendonly") == "yes"
    assert flag(command, "--maxmemory-policy") == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])  # the AOF lives on a volume


def test_minio_sends_inbox_uploads_to_the_api(tmp_path):
    from pagebatch.api.app import create_app

    env = SERVICES["minio"]["environment"]
    targets = {k.removeprefix("MINIO_NOTIFY_WEBHOOK_ENABLE_") for k, v in env.items()
               if k.startswith("MINIO_NOTIFY_WEBHOOK_ENABLE_") and v == "on"}
    assert targets == {"PRIMARY"}
    endpoint = urlsplit(env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY"])
    api_command = SERVICES["api"]["command"]
    assert endpoint.hostname == "api" and endpoint.port == int(flag(api_command, "--port"))
    assert env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY"].startswith("Bearer ${INBOX_KEY")
    assert env["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_PRIMARY"]  # events wait while the API is down

    # the path is a real POST route of the app
    app = create_app(Settings(storage=str(tmp_path / "storage"), redis_url="redis://127.0.0.1:1/0"))
    assert "post" in app.openapi()["paths"].get(endpoint.path, {})

    script = " ".join(SERVICES["minio-init"]["command"])
    assert "mc mb --ignore-existing" in script
    event_add = script[script.index("mc event add"):]
    assert "arn:minio:sqs::PRIMARY:webhook" in event_add
    assert re.search(r"--event put\b", event_add) and "--prefix inbox/" in event_add
    assert "--suffix .jsonl" in event_add
    assert SERVICES["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_the_worker_reserves_one_gpu():
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert flag(worker["command"], "--device") == "cuda"
    model = flag(worker["command"], "--model")
    mounts = [re.sub(r"\$\{[^}]*\}", "HOST", v).split(":")[1] for v in worker["volumes"]]
    assert model in mounts  # the checkpoint is mounted where --model points


def test_flower_watches_the_same_broker():
    broker = next(a for a in SERVICES["flower"]["command"] if a.startswith("--broker="))
    for service in pagebatch_services().values():
        assert broker.removeprefix("--broker=") == service["environment"]["PAGEBATCH_REDIS_URL"]
        assert service["environment"]["PAGEBATCH_TASK_EVENTS"] == "true"  # else Flower sees no tasks


@pytest.mark.parametrize("name", ["api", "worker"])
def test_commands_are_real_cli_commands(name):
    assert parse_error(SERVICES[name]["command"]) is None


def test_the_command_check_rejects_what_the_cli_rejects():
    assert "unrecognized arguments: --gpus" in parse_error(["worker", "--model", "/m", "--gpus", "2"])
    assert parse_error(["serve"]) is not None


@pytest.mark.parametrize("name", ["api", "worker"])
def test_environment_names_and_values_are_settings(name):
    env = SERVICES[name]["environment"]
    names = [k for k in env if k.startswith("PAGEBATCH_")]
    assert names
    for key in names:
        field = key.removeprefix("PAGEBATCH_").lower()
        assert field in Settings.model_fields, f"{key} is not a setting"
        value = str(env[key])
        if "${" not in value:
            Settings(**{field: value})  # the literal value is valid too


def test_an_unknown_setting_value_fails_the_check():
    with pytest.raises(ValidationError):
        Settings(log_format="xml")


def test_every_variable_has_an_example():
    example = dict(line.split("=", 1) for line in (ROOT / "compose.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    # $$ is compose's escape for a literal $ (used inside the init script)
    used = set(INTERPOLATION.findall(TEXT.replace("$$", "")))
    assert used and used <= set(example), used - set(example)
    keys = dict(pair.split("=", 1) for pair in example["API_KEYS"].split(","))
    assert example["INBOX_KEY"] in keys  # MinIO authenticates with one of the API's keys


MONITORING = ROOT / "monitoring"


def test_prometheus_and_grafana_run_behind_the_monitoring_profile():
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["monitoring"]
    assert all("profiles" not in SERVICES[name] for name in ("redis", "minio", "api", "worker"))
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")}
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert mounts == {"./monitoring/prometheus.yml": "/etc/prometheus/prometheus.yml"}
    assert f"--config.file={mounts['./monitoring/prometheus.yml']}" in SERVICES["prometheus"]["command"]
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"api:{flag(SERVICES['api']['command'], '--port')}"]


def test_grafana_provisions_prometheus_and_the_dashboard():
    grafana = SERVICES["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = ROOT / "monitoring" / "grafana" / "provisioning"
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and urlsplit(source["url"]).hostname == "prometheus"
    assert urlsplit(source["url"]).port == int(SERVICES["prometheus"]["ports"][0].split(":")[1])
    [provider] = yaml.safe_load((provisioning / "dashboards" / "pagebatch.yaml").read_text())["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/pagebatch.json"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_the_dashboard_queries_only_metrics_the_api_exports(redis_server, tmp_path):
    import json

    from fastapi.testclient import TestClient

    from pagebatch.api.app import create_app

    import redis

    from pagebatch.jobs.store.metrics import LatencyBuffer, publish_snapshot
    from pagebatch.jobs.store.registry import register_model

    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "pagebatch.json").read_text())
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)  # one worker's state, as workers write it
    register_model(client, "dash-model", "dash-worker", ttl_s=60)
    stats = {field: 1.0 for field in ("num_running", "num_waiting", "kv_blocks_total", "kv_blocks_used",
                                      "kv_blocks_cached", "kv_blocks_free", "prompt_tokens_total",
                                      "generation_tokens_total", "cached_prompt_tokens_total", "prompt_tokens_per_s",
                                      "generation_tokens_per_s", "num_preemptions", "busy_seconds_total")}
    publish_snapshot(client, "dash-worker", "dash-model", stats, ttl_s=60)
    latency = LatencyBuffer("dash-model")
    latency.observe("stop", {"queue_time": 0.1, "time_to_first_token": 0.2, "total_time": 0.5})
    latency.flush(client)
    app = create_app(Settings(storage=str(tmp_path / "storage"), redis_url=redis_server.url))
    with TestClient(app) as api:
        api.get("/healthz")  # so the API's own request metrics have a sample
        exposition = api.get("/metrics").text
    exported = set(re.findall(r"^# TYPE (\w+) ", exposition, re.M))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12 and all(p["datasource"]["uid"] == "prometheus" for p in panels)
    used = {name for p in panels for t in p["targets"] for name in re.findall(r"\bpagebatch_\w+", t["expr"])}
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}  # a histogram's series
    assert base <= exported, base - exported
    assert {"pagebatch_queue_depth", "pagebatch_engine_busy_seconds_total", "pagebatch_request_total_time_seconds",
            "pagebatch_api_request_duration_seconds"} <= base
