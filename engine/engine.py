"""LLMEngine: requests in, one scheduled forward pass per step, finished outputs out."""
from __future__ import annotations

import itertools
import random
import time

import structlog
import torch

from engine.choices import ChoiceState, ChoiceTrie
from engine.config import DTYPES, EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.inputs import Prompt, PromptProcessor, RequestRejected
from engine.kv_cache import BlockManager
from engine.models import ModelSpec, load_hf_config, load_model, resolve_checkpoint
from engine.outputs import FinishReason, RequestOutput, TokenLogprob, TopLogprob
from engine.request import Request
from engine.runner import ModelRunner, allocate_kv_cache, kv_block_bytes
from engine.sampler import sample
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.stats import EngineStats, RateMeter

log = structlog.get_logger("pagebatch.engine")

CPU_KV_CACHE_BYTES = 512 * 2**20


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoTokenizer

        self.config = config
        path = resolve_checkpoint(config.model)
        self.model_name = config.served_model_name or path.name
        hf_config = load_hf_config(path)
        self.spec = ModelSpec.from_hf_config(hf_config)
        self.device = config.resolve_device()
        self.dtype = self._resolve_dtype()
        self.max_model_len = min(config.max_model_len or self.spec.max_position_embeddings, self.spec.max_position_embeddings)
        if self.spec.sliding_window:
            self.max_model_len = min(self.max_model_len, self.spec.sliding_window)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = load_model(path, self.spec, self.dtype, self.device, self.max_model_len)
        self.num_blocks = self._num_blocks()
        self.blocks = BlockManager(self.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        # One block beyond the managed pool: the scratch block padded CUDA-graph rows write to.
        kv = allocate_kv_cache(self.spec, self.num_blocks + 1, config.block_size, self.dtype, self.device)
        self.runner = ModelRunner(self.model, kv, config.block_size)
        if config.enable_cuda_graphs and self.device.type == "cuda" and self.model.ops.__name__.endswith("triton_ops"):
            try:
                self.runner.use_decode_graphs(config.max_num_seqs, self.max_model_len, scratch_block=self.num_blocks)
            except RuntimeError as exc:  # a driver or capture problem costs speed, not service
                self.runner.decode_graphs = None
                log.warning("CUDA graph capture failed; decode steps run eagerly", error=str(exc))
        self.prompts = PromptProcessor(self.tokenizer, self.spec.vocab_size, self.max_model_len)
        self.eos_token_ids = self._eos_ids(hf_config)
        self.requests: dict[str, Request] = {}
        self._finished: list[RequestOutput] = []
        self._tries: dict[tuple[str, ...], ChoiceTrie] = {}
        self._ids = itertools.count()
        self._rng = random.Random(config.seed)
        self._prompt_meter, self._gen_meter = RateMeter(), RateMeter()
        self._cached_tokens_total = 0
        self._steps = 0
        self._slot_utilization_sum = 0.0
        log.info("engine ready", model=self.model_name, arch=self.spec.architecture, device=str(self.device),
                 dtype=str(self.dtype), kv_blocks=self.num_blocks, block_size=config.block_size, max_model_len=self.max_model_len)

    # -- setup ---------------------------------------------------------------------------------------
    def _resolve_dtype(self) -> torch.dtype:
        if self.config.dtype != "auto":
            return DTYPES[self.config.dtype]
        name = self.spec.torch_dtype or "float32"
        if self.device.type == "cpu" or name not in DTYPES:
            return torch.float32
        return DTYPES[name]

    def _num_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        per_block = kv_block_bytes(self.spec, self.config.block_size, self.dtype)
        budget = self.config.kv_cache_memory
        if budget is None and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = int(free - total * (1 - self.config.gpu_memory_utilization))
        elif budget is None:
            needed = self.config.max_num_seqs * self.max_model_len * per_block // self.config.block_size
            budget = min(CPU_KV_CACHE_BYTES, needed)
        blocks = budget // per_block
        if blocks < 1:
            raise ValueError(f"the KV cache budget of {budget} bytes holds no block of {per_block} bytes; raise kv_cache_memory")
        return int(blocks)

    def _eos_ids(self, hf_config) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(hf_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(source)
        return ids

    # -- requests ------------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request. A bad request never raises: it finishes at the next step with finish_reason 'error'."""
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        ids: list[int] = []
        try:
            if request_id in self.requests:
                raise ValueError(f"request id {request_id!r} is already in use")
            ids = self.prompts.token_ids(prompt)
            params.validate(self.spec.vocab_size)
            req = Request(request_id, ids, params)
            self._check_fits(req)
            self._prepare(req)
        except ValueError as exc:  # RequestRejected, or SamplingParams.validate's ValueError
            req = Request(request_id, ids, params)
            self._finished.append(self._output(req, "error", str(exc), getattr(exc, "code", "invalid_request")))
            log.info("request rejected", request_id=request_id, error=str(exc))
            return request_id
        self.requests[request_id] = req
        self.scheduler.add(req)
        return request_id

    def _check_fits(self, req: Request) -> None:
        longest = min(req.num_prompt_tokens + req.params.max_tokens, self.max_model_len)
        if self.blocks.blocks_for(longest) > self.num_blocks:
            raise RequestRejected(
                f"the request needs up to {longest} tokens of KV cache but the whole pool holds "
                f"{self.num_blocks * self.config.block_size}; lower max_tokens or shorten the prompt",
                code="request_too_large",
            )

    def _prepare(self, req: Request) -> None:
        p = req.params
        seed = p.seed if p.seed is not None else self._rng.getrandbits(63)
        if not p.greedy:
            req.generator = torch.Generator(device=self.device).manual_seed(seed)
        if p.stop and p.choices is None:  # a label ends at its last token; stop strings do not apply
            req.detokenizer = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, p.stop, p.skip_special_tokens)
        if p.choices is not None:
            if not self.eos_token_ids:
                raise ValueError("choices need a model with an end-of-sequence token")
            req.choice_state = ChoiceState(self._choice_trie(tuple(p.choices)), min(self.eos_token_ids))

    def _choice_trie(self, choices: tuple[str, ...]) -> ChoiceTrie:
        """Labeling jobs repeat one label set on every line: tokenize it once."""
        trie = self._tries.get(choices)
        if trie is None:
            if len(self._tries) >= 256:
                self._tries.clear()
            trie = self._tries[choices] = ChoiceTrie([self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices])
        return trie

    def abort_request(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req)
        return self._output(req, "abort")

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests or self._finished)

    # -- stepping ------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one forward pass over the scheduled batch; returns the requests that finished."""
        finished, self._finished = self._finished, []
        batch = self.scheduler.schedule()
        if not batch:
            return finished
        now = time.time()
        for req in batch.requests:
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = now
                self._cached_tokens_total += req.num_cached_tokens or 0
        self._record_utilization()
        decodes = sum(1 for r, n in zip(batch.requests, batch.num_new_tokens) if n == 1 and r.num_computed_tokens >= r.num_prompt_tokens)
        self._prompt_meter.add(batch.total_tokens - decodes)
        logits, sampled = self.runner.execute(batch)
        for req, n in zip(batch.requests, batch.num_new_tokens):
            req.num_computed_tokens += n
            self.blocks.commit(req)
        if sampled:
            allowed = [r.choice_state.allowed() if r.choice_state else None for r in sampled]
            result = sample(logits, sampled, allowed if any(a is not None for a in allowed) else None)
            self._gen_meter.add(len(sampled))
            for req, token, lp in zip(sampled, result.token_ids, result.logprobs):
                reason = self._append_token(req, token, lp)
                if reason is not None:
                    self.requests.pop(req.request_id, None)
                    self.scheduler.finish(req)
                    finished.append(self._output(req, reason))
        self._steps += 1
        return finished

    def _append_token(self, req: Request, token: int, lp) -> FinishReason | None:
        req.token_ids.append(token)
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = time.time()
        if lp is not None:
            req.logprobs.append(TokenLogprob(token, self._piece(token), lp[0], [TopLogprob(t, self._piece(t), v) for t, v in lp[1]]))
        p = req.params
        if req.choice_state is not None:
            return "stop" if req.choice_state.advance(token) else None
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            return "stop"
        if req.detokenizer is not None and req.detokenizer.add(token) is not None:
            return "stop"
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _output(self, req: Request, reason: FinishReason, error: str | None = None, error_code: str | None = None) -> RequestOutput:
        req.metrics.finished_time = time.time()
        if req.detokenizer is not None:
            text = req.detokenizer.text
        else:
            text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=req.params.skip_special_tokens)
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            token_ids=req.output_token_ids,
            text=text,
            finish_reason=reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens or 0,
            logprobs=req.logprobs,
            error=error,
            error_code=error_code,
            metrics=req.metrics,
        )

    # -- stats ---------------------------------------------------------------------------------------
    def _record_utilization(self) -> None:
        live = self.scheduler.running
        allocated = sum(len(r.block_table) for r in live) * self.config.block_size
        if allocated:
            self._slot_utilization_sum += sum(min(r.num_tokens, len(r.block_table) * self.config.block_size) for r in live) / allocated

    def stats(self) -> EngineStats:
        cached = self.blocks.num_cached_free_blocks
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.num_blocks,
            kv_blocks_used=self.blocks.num_used_blocks,
            kv_blocks_cached=cached,
            kv_blocks_free=self.blocks.num_free_blocks - cached,
            prompt_tokens_total=self._prompt_meter.total,
            generation_tokens_total=self._gen_meter.total,
            cached_prompt_tokens_total=self._cached_tokens_total,
            prompt_tokens_per_s=self._prompt_meter.rate(),
            generation_tokens_per_s=self._gen_meter.rate(),
            num_preemptions=self.scheduler.num_preemptions,
            num_steps=self._steps,
            kv_slot_utilization=self._slot_utilization_sum / self._steps if self._steps else 0.0,
        )
