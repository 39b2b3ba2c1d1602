# Shared service fixtures (redis-server, the moto S3 server, the pagebatch API and workers) for
# tests/jobs and tests/api; registered once here so each runs once per session.
pytest_plugins = ["tests.service_fixtures"]
