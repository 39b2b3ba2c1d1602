"""Property-based requests from the API's own OpenAPI schema (schemathesis): no input makes it fail with a 5xx."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from jobs.settings import Settings

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(redis_server, tmp_path_factory):
    app = create_app(Settings(redis_url=redis_server.url, storage=str(tmp_path_factory.mktemp("fuzz-storage")),
                              api_keys={"fuzz-key": "fuzz"}, max_upload_bytes=64 * 1024))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case):
    case.call_and_validate(headers={"Authorization": "Bearer fuzz-key"}, checks=[not_a_server_error])
