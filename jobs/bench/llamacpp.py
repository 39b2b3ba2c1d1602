"""llama.cpp's llama-server as one more system in jobs/bench/engine.py (--llama-cpp DIR).

DIR holds bin/llama-server and bin/llama-quantize (``bash scripts/build_llamacpp.sh`` builds them for this CPU).
The server runs the same weights as pagebatch: the workload's GGUF file requantized (dequantized) by
llama-quantize to the benchmark's dtype (F32 or BF16; cached beside the source file), one slot per request,
continuous batching, the same thread count, no prompt cache (a caller may
choose fewer slots and other request fields: the labeling workload turns the prompt cache on and sends a grammar). Requests go to ``/completion`` as token ids (the
same prompts, no BOS added), greedy, ``n_predict`` = the request's max_tokens, EOS on or off as the workload
says, all at once from one thread each. Output tokens count each request's generated ids plus its EOS when it
stopped on one (as pagebatch's token_ids do).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pagebatch.jobs.bench.service import free_port
from pagebatch.jobs.bench.workloads import Run, Workload
from pagebatch.engine.models.gguf import MARKER

GGUF_TYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def source_gguf(model_dir: str) -> Path:
    """The .gguf file a converted checkpoint directory came from (engine.models.gguf records it)."""
    meta = Path(model_dir) / MARKER
    if not meta.exists():
        raise SystemExit(f"--llama-cpp needs a GGUF model: {model_dir} was not converted from one "
                         f"(use --workload summarize, or --model path/to/file.gguf)")
    return Path(json.loads(meta.read_text())["source"])


def typed_gguf(bin_dir: Path, source: Path, dtype: str) -> Path:
    """``source`` requantized to ``dtype`` by llama-quantize, made once and kept beside it."""
    kind = GGUF_TYPES[dtype]
    out = source.with_name(f"{source.stem}.{kind}.gguf")
    if not out.exists():
        tmp = out.with_suffix(".partial")
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(tmp), kind],
                       check=True, capture_output=True)
        tmp.rename(out)
    return out


def _first_eos(model_dir: str) -> int:
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    return eos if isinstance(eos, int) else eos[0]


def _post(url: str, body: dict, timeout: float = 3600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class LlamaServer:
    """One llama-server process serving ``gguf`` on a free 127.0.0.1 port, sized for ``w``."""

    def __init__(self, llama_dir: str, w: Workload, dtype: str, threads: int, kv_type: str = "f16",
                 slots: int | None = None, request_options: dict | None = None) -> None:
        """``slots``: parallel slots (default one per request); ``request_options``: /completion fields that
        override the defaults (e.g. ``cache_prompt``, ``grammar``)."""
        bin_dir = Path(llama_dir) / "bin"
        self.gguf = typed_gguf(bin_dir, source_gguf(w.model), dtype)
        self.kv_type = kv_type
        self.w = w
        self.eos = _first_eos(w.model)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.slots = slots = slots or len(w.prompts)
        self.request_options = request_options or {}
        per_slot = max(len(p) + n for p, n in zip(w.prompts, w.max_tokens)) + 16
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(bin_dir / "llama-server"), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
             "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(slots * per_slot), "-no-kvu",
             "-cb", "-cram", "0", "-ctk", kv_type, "-ctv", kv_type, "-b", "2048", "-ub", "512", "--no-webui"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {self.proc.returncode}; its log: {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"llama-server did not become ready in {timeout:.0f} s; its log: {self.log.name}")

    def _complete(self, prompt: list[int], max_tokens: int) -> list[int]:
        out = _post(self.url + "/completion", {
            "prompt": prompt, "n_predict": max_tokens, "temperature": 0, "top_k": 1, "cache_prompt": False,
            "ignore_eos": self.w.ignore_eos, "return_tokens": True, "samplers": ["top_k"],
        } | self.request_options)
        tokens = list(out["tokens"])
        if out.get("stop_type") == "eos" and len(tokens) < max_tokens:
            tokens.append(self.eos)  # the EOS it stopped on (not returned): counted, as pagebatch counts its EOS
        return tokens

    def run(self) -> Run:
        w = self.w
        self._complete(w.prompts[0][:8], 4)  # warm-up
        with ThreadPoolExecutor(max_workers=min(len(w.prompts), 2 * self.slots)) as pool:
            t = time.perf_counter()
            rows = list(pool.map(self._complete, w.prompts, w.max_tokens))
            elapsed = time.perf_counter() - t
        return Run(elapsed, rows)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
