"""EPIC on a serving engine (vLLM): exact entropy-aligned decoding whose model calls all go through
vLLM's public API, in process (``vllm.LLM``) or on an OpenAI-compatible server reached by URL.

    from epic_kernels.serving import OfflineTransport, ServerTransport, EpicServingDecoder
    transport = OfflineTransport.start(path)            # or ServerTransport("http://host:8000/v1")
    dec = EpicServingDecoder(transport, alpha=0.2, horizon=4, rollouts=2, top_k=50, rollout_top_k=50)
    out = dec.generate([prompt_ids], max_new_tokens=64, seed=0)

``import epic_kernels`` does not import this package, and importing this package imports neither
vllm nor openai: the transports import them when they are made. See docs/vllm.md.
"""
from .transport import EngineInfo, Request, Response, Sample, SeedPropertyError, ServingError, Transport

_LAZY = {"EpicServingDecoder": ".decoder", "ServingOutput": ".decoder", "OfflineTransport": ".offline",
         "ServerTransport": ".server", "Refinement": ".evaluator", "rollout_seed": ".evaluator",
         "generate": ".api", "check_seed_properties": ".api", "connect": ".api"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EngineInfo", "Request", "Response", "Sample", "SeedPropertyError", "ServingError", "Transport",
           *_LAZY]
