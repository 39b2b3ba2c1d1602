"""The engine options the service commands start their engines with."""
import argparse

from pagebatch.engine.config import EngineConfig
from pagebatch.jobs.commands.engine_flags import add_engine_flags, options_of


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    return options_of(parser.parse_args(list(argv)))


def test_the_service_commands_commit_their_kv_pool_and_the_library_does_not():
    """A worker's memory is what it holds from its first request; a library user's pool is committed as used."""
    assert parse().engine_kwargs()["commit_kv_pool"] is True
    assert parse("--no-commit-kv-pool").engine_kwargs()["commit_kv_pool"] is False
    assert EngineConfig(model="m").commit_kv_pool is False
