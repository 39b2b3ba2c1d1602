"""`pagebatch` command line: the composition root of the project."""
from __future__ import annotations

import argparse
import sys


def _cmd_make_model(args: argparse.Namespace) -> int:
    from engine.make_model import make_checkpoint, sizes_for

    sizes = sizes_for(args.preset)
    if args.vocab_size:
        sizes["vocab_size"] = args.vocab_size
    path = make_checkpoint(args.dir, args.arch, seed=args.seed, dtype=args.dtype, rope_scaling=args.rope_scaling, **sizes)
    print(f"wrote a random-weight {args.arch} checkpoint ({args.preset}) to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagebatch", description="Batch inference for large language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    mk = sub.add_parser("make-model", help="write a small random-weight checkpoint (Hugging Face layout) for tests and demos")
    mk.add_argument("dir")
    mk.add_argument("--arch", default="llama", choices=["llama", "mistral", "qwen2", "qwen3"])
    mk.add_argument("--preset", default="tiny", choices=["tiny", "small", "bench"])
    mk.add_argument("--vocab-size", type=int, default=None)
    mk.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    mk.add_argument("--rope-scaling", default=None, choices=["llama3"])
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_cmd_make_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
