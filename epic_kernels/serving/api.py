"""Entry points: ``generate`` (prompts in; tokens, texts and per-step statistics out) and
``check_seed_properties`` (the two properties of the engine's seeded sampler exact EPIC relies on,
verified on the engine itself rather than assumed)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import defaults
from .evaluator import rollout_seed
from .transport import Request, SeedPropertyError, ServingError


def connect(target, **engine_kwargs):
    """A transport for ``target``: a transport (as is), a ``vllm.LLM``, an ``http(s)://`` URL of a
    server, or a model path / name to start an in-process engine on."""
    if hasattr(target, "generate") and hasattr(target, "info"):
        return target
    if isinstance(target, str) and target.startswith(("http://", "https://")):
        from .server import ServerTransport

        return ServerTransport(target)
    from .offline import OfflineTransport

    if hasattr(target, "llm_engine"):
        return OfflineTransport(target)
    return OfflineTransport.start(target, **engine_kwargs)


def generate(target, prompts, *, max_new_tokens: int = 64, alpha: float = defaults.ALPHA,
             horizon: int = defaults.HORIZON, rollouts: int = defaults.ROLLOUTS, top_k: int | None = defaults.TOP_K,
             rollout_top_k: int | None = defaults.ROLLOUT_TOP_K, block_size: int = defaults.BLOCK_SIZE,
             seed=0, eos_token_id="default", refine: str = "eager", trace: bool = False, progress=None):
    """EPIC-decode ``prompts`` (token-id lists, or strings, encoded with the engine's tokenizer)
    on ``target`` (see ``connect``). Returns a ``ServingOutput``."""
    from .decoder import EpicServingDecoder

    transport = connect(target)
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        prompts = [list(transport.info.tokenizer(t)["input_ids"]) for t in prompts]
    dec = EpicServingDecoder(transport, alpha=alpha, horizon=horizon, rollouts=rollouts, top_k=top_k,
                             rollout_top_k=rollout_top_k, block_size=block_size, refine=refine)
    return dec.generate(prompts, max_new_tokens=max_new_tokens, seed=seed, eos_token_id=eos_token_id,
                        trace=trace, progress=progress)


@dataclass
class SeedReport:
    replay_checked: int          # (prompt, rollout) pairs whose depth-h tokens were compared
    replay_broken: int
    shared_same_seed: float      # first-rollout-token agreement of the two prompts, same seed
    shared_other_seed: float     # ... with independent seeds (the baseline)


def check_seed_properties(transport, prompts, *, rollouts: int = 2, rollout_top_k: int = 50, short: int = 2,
                          long: int = 4, seeds=range(24), raise_on_failure: bool = True) -> SeedReport:
    """Verify on the engine what the decoder assumes of its seeded sampler:

    1. *replay*: a request through depth ``long`` with the seed of a request through depth ``short``
       starts with that request's tokens, for every prompt and rollout;
    2. *shared random numbers*: the seed alone (not the prompt) decides the random numbers, so two
       prompts whose next-token distributions are alike draw the same first rollout token more often
       with one seed than with independent seeds (a coupling only shared noise produces). The
       decoder gives every candidate of a step one seed, so candidates share random numbers.

    ``prompts``: at least two token-id prompts (a prefix plus a candidate each); sharing is measured
    between the first two. Raises ``SeedPropertyError`` if either fails (``raise_on_failure``).
    """
    if len(prompts) < 2:
        raise ServingError("check_seed_properties needs at least two prompts")
    L = rollout_top_k
    reqs, keys = [], []
    for seed in seeds:
        s = rollout_seed(int(seed), 0)
        for i, p in enumerate(prompts):
            for depth in (short, long):
                reqs.append(Request(tuple(p), depth, L, n=rollouts, seed=s, top_k=rollout_top_k))
                keys.append((seed, i, depth))
        other = rollout_seed(int(seed) + 10_000, 0)        # an independent seed for the second prompt
        reqs.append(Request(tuple(prompts[1]), 1, L, n=rollouts, seed=other, top_k=rollout_top_k))
        keys.append((seed, 1, "other"))
    got = dict(zip(keys, transport.generate(reqs)))
    checked = broken = same = indep = total = 0
    for seed in seeds:
        for i in range(len(prompts)):
            a, b = got[(seed, i, short)].samples, got[(seed, i, long)].samples
            for r in range(rollouts):
                checked += 1
                broken += list(a[r].tokens) != list(b[r].tokens[:short])
        for r in range(rollouts):
            total += 1
            first = got[(seed, 0, long)].samples[r].tokens[0]
            same += first == got[(seed, 1, long)].samples[r].tokens[0]
            indep += first == got[(seed, 1, "other")].samples[r].tokens[0]
    rep = SeedReport(checked, broken, same / total, indep / total)
    if raise_on_failure:
        if broken:
            raise SeedPropertyError(f"the engine's seeded sampler does not replay rollouts: {broken} of {checked} "
                                    f"depth-{long} requests did not start with the depth-{short} tokens of the same seed")
        if rep.shared_same_seed <= rep.shared_other_seed:
            raise SeedPropertyError(f"the engine's random numbers depend on more than the seed: first rollout tokens "
                                    f"of two similar prompts agree {rep.shared_same_seed:.0%} with one seed vs "
                                    f"{rep.shared_other_seed:.0%} with independent seeds")
    return rep


__all__ = ["generate", "connect", "check_seed_properties", "SeedReport"]
