"""LLMEngine: requests in, one scheduled forward pass per step, finished outputs out.

Who owns what: the request builder turns a prompt into a ready Request; the scheduler owns
request progress and the KV block manager; the runner owns the KV tensors and CUDA graphs; the
sampler turns logits into tokens; the output builder turns a finished request into its output.
A step is schedule -> execute -> sample (and pool) -> scheduler.update, and a request that makes the
forward pass or sampling raise fails alone (engine.isolation). Embedding requests (PoolingParams) share
the steps of generation requests; they are prefilled, pooled and finished, never sampled (engine.pooling).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import structlog

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.config import EngineConfig
from pagebatch.engine.dtypes import bf16_emulated, resolve_dtype
from pagebatch.engine.inputs import Prompt, RequestRejected
from pagebatch.engine.isolation import execute_isolating, sample_isolating
from pagebatch.engine.models import ModelSpec, load_hf_config, load_model, resolve_checkpoint
from pagebatch.engine.models.pooling_config import read_pooling
from pagebatch.engine.output_builder import OutputBuilder
from pagebatch.engine.outputs import RequestOutput
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.request import Request
from pagebatch.engine.request_builder import RequestBuilder, RequestPlan
from pagebatch.engine.runner import ModelRunner, plan_num_kv_blocks
from pagebatch.engine.sampler import sample
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.scheduler import FinishedRequest, Scheduler
from pagebatch.engine.serving_path import ServingPath, checked_kernels, describe
from pagebatch.engine.stats import EngineStats, StatsRecorder
from pagebatch.kernels.dispatch import select_backend

log = structlog.get_logger("pagebatch.engine")


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoTokenizer

        self.config = config
        path = resolve_checkpoint(config.model)
        self.model_name = config.served_model_name or path.name
        hf_config = load_hf_config(path)
        self.spec = ModelSpec.from_hf_config(hf_config)
        self.device = config.resolve_device()
        self.dtype = resolve_dtype(config.dtype, self.spec.torch_dtype, self.device)
        if bf16_emulated(self.dtype, self.device):
            log.warning("bfloat16 on a CPU without AVX512-BF16 or AMX: torch emulates its matmuls, several times "
                        "slower than float32; dtype='auto' (--dtype auto) picks float32 here", dtype=config.dtype)
        self.max_model_len = _max_model_len(config, self.spec)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = load_model(path, self.spec, self.dtype, self.device, self.max_model_len)
        backend, self.kernel_checks = select_backend(config.kernels, self.device.type), []
        if config.kernel_self_check:
            backend, self.kernel_checks = checked_kernels(self.model, backend, config.block_size)
        self.model.use_kernels(backend)
        self.num_blocks = plan_num_kv_blocks(config, self.spec, self.dtype, self.device, self.max_model_len)
        self.runner = ModelRunner(self.model, self.num_blocks, config.block_size, config.commit_kv_pool)
        generates = self.model.lm_head is not None  # a base model serves embeddings only
        if config.enable_cuda_graphs and generates:
            self.runner.enable_decode_graphs(config.max_num_seqs, self.max_model_len, check=config.kernel_self_check)
        self.eos_token_ids = _eos_token_ids(hf_config, self.tokenizer)
        self.scheduler = Scheduler(
            BlockManager(self.num_blocks, config.block_size, config.enable_prefix_caching,
                         salt=lambda req: self.model.prefix_salt(req.num_prompt_tokens)),
            config.max_num_seqs, config.max_num_batched_tokens, self.eos_token_ids, self.max_model_len,
        )
        self.pooling = read_pooling(path, hf_config)
        self.builder = RequestBuilder(self.tokenizer, self.spec.vocab_size, self.max_model_len, self.num_blocks,
                                      config.block_size, self.eos_token_ids, self.device, config.seed,
                                      pooling=self.pooling, generates=generates)
        self.outputs = OutputBuilder(self.tokenizer)
        self.sampler = sample
        self._finished: list[RequestOutput] = []  # rejected requests, returned by the next step
        self._ids = itertools.count()
        self._stats = StatsRecorder(config.block_size)
        path_now = self.serving_path()
        log.info("engine ready", model=self.model_name, arch=self.spec.architecture, device=str(self.device),
                 dtype=str(self.dtype), kernels=self.model.kernels.name, kv_blocks=self.num_blocks,
                 block_size=config.block_size, max_model_len=self.max_model_len, cuda_graphs=path_now.cuda_graphs,
                 kernel_fallbacks=path_now.fallbacks)

    @property
    def requests(self) -> dict[str, Request]:
        """The unfinished requests by id (the scheduler's; read only)."""
        return self.scheduler.requests

    @property
    def blocks(self) -> BlockManager:
        """The KV block pool (the scheduler's; read only)."""
        return self.scheduler.blocks

    # -- requests ------------------------------------------------------------------------------------
    def add_request(
        self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request (PoolingParams: an embedding). A bad request never raises: it finishes at the next step
        with finish_reason 'error'."""
        return self.admit(self.prepare_request(prompt, params, request_id))

    def prepare_request(
        self, prompt: Prompt | None, params: SamplingParams | PoolingParams | None = None,
        request_id: str | None = None, token_ids: list[int] | None = None,
    ) -> Request | RequestOutput:
        """Validate, template and tokenize a request; its error output if it cannot run. Never raises, and is
        thread-safe: run it on any thread, then ``admit`` the result on the engine's thread. ``token_ids``: the
        prompt as ``RequestBuilder.tokenize`` made it already (the engine-core process's requests)."""
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        params = params if params is not None else SamplingParams()
        return prepared_or_rejected(lambda: self.builder.build(request_id, prompt, params, token_ids), self.outputs,
                                    request_id, params)

    def admit(self, prepared: Request | RequestOutput) -> str:
        """Hand a prepared request to the scheduler (a rejection's output is returned by the next step)."""
        if isinstance(prepared, Request) and prepared.request_id in self.scheduler.requests:
            error = f"request id {prepared.request_id!r} is already in use"
            prepared = self.outputs.rejected(prepared.request_id, error, "invalid_request", prepared.prompt_token_ids)
        if isinstance(prepared, RequestOutput):
            self._finished.append(prepared)
        else:
            self.scheduler.add(prepared)
        return prepared.request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        done = self.scheduler.abort(request_id)
        return None if done is None else self._output(done)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work() or bool(self._finished)

    # -- stepping ------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one forward pass over the scheduled batch; returns the requests that finished."""
        finished, self._finished = self._finished, []
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch:
            return finished
        self._stats.record_step(batch, self.scheduler.running)
        rows, out, failed = execute_isolating(self.runner.execute, batch)
        for request_id, hidden in out.pooled.items():
            if request_id not in failed:
                self.scheduler.requests[request_id].pooling.add(hidden)
        sampled = {}
        if rows:
            sampled, sample_failed = sample_isolating(self.sampler, out.logits, rows)
            failed.update(sample_failed)
        self._stats.record_generated(len(sampled))
        finished += [self._output(done) for done in self.scheduler.update(batch, sampled, failed)]
        self._stats.record_step_time(batch, len(sampled), time.perf_counter() - started)
        return finished

    def _output(self, done: FinishedRequest) -> RequestOutput:
        try:
            return self.outputs.finished(done)
        except Exception as exc:  # noqa: BLE001 - e.g. a token the tokenizer cannot decode
            log.exception("could not build a request's output", request_id=done.request.request_id)
            error = f"internal engine error: the output could not be built ({type(exc).__name__}: {str(exc)[:200]})"
            return self.outputs.rejected(done.request.request_id, error, "engine_error", done.request.prompt_token_ids,
                                         arrival_time=done.request.metrics.arrival_time)

    def stats(self) -> EngineStats:
        return self._stats.snapshot(self.scheduler)

    def plan_request(self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None) -> RequestPlan:
        """The token ids a request's prompt would run with (chat template, tokenizer, every check a submitted
        request gets) and the most tokens it may generate; raises RequestRejected for a request the engine would
        refuse. Thread-safe; nothing runs."""
        return self.builder.plan(prompt, params if params is not None else SamplingParams())

    def serving_path(self) -> ServingPath:
        """Which implementation serves each op, whether decode steps replay CUDA graphs, and the self-check's results."""
        return describe(self.model, self.runner.graphs_state, self.runner.graphs_detail, self.kernel_checks)


def prepared_or_rejected(prepare: Callable[[], Any], outputs: OutputBuilder, request_id: str,
                         params: SamplingParams | PoolingParams) -> Any:
    """What ``prepare`` returns, or the request's error output: a RequestRejected says why in the user's terms,
    anything else a request makes raise becomes an engine error of that request alone."""
    try:
        return prepare()
    except RequestRejected as exc:
        error, code, ids = str(exc), exc.code, exc.prompt_token_ids
    except Exception as exc:  # noqa: BLE001 - whatever a request makes raise fails that request alone
        log.exception("could not prepare a request", request_id=request_id)
        error = f"the engine could not prepare this request ({type(exc).__name__}: {str(exc)[:200]})"
        code, ids = "engine_error", []
    log.info("request rejected", request_id=request_id, error=error[:200])
    wants_logprobs = getattr(params, "logprobs", None) is not None
    return outputs.rejected(request_id, error, code, ids, wants_logprobs)


def _max_model_len(config: EngineConfig, spec: ModelSpec) -> int:
    length = min(config.max_model_len or spec.max_position_embeddings, spec.max_position_embeddings)
    return min(length, spec.sliding_window) if spec.sliding_window else length


def _eos_token_ids(hf_config, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    return ids
