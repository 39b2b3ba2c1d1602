"""Property-based requests from the API's own OpenAPI schema (schemathesis): no input makes it fail with a 5xx."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from pagebatch.api.app import create_app
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store.storage import bucket_storage

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(redis_server, moto_s3, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        for key, value in moto_s3.env().items():  # S3 event notifications name objects boto3 then reads
            env.setenv(key, value)
        bucket_storage.cache_clear()
        app = create_app(Settings(redis_url=redis_server.url, storage=str(tmp_path_factory.mktemp("fuzz-storage")),
                                  api_keys={"fuzz-key": "fuzz"}, max_upload_bytes=64 * 1024))
        # The schema's example event names this (empty) object: fuzzing goes all the way to starting a batch.
        body = app.openapi()["paths"]["/v1/s3/events"]["post"]["requestBody"]["content"]["application/json"]
        s3 = body["schema"]["example"]["Records"][0]["s3"]
        moto_s3.client().create_bucket(Bucket=s3["bucket"]["name"])
        moto_s3.client().put_object(Bucket=s3["bucket"]["name"], Key=s3["object"]["key"], Body=b"")
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    bucket_storage.cache_clear()


def test_the_schema_covers_s3_events(api_schema):
    assert "post" in api_schema.raw_schema["paths"]["/v1/s3/events"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case):
    case.call_and_validate(headers={"Authorization": "Bearer fuzz-key"}, checks=[not_a_server_error])
