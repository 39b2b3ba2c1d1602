"""OpenAI request bodies -> engine requests (a prompt and sampling parameters), parsed once per line.

A line is parsed when its file is validated; the parsed request is what a shard stores and runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any

from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.jobs.batch.line_errors import LineError
from pagebatch.jobs.batch.schema import CHAT, COMPLETIONS
from pagebatch.jobs.batch.shard_input import GenerateSpec, SamplingSpec
from pagebatch.jobs.batch.structured_outputs import BODY_KEYS, parse_structured_outputs
from pagebatch.jobs.batch.tools import TOOL_KEYS, Unsupported, assistant_calls, parse_tools, tool_result

__all__ = ["CHAT", "COMPLETIONS", "EngineRequest", "LineError", "MAX_N", "Prompt", "check_parameters",
           "derived_seed", "to_engine_request"]

_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
               "function": "tool"}
# Accepted and ignored: they change nothing about the generated text.
_IGNORED = {"model", "user", "metadata", "store", "service_tier", "stream_options", "prompt_cache_key",
            "safety_identifier"}
_COMMON = {"temperature", "top_p", "seed", "stop", "n", "stream", "max_tokens", "presence_penalty",
           "frequency_penalty", "logit_bias", "top_k", "repetition_penalty", "min_tokens", "ignore_eos",
           } | BODY_KEYS
_CHAT_ONLY = {"messages", "max_completion_tokens", "logprobs", "top_logprobs"} | TOOL_KEYS
_COMPLETION_ONLY = {"prompt", "logprobs", "echo", "best_of", "suffix"}
# OpenAI parameters this server knows but cannot honour: a line that sets one is refused, naming it and why.
_UNSUPPORTED = {
    "audio": "audio output is not supported (text generation only)",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning models are not served here",
    "verbosity": "reasoning models are not served here",
}
MAX_N = 128  # choices per line (prompts x n for a list of completion prompts)


Prompt = str | list[int] | list[dict[str, Any]]


@dataclass
class EngineRequest:
    prompt: Prompt
    params: SamplingParams
    n: int = 1  # choices: one engine request each
    echo: dict[str, Any] | None = None  # request fields the response repeats (the Responses API's)
    # /v1/completions with a list of prompts: all of them (``prompt`` is the first); n choices each, in order
    prompts: list[Prompt] | None = None
    # the calls came from the legacy ``functions``: answered as message.function_call, finish_reason "function_call"
    legacy_functions: bool = False

    def to_spec(self) -> GenerateSpec:
        """The request as a shard stores it (jobs/batch/shard_input.py); fields are copied by name."""
        sampling = _sampling_fields(self.params)
        own = {name: getattr(self, name) for name in _OWN_FIELDS}
        return GenerateSpec(sampling=SamplingSpec(**sampling), **own)

    @classmethod
    def from_spec(cls, spec: GenerateSpec) -> "EngineRequest":
        own = {name: getattr(spec, name) for name in GenerateSpec.model_fields if name not in ("kind", "sampling")}
        return cls(params=SamplingParams(**spec.sampling.model_dump()), **own)

    def calls(self) -> list[tuple[Prompt, SamplingParams]]:
        """The engine requests of the line, in order: each prompt's n choices."""
        return [(prompt, self.choice_params(i)) for prompt in self.prompts or [self.prompt] for i in range(self.n)]

    def choice_params(self, index: int) -> SamplingParams:
        """The parameters of choice ``index``: with a seed, each choice gets its own seed derived from it (choice 0
        keeps it), so the choices differ and a rerun reproduces every one of them."""
        if index == 0 or self.params.seed is None:
            return self.params
        return replace(self.params, seed=derived_seed(self.params.seed, index))


_OWN_FIELDS = tuple(f.name for f in fields(EngineRequest) if f.name != "params")
_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))


def _sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """SamplingParams as SamplingSpec's keyword arguments: a nested dataclass (the GrammarSpec in ``structured``,
    the ToolCalling in ``tools``) becomes its dict; other values are passed as they are, since SamplingSpec copies
    them (``asdict`` would deep-copy every prompt-sized list first, the largest cost of writing a shard)."""
    unknown = set(_SAMPLING_FIELDS) - set(SamplingSpec.model_fields)
    if unknown:
        raise TypeError(f"SamplingSpec lacks SamplingParams fields {sorted(unknown)}: add them to the shard schema")
    values = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(params, name)
        values[name] = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    return values


def check_parameters(body: dict[str, Any], allowed: set[str], unsupported: dict[str, str],
                     unset: tuple[Any, ...] = (None,)) -> None:
    """LineError naming the first parameter the server refuses (``unsupported``: name -> why; a value in ``unset``
    asks for nothing and passes), else the first one it does not know (neither allowed nor unsupported)."""
    refused = sorted(k for k in body if k in unsupported and not any(body[k] is u or body[k] == u for u in unset))
    if refused:
        name = refused[0]
        raise LineError(f"{name} is not supported by this server: {unsupported[name]}", "unsupported_parameter", name)
    unknown = sorted(set(body) - allowed - set(unsupported))
    if unknown:
        raise LineError(f"Unrecognized request argument supplied: {unknown[0]}", "invalid_parameter", unknown[0])


def derived_seed(seed: int, index: int) -> int:
    """A distinct int64 seed per index (an odd-multiplier step mod 2**64 is a bijection of the index)."""
    value = (seed + index * 0x9E3779B97F4A7C15) % 2**64
    return value - 2**64 if value >= 2**63 else value


def to_engine_request(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> EngineRequest:
    allowed = _IGNORED | _COMMON | (_CHAT_ONLY if endpoint == CHAT else _COMPLETION_ONLY)
    check_parameters(body, allowed, _UNSUPPORTED)
    n = body.get("n")
    n = 1 if n is None else n
    _require(_is_int(n) and 1 <= n <= MAX_N, f"n must be an integer in [1, {MAX_N}], got {str(n)[:40]}", "n")
    _require(body.get("stream", False) in (False, None), "stream is not supported in batches", "stream",
             "unsupported_parameter")

    prompts = None
    calling, legacy = None, False
    if endpoint == CHAT:
        prompt: Any = _chat_messages(body.get("messages"))
        try:
            calling, legacy = parse_tools(body)
        except ValueError as e:
            code = "unsupported_parameter" if isinstance(e, Unsupported) else "invalid_parameter"
            raise LineError(str(e), code, _param_named_in(str(e))) from None
        max_tokens = body.get("max_completion_tokens")
        max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
        logprobs = None
        if body.get("logprobs"):
            _require(body["logprobs"] is True, "logprobs must be a boolean", "logprobs")
            logprobs = body.get("top_logprobs") or 0
        else:
            _require(body.get("top_logprobs") is None, "top_logprobs requires logprobs to be true", "top_logprobs")
        explicit_max = max_tokens is not None
        if max_tokens is None:
            max_tokens = default_max_tokens
    else:
        prompts = _completion_prompts(body.get("prompt"))
        prompt = prompts[0]
        prompts = prompts if len(prompts) > 1 else None
        _require(len(prompts or [prompt]) * n <= MAX_N, f"prompts x n must be at most {MAX_N} choices per line, got "
                 f"{len(prompts or [prompt])} x {n}; split the prompts over several lines", "prompt")
        _require(not body.get("echo"), "echo is not supported", "echo", "unsupported_parameter")
        _require(body.get("best_of") in (None, 1, n), "best_of other than 1 or n is not supported (no ranking of "
                 "candidates)", "best_of")
        _require(body.get("suffix") is None, "suffix is not supported", "suffix", "unsupported_parameter")
        logprobs = body.get("logprobs")
        _require(logprobs is None or (_is_int(logprobs) and 0 <= logprobs <= 5), "logprobs must be an integer in [0, 5]",
                 "logprobs")
        explicit_max = body.get("max_tokens") is not None
        max_tokens = body["max_tokens"] if explicit_max else 16

    try:
        constraint = parse_structured_outputs(body)
    except ValueError as e:
        raise LineError(str(e), "invalid_parameter", _param_named_in(str(e))) from None
    choices = constraint.choices if constraint is not None and constraint.kind == "choice" else None
    structured = constraint if constraint is not None and constraint.kind != "choice" else None
    # A label is the whole answer: the engine ends it at the label's last token, so stop strings have no say.
    stop = [] if choices else body.get("stop") or []
    params = SamplingParams(
        temperature=_number(body, "temperature", 1.0),
        top_p=_number(body, "top_p", 1.0),
        top_k=body.get("top_k", 0) if body.get("top_k") is not None else 0,
        seed=body.get("seed"),
        max_tokens=max_tokens,
        stop=[stop] if isinstance(stop, str) else stop,
        ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=logprobs,
        choices=choices,
        structured=structured,
        presence_penalty=_number(body, "presence_penalty", 0.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0),
        logit_bias=_logit_bias(body.get("logit_bias")),
        min_tokens=_number(body, "min_tokens", 0),
        # OpenAI refuses a max_tokens the context cannot hold; a default one is capped by the context instead
        reject_over_context=explicit_max,
        tools=calling,
    )
    try:
        params.validate()
    except ValueError as e:
        raise LineError(str(e), "invalid_parameter", _param_named_in(str(e))) from None
    return EngineRequest(prompt, params, n, prompts=prompts, legacy_functions=legacy)


def _logit_bias(value: Any) -> dict[int, Any] | None:
    """OpenAI sends ``{"50256": -100}``: token ids as strings (ints are taken too); the engine checks the ranges."""
    if value is None or value == {}:
        return None
    _require(isinstance(value, dict), "logit_bias must be an object mapping token ids to numbers in [-100, 100]",
             "logit_bias")
    out = {}
    for key, bias in value.items():
        if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 12:
            key = int(key)
        _require(_is_int(key), f"logit_bias keys must be token ids (integers, as strings), got {str(key)[:40]!r}",
                 "logit_bias")
        out[key] = bias
    return out


def _require(ok: bool, message: str, param: str, code: str = "invalid_parameter") -> None:
    if not ok:
        raise LineError(message, code, param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float) -> Any:
    value = body.get(name)
    return default if value is None else value


def _param_named_in(message: str) -> str | None:
    first = message.split(" ", 1)[0].rstrip(":,").split("[", 1)[0].split(".", 1)[0]
    return first if first.isidentifier() else None


def _chat_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise LineError("messages is required for /v1/chat/completions", "missing_messages", "messages")
    if not isinstance(messages, list) or not messages:
        raise LineError("messages must be a non-empty list", "invalid_parameter", "messages")
    out: list[dict[str, Any]] = []
    calls_by_id: dict[str, str] = {}  # tool_call_id -> function name, for the tool turns that answer them
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _CHAT_ROLES:
            raise LineError(f"messages[{i}] needs a role in {sorted(_CHAT_ROLES)}", "invalid_parameter", "messages")
        try:
            calls = assistant_calls(i, message) if message["role"] == "assistant" else []
        except ValueError as e:
            raise LineError(str(e).split(": ", 1)[1], "invalid_parameter", "messages") from None
        content = message.get("content")
        if content is None and calls:
            content = ""
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text" and isinstance(kind, str) and kind:
                    raise LineError(f"messages[{i}].content: {kind[:40]} parts are not supported; only text parts are",
                                    "unsupported_parameter", "messages")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise LineError(f"messages[{i}].content: each part must be {{\"type\": \"text\", \"text\": ...}}",
                                    "invalid_parameter", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise LineError(f"messages[{i}].content must be a string", "invalid_parameter", "messages")
        if _CHAT_ROLES[message["role"]] == "tool":
            try:
                out.append(tool_result(i, message, content, calls_by_id))
            except ValueError as e:
                raise LineError(str(e).split(": ", 1)[1], "invalid_parameter", "messages") from None
            continue
        turn: dict[str, Any] = {"role": _CHAT_ROLES[message["role"]], "content": content}
        if calls:
            turn["tool_calls"] = calls
            calls_by_id.update((c["id"], c["function"]["name"]) for c in calls)
        out.append(turn)
    return out


def _completion_prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's four forms: a string, a list of token ids, a list of strings, a list of token-id lists."""
    if prompt is None:
        raise LineError("prompt is required for /v1/completions", "missing_prompt", "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return [_one_prompt(p) for p in prompt]
    return [_one_prompt(prompt)]


def _one_prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        return prompt
    raise LineError("prompt must be a non-empty string, a list of token ids, or a list of either",
                    "invalid_parameter", "prompt")
