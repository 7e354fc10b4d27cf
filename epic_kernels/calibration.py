"""alpha calibration (paper Appendix B.1): the alpha at which EPIC's lookahead entropy matches the data's.

Lemma 3.2 of the paper: the cross-entropy ``F(alpha) = H(p, q_alpha)`` of the true distribution ``p``
against the entropy-aligned model ``q_alpha(y | x) ∝ q(y | x) exp(-alpha H(x, y))`` is convex, with

    F'(alpha) = g(alpha) = mu_p - mu_alpha,
    mu_p      = E_{x ~ p} E_{y ~ p(.|x)} [H(x, y)]          (data tokens at data prefixes)
    mu_alpha  = E_{x ~ p} E_{y ~ q_alpha(.|x)} [H(x, y)]    (model tokens at the same prefixes)

where ``H(x, y)`` is the k-step lookahead entropy of token ``y`` after prefix ``x`` (paper eq. 4).
``g`` is non-decreasing (``g' = E_x Var_{q_alpha}[H] >= 0``), so its root ``alpha*`` minimises the
cross-entropy and calibrates the lookahead entropy; bisection finds it.

Estimators
----------
* ``mu_p``: the mean over held-out prefixes of the lookahead entropy of the data's own next token
  (``lookahead_entropy`` with its default candidates), paper eq. 43.
* ``mu_alpha``: at every prefix ``x_t`` draw ``S`` tokens ``y_ts ~ q(.|x_t)`` once; their entropies
  ``H_ts`` then serve every alpha (paper eq. 44) through self-normalised importance weights

      mu_alpha_hat = (1/N) sum_t  sum_s H_ts w_ts / sum_s w_ts,     w_ts = exp(-alpha H_ts).

  The weights are normalised **per prefix**, not pooled over all prefixes. ``q_alpha`` is
  normalised separately at every prefix (its partition function ``Z_t(alpha)`` depends on ``x_t``),
  and ``mu_alpha`` is an average over prefixes of per-prefix expectations, each prefix with weight
  ``1/N`` exactly as in ``mu_p``. Pooling (``sum_ts H w / sum_ts w``) would instead weight prefix t
  by its estimated ``Z_t(alpha)``: prefixes whose samples all have low entropy would dominate for
  alpha > 0, and the estimate would converge to ``sum_t Z_t mu_t / sum_t Z_t``, not ``mu_alpha``.
  Per-prefix self-normalisation has an O(1/S) bias at each prefix but is consistent as S grows,
  and because ``sum_s H w / sum_s w`` is exactly non-increasing in alpha (its derivative is minus a
  weighted variance), the estimated ``g`` stays monotone and bisection is exact on it.
  Samples that repeat a token at the same prefix share one entropy evaluation (they are counted
  ``S`` times in the weights, so nothing changes but the cost).

Randomness
----------
Everything is keyed, so a result is a pure function of the inputs and ``seed``:

* text ``i`` uses the sequence seed ``seed_i = (seed + i) mod 2**32``; its lookahead rollouts use
  EPIC's own rollout streams (stream ``1 + r``), exactly as decoding that text would. The data token
  and the samples at a prefix therefore share rollout noise (common random numbers), which lowers
  the variance of ``g``.
* sample ``s`` at prefix length ``t`` of text ``i`` is drawn by inversion of the model's CDF with a
  53-bit uniform built from the first two output words of Philox4x32-10 with key ``(seed_i, 0)`` and
  counter ``(s, t, CALIBRATION_TAG, 0)``. Every other draw in epic_kernels (step stream 0 and
  rollout streams ``1 + r``) uses counter words 2 and 3 equal to zero, so with
  ``CALIBRATION_TAG != 0`` these draws can never coincide with EPIC's step or rollout noise.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from . import defaults, philox
from .validate import check_int, check_not_meta, check_position_limit, model_vocab

CALIBRATION_TAG = 0x43414C42          # "CALB": counter word 2 of the calibration sampling stream
DEFAULT_CHUNK = 128                   # (prefix, candidate) pairs per lookahead_entropy call
_MAX_ALPHA = 1e6                      # the bracket is never expanded beyond |alpha| = _MAX_ALPHA


class CalibrationError(RuntimeError):
    """No alpha matches the data's lookahead entropy (mu_p lies outside what q_alpha can reach)."""


# ------------------------------------------------------------------------------------------------ #
# Entropy collection (the expensive part: model calls)
# ------------------------------------------------------------------------------------------------ #
@dataclass
class CalibrationData:
    """Lookahead entropies at ``N`` held-out prefixes: of the data token and of ``S`` model samples.

    Everything ``g(alpha)`` needs; evaluating it for a new alpha costs no model call.
    """

    h_data: torch.Tensor        # float64 [N]: H of the data's next token at each prefix
    h_samples: torch.Tensor     # float64 [N, S]: H of the S samples from q at each prefix
    text_index: torch.Tensor    # int64 [N]: which text each prefix belongs to
    texts: int                  # texts that contributed at least one prefix
    evaluations: int            # distinct (prefix, token) lookahead entropies computed
    seconds: float = 0.0
    samples_tokens: torch.Tensor | None = None   # int64 [N, S], the sampled tokens

    @property
    def tokens(self) -> int:
        return int(self.h_data.numel())

    @property
    def samples(self) -> int:
        return int(self.h_samples.shape[1])

    @property
    def mu_p(self) -> float:
        return float(self.h_data.mean())

    def weights(self, alpha: float) -> torch.Tensor:
        """Per-prefix self-normalised importance weights ``[N, S]`` (rows sum to 1)."""
        return torch.softmax(-float(alpha) * self.h_samples, dim=-1)

    def mu_alpha_per_prefix(self, alpha: float) -> torch.Tensor:
        return (self.weights(alpha) * self.h_samples).sum(-1)

    def mu_alpha(self, alpha: float) -> float:
        """Importance-sampling estimate of ``E_{x~p} E_{q_alpha(.|x)}[H]`` (module docstring)."""
        return float(self.mu_alpha_per_prefix(alpha).mean())

    def g(self, alpha: float) -> float:
        """``mu_p - mu_alpha(alpha)``: the derivative of the cross-entropy, non-decreasing in alpha."""
        return self.mu_p - self.mu_alpha(alpha)

    def g_slope(self, alpha: float) -> float:
        """``g'(alpha)``: the mean over prefixes of the weighted variance of the samples' entropies."""
        w = self.weights(alpha)
        m = (w * self.h_samples).sum(-1, keepdim=True)
        return float((w * (self.h_samples - m) ** 2).sum(-1).mean())

    def ess(self, alpha: float) -> torch.Tensor:
        """Kish effective sample size ``(sum w)^2 / sum w^2`` of each prefix's weights, in [1, S]."""
        w = self.weights(alpha)
        return 1.0 / (w * w).sum(-1)

    def g_stderr(self, alpha: float) -> float:
        """Approximate standard error of ``g(alpha)``: the per-prefix differences
        ``H_data - mu_alpha_t``, clustered by text (prefixes of one text are correlated)."""
        d = self.h_data - self.mu_alpha_per_prefix(alpha)
        n = len(d)
        if n < 2:
            return float("nan")
        resid = d - d.mean()
        per_text = torch.zeros(int(self.text_index.max()) + 1, dtype=d.dtype).index_add_(0, self.text_index, resid)
        clusters = int((torch.bincount(self.text_index) > 0).sum())
        if clusters < 2:
            return float(resid.std() / math.sqrt(n))
        return float(math.sqrt(clusters / (clusters - 1)) * per_text.norm() / n)


def _as_ids(item, tokenizer, what: str) -> list[int]:
    """One text (``what`` names it, e.g. ``texts[3]``) as a list of token ids."""
    if isinstance(item, str):
        if tokenizer is None:
            raise ValueError(f"{what} is a string: pass tokenizer= (or give token ids)")
        return list(tokenizer(item)["input_ids"])
    if isinstance(item, torch.Tensor):
        check_not_meta(**{what: item})
        if item.dtype.is_floating_point or item.dim() > 2 or (item.dim() == 2 and item.shape[0] != 1):
            raise ValueError(f"{what} given as a tensor must be integer [T] or [1, T], got {item.dtype} "
                             f"{tuple(item.shape)}")
        return [int(v) for v in item.reshape(-1).tolist()]
    try:
        items = list(item)
    except TypeError:
        raise ValueError(f"{what} must be a string or a sequence of token ids, got {type(item).__name__}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{what} must be a string or a sequence of integer token ids")
    return [int(v) for v in items]


def _uniforms53(seed: int, positions: torch.Tensor, samples: int) -> torch.Tensor:
    """float64 uniforms in (0, 1), ``[P, S]``, keyed by (seed, position, sample) (module docstring)."""
    P = len(positions)
    c0 = torch.arange(samples, dtype=torch.int64).expand(P, samples)
    c1 = positions.to(torch.int64).view(-1, 1).expand(P, samples)
    c2 = torch.full_like(c0, CALIBRATION_TAG)
    zero = torch.zeros_like(c0)
    k0 = torch.full_like(c0, seed & philox.MASK32)
    w0, w1, _, _ = philox.philox4x32(c0, c1, c2, zero, k0, zero)
    bits = ((w0 >> 5) << 26) | (w1 >> 6)                       # 27 + 26 = 53 random bits
    return (bits.to(torch.float64) + 0.5) * 2.0**-53


def sample_tokens(logits: torch.Tensor, seed: int, positions: torch.Tensor, samples: int,
                  top_k: int | None = None) -> torch.Tensor:
    """``samples`` keyed draws ``[P, S]`` from ``softmax(logits [P, V])`` (optionally top-k truncated)
    by inversion of the CDF in float64. Row p's draws depend only on (seed, positions[p], s)."""
    from .reference import policy_logits

    x = policy_logits(logits, top_k).to(torch.float64)
    prob = torch.softmax(x, dim=-1)
    cdf = prob.cumsum(-1)
    u = _uniforms53(seed, positions, samples) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)
    # u can reach the last CDF value only through rounding: fall back to the last token with mass
    last = (prob > 0).to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)
    return torch.minimum(idx, last.expand_as(idx))


@torch.no_grad()
def collect_entropies(model, texts, *, contexts=None, horizon: int = defaults.HORIZON,
                      rollouts: int = defaults.ROLLOUTS, samples: int = 8,
                      rollout_top_k: int | None = None, top_k: int | None = None, max_texts: int | None = None,
                      max_tokens: int | None = None, seed: int = 0, progress: bool = True, tokenizer=None,
                      chunk: int = DEFAULT_CHUNK) -> CalibrationData:
    """Lookahead entropies of the data tokens and of ``samples`` model draws at every held-out prefix.

    ``texts``: strings (tokenised with ``tokenizer``) or token-id sequences. ``contexts``: optional,
    one per text (string or ids); each text is then scored as a continuation of its context (the
    context's own tokens are not scored). Without contexts every token after the first is scored.
    """
    from tqdm.auto import tqdm

    from .engine.attention import fork_refusal
    from .entropy import lookahead_entropy

    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
        raise ValueError("texts must be a list of strings or token-id sequences")
    if len(texts) == 0:
        raise ValueError("texts is empty: calibration needs held-out text")
    check_int(samples, "samples", 1)
    check_int(seed, "seed", 0, philox.MAX_SEED - 1)
    check_int(chunk, "chunk", 1)
    if max_texts is not None:
        check_int(max_texts, "max_texts", 1)
    if max_tokens is not None:
        check_int(max_tokens, "max_tokens", 1)
    if top_k is not None:
        check_int(top_k, "top_k", 1)
    if contexts is not None and len(contexts) != len(texts):
        raise ValueError(f"contexts must have one entry per text ({len(texts)}), got {len(contexts)}")
    started = time.perf_counter()
    n_texts = len(texts) if max_texts is None else min(max_texts, len(texts))

    check_not_meta(model)
    vocab = model_vocab(model)

    # plan: (text index, ids, scored prefix lengths) within the token budget; every text used is
    # checked before the first model call
    plan, budget = [], max_tokens
    for i in range(n_texts):
        body = _as_ids(texts[i], tokenizer, f"texts[{i}]")
        ctx = [] if contexts is None else _as_ids(contexts[i], tokenizer, f"contexts[{i}]")
        if not body:
            raise ValueError(f"texts[{i}] is empty (no tokens): calibration scores the tokens of every text; "
                             "remove it or give it text")
        for name, part in ((f"texts[{i}]", body), (f"contexts[{i}]", ctx)):
            bad = [(j, v) for j, v in enumerate(part) if v < 0 or (vocab is not None and v >= vocab)]
            if bad:
                raise ValueError(f"{name} holds token id {bad[0][1]} at index {bad[0][0]}, outside the model's "
                                 f"vocabulary [0, {vocab}): tokenize it with this model's tokenizer")
        ids = ctx + body
        start = max(1, len(ctx))
        pos = torch.arange(start, len(ids))
        if budget is not None:
            pos = pos[:budget]
            budget -= len(pos)
        if len(pos):
            plan.append((i, torch.tensor(ids, dtype=torch.int64), pos))
        if budget is not None and budget <= 0:
            break
    if not plan:
        raise ValueError("no text has a token to score (each needs at least 2 tokens, or 1 after its context)")
    longest = max(len(ids) for _, ids, _ in plan)
    why = fork_refusal(model, longest + horizon)
    if why is not None:
        raise ValueError(f"calibration runs lookahead_entropy on the fast engine, which cannot run "
                         f"{type(model).__name__} exactly: {why}")
    # a text of T tokens: its forward feeds positions up to T - 1, the last candidate's rollouts T + horizon - 2
    check_position_limit(model, longest + horizon - 2, f"calibrating on a text of {longest} tokens",
                         "use shorter texts (max_tokens / max_texts, or cut them) or a smaller horizon")

    h_data, h_samp, tok_samp, which, evaluations = [], [], [], [], 0
    work = []
    for i, ids, pos in plan:
        seq_seed = (seed + i) % philox.MAX_SEED
        logits = model(input_ids=ids.view(1, -1)).logits[0, pos - 1]            # q at each prefix
        draws = sample_tokens(logits, seq_seed, pos, samples, top_k)             # [P, S]
        cand = torch.cat([ids[pos].view(-1, 1), draws], 1)                       # data token first
        uniq = [sorted(set(row)) for row in cand.tolist()]
        flat_pos = torch.tensor([int(t) for t, u in zip(pos.tolist(), uniq) for _ in u], dtype=torch.int64)
        flat_tok = torch.tensor([v for u in uniq for v in u], dtype=torch.int64)
        work.append((i, ids, pos, seq_seed, cand, uniq, flat_pos, flat_tok))
    total = sum(len(w[7]) for w in work)
    bar = tqdm(total=total, disable=not progress, desc="calibrate: lookahead entropies", unit="eval",
               dynamic_ncols=True)
    try:
        for i, ids, pos, seq_seed, cand, uniq, flat_pos, flat_tok in work:
            h = torch.empty(len(flat_tok), dtype=torch.float64)
            for s in range(0, len(flat_tok), chunk):
                sl = slice(s, s + chunk)
                h[sl] = lookahead_entropy(model, ids, positions=flat_pos[sl], candidates=flat_tok[sl],
                                          horizon=horizon, rollouts=rollouts, seed=seq_seed,
                                          rollout_top_k=rollout_top_k).to(torch.float64)
                bar.update(len(flat_tok[sl]))
            evaluations += len(flat_tok)
            offset, table = 0, torch.empty(cand.shape, dtype=torch.float64)
            for p, u in enumerate(uniq):
                lookup = dict(zip(u, h[offset:offset + len(u)].tolist()))
                offset += len(u)
                table[p] = torch.tensor([lookup[v] for v in cand[p].tolist()], dtype=torch.float64)
            h_data.append(table[:, 0])
            h_samp.append(table[:, 1:])
            tok_samp.append(cand[:, 1:])
            which.append(torch.full((len(pos),), i, dtype=torch.int64))
    finally:
        bar.close()
    return CalibrationData(torch.cat(h_data), torch.cat(h_samp), torch.cat(which), len(plan), evaluations,
                           time.perf_counter() - started, torch.cat(tok_samp))


# ------------------------------------------------------------------------------------------------ #
# Solving g(alpha) = 0
# ------------------------------------------------------------------------------------------------ #
@dataclass
class CalibrationResult:
    """alpha* and everything needed to judge it. ``to_dict()`` is the JSON record (key ``alpha``)."""

    alpha: float                   # alpha*, the midpoint of the final bracket
    bracket: tuple[float, float]   # final bisection bracket, width <= tol; g(lo) <= 0 <= g(hi)
    tol: float
    mu_p: float                    # mean lookahead entropy of the data tokens
    mu_alpha: float                # importance-sampling mu_alpha at alpha*
    mu_q: float                    # mu_alpha at alpha = 0 (plain sampling), for reference
    g: float                       # mu_p - mu_alpha at alpha*
    g_stderr: float                # approximate standard error of g (clustered by text)
    alpha_stderr: float            # g_stderr / g'(alpha*): the delta-method uncertainty of alpha*
    ess_mean: float                # mean over prefixes of the Kish ESS of the weights at alpha*
    ess_fraction: float            # ess_mean / samples
    ess_min: float                 # smallest per-prefix ESS
    texts: int
    tokens: int                    # held-out prefixes scored
    samples: int                   # model samples per prefix
    evaluations: int               # distinct lookahead entropies computed
    bracket_expansions: int = 0
    bisection_steps: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bracket"] = list(self.bracket)
        return d


def solve_alpha(data: CalibrationData, *, tol: float = 1e-3, bracket=(-2.0, 2.0),
                ess_warn_fraction: float = 0.25) -> CalibrationResult:
    """Bisection on the (monotone) estimated ``g`` until the bracket is at most ``tol`` wide.

    If ``g`` does not change sign on ``bracket`` the bracket is widened (doubling its width towards
    the side of the root) and a warning says so. Raises ``CalibrationError`` when ``mu_p`` lies
    outside the range ``mu_alpha`` can reach (mean per-prefix min and max of the samples' entropies).
    """
    lo, hi = _check_bracket(bracket)
    tol = _check_tol(tol)
    notes: list[str] = []
    reach_lo = float(data.h_samples.min(-1).values.mean())     # mu_alpha as alpha -> +inf
    reach_hi = float(data.h_samples.max(-1).values.mean())     # mu_alpha as alpha -> -inf
    if not reach_lo < data.mu_p < reach_hi:
        raise CalibrationError(
            f"mu_p = {data.mu_p:.4f} lies outside ({reach_lo:.4f}, {reach_hi:.4f}), the range of mu_alpha over "
            f"all alpha for these samples: no alpha calibrates them (more samples per prefix widen the range)")
    expansions = 0
    g_lo, g_hi = data.g(lo), data.g(hi)
    while g_lo > 0 or g_hi < 0:
        width = hi - lo
        if g_lo > 0:                      # g(lo) > 0: the root lies below lo
            lo, hi, g_hi = lo - 2 * width, lo, g_lo
            g_lo = data.g(lo)
        else:                             # g(hi) < 0: the root lies above hi
            lo, hi, g_lo = hi, hi + 2 * width, g_hi
            g_hi = data.g(hi)
        expansions += 1
        if max(abs(lo), abs(hi)) > _MAX_ALPHA:
            raise CalibrationError(f"no sign change of g for |alpha| <= {_MAX_ALPHA:g}")
    if expansions:
        notes.append(f"g did not change sign on the bracket {tuple(bracket)}: widened {expansions} time(s) to "
                     f"({lo:g}, {hi:g})")
        warnings.warn(notes[-1], stacklevel=3)
    steps = 0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        g_mid = data.g(mid)
        if g_mid < 0:
            lo = mid
        elif g_mid > 0:
            hi = mid
        else:
            lo = hi = mid
        steps += 1
    alpha = 0.5 * (lo + hi)
    ess = data.ess(alpha)
    S = data.samples
    slope = data.g_slope(alpha)
    g_se = data.g_stderr(alpha)
    res = CalibrationResult(
        alpha=alpha, bracket=(lo, hi), tol=tol, mu_p=data.mu_p, mu_alpha=data.mu_alpha(alpha),
        mu_q=data.mu_alpha(0.0), g=data.g(alpha), g_stderr=g_se,
        alpha_stderr=g_se / slope if slope > 0 else float("inf"),
        ess_mean=float(ess.mean()), ess_fraction=float(ess.mean()) / S, ess_min=float(ess.min()),
        texts=data.texts, tokens=data.tokens, samples=S, evaluations=data.evaluations,
        bracket_expansions=expansions, bisection_steps=steps, seconds=data.seconds, warnings=notes)
    if S > 1 and res.ess_fraction < ess_warn_fraction:
        notes.append(f"importance weights at alpha*={alpha:.4g} are degenerate: mean effective sample size "
                     f"{res.ess_mean:.2f} of {S} samples per prefix ({res.ess_fraction:.0%} < "
                     f"{ess_warn_fraction:.0%}); mu_alpha is unreliable, use more --samples")
        warnings.warn(notes[-1], stacklevel=3)
    return res


def _check_bracket(bracket) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bracket)
    except (TypeError, ValueError):
        raise ValueError(f"bracket must be two numbers (lo, hi), got {bracket!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"bracket must be finite with lo < hi, got {bracket!r}")
    return lo, hi


def _check_tol(tol) -> float:
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"tol must be a positive number, got {tol!r}") from None
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    return tol


def calibrate_alpha(model, texts, *, horizon: int = defaults.HORIZON, rollouts: int = defaults.ROLLOUTS,
                    samples: int = 8,
                    rollout_top_k: int | None = None, tol: float = 1e-3, bracket=(-2.0, 2.0),
                    max_texts: int | None = None, max_tokens: int | None = None, seed: int = 0,
                    progress: bool = True, tokenizer=None, contexts=None, top_k: int | None = None,
                    ess_warn_fraction: float = 0.25, chunk: int = DEFAULT_CHUNK) -> CalibrationResult:
    """Calibrate EPIC's alpha on held-out text (paper Appendix B.1; module docstring for the details).

    Parameters
    ----------
    model : causal LM supported by ``lookahead_entropy`` (Llama family).
    texts : held-out texts, strings (with ``tokenizer``) or token-id sequences; samples from ``p``.
    horizon, rollouts, rollout_top_k : the lookahead-entropy estimator; use the values you decode with.
    samples : model draws per prefix for the importance-sampling estimate of ``mu_alpha``.
    top_k : optional truncation of ``q`` before drawing those samples; pass the candidate ``top_k``
        you decode with, so ``q_alpha`` is the distribution EPIC samples (default: the full model).
    tol : bisection stops when the bracket is at most ``tol`` wide; alpha* is its midpoint.
    bracket : initial ``(lo, hi)``; widened (with a warning) when ``g`` has no sign change on it.
    max_texts, max_tokens : use at most this many texts / scored prefixes (in order).
    seed : keys all randomness; the result is deterministic for a seed.
    contexts : optional per-text contexts (e.g. the prompts of prompt-response pairs), not scored.
    ess_warn_fraction : warn when the mean per-prefix ESS at alpha* is below this fraction of ``samples``.

    Returns a ``CalibrationResult``; ``.alpha`` is alpha*.
    """
    _check_bracket(bracket)
    _check_tol(tol)
    data = collect_entropies(model, texts, contexts=contexts, horizon=horizon, rollouts=rollouts,
                             samples=samples, rollout_top_k=rollout_top_k, top_k=top_k, max_texts=max_texts,
                             max_tokens=max_tokens, seed=seed, progress=progress, tokenizer=tokenizer,
                             chunk=chunk)
    return solve_alpha(data, tol=tol, bracket=bracket, ess_warn_fraction=ess_warn_fraction)


def chat_pairs(tokenizer, prompts, responses, *, eos_token_id=None, use_template: bool = True):
    """``(contexts, texts)`` token ids for prompt-response pairs as the model sees them when decoding:
    the prompt wrapped in the chat template (with the assistant header), the response's tokens and,
    if given, the end-of-sequence token the model should emit after it."""
    from .models import chat_prompt_ids

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    contexts, texts = [], []
    for prompt, response in zip(prompts, responses):
        contexts.append(chat_prompt_ids(tokenizer, prompt, use_template)[0].tolist())
        body = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if eos_token_id is not None:
            body.append(int(eos_token_id))
        texts.append(body)
    return contexts, texts


__all__ = ["calibrate_alpha", "collect_entropies", "solve_alpha", "sample_tokens", "chat_pairs",
           "CalibrationData", "CalibrationResult", "CalibrationError", "CALIBRATION_TAG"]
