"""structlog setup: one line per event, with batch id / shard / request id bound as context.

Everything goes through one stdlib handler, so third-party lines (Celery, kombu, uvicorn, warnings)
come out in the same format as ours: JSON in production, a readable line on a terminal.
"""
from __future__ import annotations

import logging
import sys

import structlog

# Libraries whose DEBUG output would drown ours; they stay at INFO or above.
_CHATTY = ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "asyncio", "multipart", "httpcore", "httpx")
_HANDLER_NAME = "pagebatch"


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    # The console renderer formats tracebacks itself; JSON needs them as a string field.
    render: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer()] if fmt == "console"
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()])
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    ))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
