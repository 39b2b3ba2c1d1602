"""The engine's command-line flags, generated from EngineOptions' fields (one definition, three commands).

A boolean field that defaults to True becomes ``--no-<name>``; every other field becomes ``--<name>``.
``argv_of`` turns parsed flags back into the arguments `pagebatch worker` takes (what standalone passes on).
"""
from __future__ import annotations

import argparse
from typing import Any, get_type_hints

from pagebatch.jobs.engine_host import EngineOptions, option_fields


def _flag(name: str, default: Any) -> str:
    dashed = name.replace("_", "-")
    if default is True:
        return "--no-" + dashed.removeprefix("enable-")
    return "--" + dashed


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--served-model-name", default=None,
                        help="the model name requests use (default: the checkpoint's name)")
    hints = get_type_hints(EngineOptions)
    for field in option_fields():
        meta = dict(field.metadata)
        flag = _flag(field.name, field.default)
        if field.default is True:
            parser.add_argument(flag, dest=field.name, action="store_false", help=meta.get("help"))
            continue
        kind = int if hints[field.name] in (int, int | None) else str
        parser.add_argument(flag, dest=field.name, type=kind, default=field.default, help=meta.get("help"),
                            choices=meta.get("choices"))


def options_of(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(**{field.name: getattr(args, field.name) for field in option_fields()})


def argv_of(args: argparse.Namespace) -> list[str]:
    """The engine flags of ``args`` as command-line arguments (only those that differ from the defaults)."""
    argv: list[str] = []
    if args.served_model_name:
        argv += ["--served-model-name", args.served_model_name]
    for field in option_fields():
        value = getattr(args, field.name)
        if value == field.default:
            continue
        flag = _flag(field.name, field.default)
        argv += [flag] if field.default is True else [flag, str(value)]
    return argv


