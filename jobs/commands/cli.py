"""`pagebatch` command line: the composition root of the project."""
from __future__ import annotations

import argparse
import sys

from pagebatch.jobs.batch.schema import ENDPOINTS
from pagebatch.jobs.bench import BENCHMARKS

# what `pagebatch make-model --arch` makes (engine.make_model.ARCHITECTURES; listed here so the parser does not
# import transformers)
MAKE_MODEL_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "olmoe", "gemma3", "phi3")
from pagebatch.jobs.commands.engine_flags import add_engine_flags, argv_of, options_of


def _cmd_make_model(args: argparse.Namespace) -> int:
    from pagebatch.engine.make_model import make_checkpoint, sizes_for

    sizes = sizes_for(args.preset)
    if args.sliding_window:
        sizes["sliding_window"] = args.sliding_window
    if args.vocab_size:
        sizes["vocab_size"] = args.vocab_size
    path = make_checkpoint(args.dir, args.arch, seed=args.seed, dtype=args.dtype, rope_scaling=args.rope_scaling, **sizes)
    print(f"wrote a random-weight {args.arch} checkpoint ({args.preset}) to {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pagebatch.jobs.commands.demo import demo_model, write_demo_input
    from pagebatch.jobs.commands.local_run import run_local
    from pagebatch.jobs.commands.run_journal import JournalError
    from pagebatch.jobs.engine_host import served_name
    from pagebatch.jobs.logs import configure_logging
    from pagebatch.jobs.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.model:
        model = args.model
    else:
        demo = demo_model(settings.cache_dir)
        model = str(demo.path)
        print(f"no --model given: using {demo.description}")
    out = Path(args.out)
    if args.input:
        input_path = Path(args.input)
        if not input_path.is_file():
            print(f"pagebatch run: no such input file: {input_path}", file=sys.stderr)
            return 2
    else:
        input_path = write_demo_input(out / "demo-input.jsonl", served_name(model, args.served_model_name))
        print(f"no input given: wrote a demo batch of 200 requests to {input_path}")
    try:
        report = run_local(settings, input_path, model, out, name=args.served_model_name, endpoint=args.endpoint,
                           options=options_of(args), show_progress=not args.no_progress, resume=args.resume)
    except JournalError as e:
        print(f"pagebatch run: {e}", file=sys.stderr)
        return 2
    batch = report.batch
    if batch.status == "failed":
        for error in batch.errors.data if batch.errors else []:
            print(f"batch failed: {error.code}: {error.message}", file=sys.stderr)
        return 1
    counts, seconds = batch.request_counts, max(report.run_seconds, 1e-9)
    print(f"{counts.total} requests: {counts.completed} completed, {counts.failed} failed; "
          f"{report.generated_tokens} tokens generated in {report.run_seconds:.2f}s "
          f"({counts.total / seconds:.1f} req/s, {report.generated_tokens / seconds:.1f} tok/s; "
          f"model loaded in {report.load_seconds:.2f}s)")
    print(f"results: {out}/output.jsonl, errors.jsonl, usage.jsonl, batch.json")
    if batch.status == "cancelled":
        print(f"interrupted: the finished lines are kept in {out}/journal.jsonl; continue with the same command "
              "and --resume", file=sys.stderr)
    return 0 if batch.status == "completed" else 130


def _cmd_estimate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pagebatch.jobs.commands.estimate import print_estimate, run_estimate
    from pagebatch.jobs.logs import configure_logging
    from pagebatch.jobs.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    path = Path(args.input)
    if not path.is_file():
        print(f"pagebatch estimate: no such input file: {path}", file=sys.stderr)
        return 2
    estimate = run_estimate(settings, path, args.model, name=args.served_model_name, endpoint=args.endpoint)
    if estimate is None:
        return 1
    print_estimate(estimate, as_json=args.json)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    # By import string: nothing under jobs/ imports api/.
    # log_config=None: uvicorn's lines go through our handler (create_app configures it), JSON like ours.
    uvicorn.run("pagebatch.api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False, log_config=None)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from pagebatch.jobs.settings import get_settings
    from pagebatch.jobs.worker.process import run_worker

    return run_worker(get_settings(), args.model, args.served_model_name, args.concurrency, options_of(args))


def _cmd_watch(args: argparse.Namespace) -> int:
    import re
    import signal
    import threading
    from collections import Counter

    from pagebatch.jobs.logs import configure_logging
    from pagebatch.jobs.pipeline.inbox_poll import watch
    from pagebatch.jobs.pipeline.trigger_events import Outcome, TriggerOptions
    from pagebatch.jobs.pipeline.trigger_start import SourceUnavailable
    from pagebatch.jobs.services import Services
    from pagebatch.jobs.settings import get_settings
    from pagebatch.jobs.store.storage import parse_s3_url

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.tenant):
        print("pagebatch watch: --tenant is letters, digits, - or _ (at most 64)", file=sys.stderr)
        return 2
    try:
        parse_s3_url(args.url)
    except ValueError as e:
        print(f"pagebatch watch: {e}", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("pagebatch watch: --interval must be positive", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def report(outcomes: list[Outcome]) -> None:
        counts = Counter(o.status for o in outcomes)
        for o in outcomes:
            if o.status == "started":
                print(f"started {o.batch_id} for s3://{o.bucket}/{o.key}", flush=True)
            elif o.status == "ignored":
                print(f"ignored s3://{o.bucket}/{o.key}: {o.reason}", flush=True)
        if args.once:
            print(f"{counts['started']} started, {counts['duplicate']} already started, {counts['ignored']} ignored")

    options = TriggerOptions(tenant=args.tenant, model=args.model or settings.default_model, endpoint=args.endpoint)
    try:
        watch(Services.from_settings(settings), args.url, options, interval_s=args.interval, once=args.once,
              stop=stop, report=report)
    except SourceUnavailable as e:
        print(f"pagebatch watch: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_standalone(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from pagebatch.jobs.commands.demo import demo_model
    from pagebatch.jobs.commands.standalone import StandaloneError, StandalonePlan, run_standalone
    from pagebatch.jobs.engine_host import served_name
    from pagebatch.jobs.settings import get_settings

    settings = get_settings()
    if args.model:
        model = str(Path(args.model).resolve())
    else:
        demo = demo_model(settings.cache_dir)
        model = str(demo.path)
        print(f"no --model given: serving {demo.description}")
    plan = StandalonePlan(model=model, model_name=served_name(model, args.served_model_name), host=args.host,
                          port=args.port,
                          worker_args=["--concurrency", str(args.concurrency), *argv_of(args)],
                          redis_dir=Path(args.redis_dir).resolve() if args.redis_dir else None,
                          stop_timeout_s=args.stop_timeout)
    try:
        return run_standalone(settings, plan, dict(os.environ))
    except StandaloneError as e:
        print(e, file=sys.stderr)
        return 2


def _cmd_bench(args: argparse.Namespace) -> int:
    from pagebatch.jobs.bench import run_benchmark

    return run_benchmark(args.name, args.options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagebatch", description="Batch inference for large language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    mk = sub.add_parser("make-model", help="write a small random-weight checkpoint (Hugging Face layout) for tests and demos")
    mk.add_argument("dir")
    mk.add_argument("--arch", default="llama", choices=list(MAKE_MODEL_ARCHS))
    mk.add_argument("--preset", default="tiny", choices=["tiny", "small", "bench", "bench-moe"])
    mk.add_argument("--vocab-size", type=int, default=None)
    mk.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    mk.add_argument("--rope-scaling", default=None, choices=["llama3", "longrope"])
    mk.add_argument("--sliding-window", type=int, default=None,
                    help="attention window (Gemma 3: its sliding layers'; Mistral, Qwen2, Phi-3, Mixtral, Qwen3-MoE: all layers')")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_cmd_make_model)

    run = sub.add_parser("run", help="run a batch file in this process (no Redis, no S3) and write the results to a directory")
    run.add_argument("input", nargs="?", help="a JSONL batch file (default: a demo batch)")
    run.add_argument("--model", default=None, help="checkpoint directory or .gguf file (default: a tiny demo model, made on first use)")
    run.add_argument("--out", default="out", help="output directory (default: out)")
    run.add_argument("--endpoint", default=None, choices=list(ENDPOINTS),
                     help="default: the first line's url")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run whose journal --out holds: finished lines are not computed "
                          "again (without a journal there, start afresh)")
    add_engine_flags(run)
    run.set_defaults(func=_cmd_run)

    est = sub.add_parser("estimate", help="validate and tokenize a batch file without running it: lines, errors, "
                                          "prompt / cached / completion tokens, cost and an ETA")
    est.add_argument("input", help="a JSONL batch file")
    est.add_argument("--model", required=True, help="checkpoint directory or .gguf file (only its tokenizer is read)")
    est.add_argument("--served-model-name", default=None,
                     help="the name lines use for the model, and its workers serve it as (default: the checkpoint's)")
    est.add_argument("--endpoint", default=None, choices=list(ENDPOINTS), help="default: the first line's url")
    est.add_argument("--json", action="store_true", help="print the estimate as JSON")
    est.set_defaults(func=_cmd_estimate)

    api = sub.add_parser("api", help="serve the OpenAI-compatible Batch API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.add_argument("--log-level", default="warning")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker that serves one model on one long-lived engine")
    worker.add_argument("--model", required=True, help="checkpoint directory")
    worker.add_argument("--concurrency", type=int, default=4, help="shards worked on at once (default 4)")
    add_engine_flags(worker)
    worker.set_defaults(func=_cmd_worker)

    standalone = sub.add_parser("standalone", help="run Redis (unless PAGEBATCH_REDIS_URL is set), the API and a "
                                                   "worker on this machine; Ctrl-C stops them all")
    standalone.add_argument("--model", default=None,
                            help="checkpoint directory (default: a tiny demo model, made on first use)")
    standalone.add_argument("--host", default="127.0.0.1", help="the API's address (default 127.0.0.1)")
    standalone.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    standalone.add_argument("--concurrency", type=int, default=4, help="shards the worker runs at once (default 4)")
    standalone.add_argument("--redis-dir", default=None,
                            help="keep the embedded Redis' data (AOF) in this directory across restarts "
                                 "(default: a temporary directory, nothing persisted)")
    standalone.add_argument("--stop-timeout", type=float, default=20.0,
                            help="seconds the API and worker get to stop before they are killed (default 20)")
    add_engine_flags(standalone)
    standalone.set_defaults(func=_cmd_standalone)

    watch = sub.add_parser("watch", help="poll s3://bucket/inbox/ and start one batch per new inbox/NAME.jsonl "
                                         "(results also in outbox/NAME/)")
    watch.add_argument("url", help="s3://bucket/prefix/ to list")
    watch.add_argument("--interval", type=float, default=30.0, help="seconds between polls (default 30)")
    watch.add_argument("--once", action="store_true", help="poll once and exit")
    watch.add_argument("--tenant", default="default", help="the tenant that owns the batches (default: default)")
    watch.add_argument("--model", default=None,
                       help="model for lines that name none (default: PAGEBATCH_DEFAULT_MODEL)")
    watch.add_argument("--endpoint", default="/v1/chat/completions",
                       choices=list(ENDPOINTS))
    watch.set_defaults(func=_cmd_watch)

    bench = sub.add_parser("bench", help="benchmarks and machine probes (pagebatch bench NAME --help)",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="\n".join(f"  {name:14} {about}" for name, (_, about) in BENCHMARKS.items()))
    bench.add_argument("name", choices=list(BENCHMARKS))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
