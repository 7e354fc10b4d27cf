"""``softmax_entropy``: entropy and log-sum-exp of each row's softmax in one pass, optionally with
a keyed Gumbel-max sample from the same row (the rollout step)."""
from __future__ import annotations

import torch

from .. import _ext, reference
from ..validate import FLOAT_DTYPES
from ._dispatch import choose


def _check(logits, seeds, streams, positions):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a tensor [N, V], got {getattr(logits, 'shape', type(logits))}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one column")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    if logits.shape[0] and not torch.isfinite(logits).any(-1).all():
        raise ValueError("a row of logits has no finite entry")
    if seeds is None:
        if streams is not None or positions is not None:
            raise ValueError("streams and positions need seeds")
        return
    for name, t in (("seeds", seeds), ("positions", positions)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a 1-D integer tensor")
        if len(t) != logits.shape[0]:
            raise ValueError(f"{name} has {len(t)} entries for {logits.shape[0]} rows of logits")
    if isinstance(streams, torch.Tensor):
        if streams.dtype.is_floating_point or streams.dtype.is_complex or streams.dtype == torch.bool:
            raise ValueError(f"streams must be an int or an integer tensor, got {streams.dtype}")
        n = logits.shape[0]
        if streams.dim() == 2:
            if streams.shape[0] != n or streams.shape[1] < 1:
                raise ValueError(f"streams [N, S] must have shape ({n}, S) with S >= 1, "
                                 f"got {tuple(streams.shape)}")
        elif streams.dim() > 2 or streams.numel() not in (1, n):
            raise ValueError(f"streams must be an int, [N] or [N, S] with N = {n} rows, "
                             f"got shape {tuple(streams.shape)}")


def softmax_entropy_impl(logits, seeds=None, streams=0, positions=None, backend: str = "reference"):
    """No validation; ``backend`` already chosen. Returns ``(entropy, lse, tokens or None)``.

    ``streams`` is an int, ``[N]`` (tokens ``[N]``) or ``[N, S]`` (tokens ``[N, S]``, column k keyed
    by ``streams[:, k]``). The C++ backend draws the S samples in one softmax pass; Triton and the
    reference loop over the columns (S passes, same tokens).
    """
    if backend == "cpu":
        if seeds is None:
            return (*_ext.softmax_entropy(logits), None)
        return _ext.softmax_entropy_sample(logits, seeds, streams, positions)
    columns = isinstance(streams, torch.Tensor) and streams.dim() == 2
    if backend == "triton":
        from ..triton_kernels import softmax_entropy_triton
        if seeds is None:
            return softmax_entropy_triton(logits)
        if not columns:
            return softmax_entropy_triton(logits, seeds, streams, positions)
        outs = [softmax_entropy_triton(logits, seeds, streams[:, k].contiguous(), positions)
                for k in range(streams.shape[1])]
        return outs[0][0], outs[0][1], torch.stack([o[2] for o in outs], 1)
    h, lse = reference.softmax_entropy(logits)
    if seeds is None:
        return h, lse, None
    streams = torch.as_tensor(streams, dtype=torch.int64)
    if not columns:
        return h, lse, reference.gumbel_argmax(logits, seeds, streams, positions)
    return h, lse, torch.stack([reference.gumbel_argmax(logits, seeds, streams[:, k], positions)
                                for k in range(streams.shape[1])], 1)


def softmax_entropy(logits: torch.Tensor, *, seeds: torch.Tensor | None = None, streams=None,
                    positions: torch.Tensor | None = None, backend: str | None = None):
    """Entropy and log-sum-exp of ``softmax(logits)`` per row, optionally with a keyed sample.

    Parameters
    ----------
    logits : ``[N, V]`` float16/bfloat16/float32/float64; ``-inf`` entries allowed (one finite per row).
    seeds, streams, positions : optional. With ``seeds`` (int64 ``[N]``), also returns
        ``argmax_v (logits_v + G_v)`` with noise keyed ``(seeds[n], streams[n], positions[n], v)``;
        ``streams`` is an int or integer ``[N]`` (0 = step noise, 1 + r = rollout r), or integer
        ``[N, S]`` with ``S >= 1`` for S samples per row, column k keyed by ``streams[:, k]``
        (e.g. ``1 + arange(K)`` for K rollouts). The C++ CPU backend draws the S samples in one
        softmax pass (entropy and lse once); Triton and the reference loop over the columns. Either
        way column k equals the call with ``streams[:, k]`` token for token.
    backend : ``"reference" | "cpu" | "triton"`` or None (auto; see ``ops._dispatch``).

    Returns
    -------
    ``(entropy [N], lse [N])`` in float32 (float64 for float64 input), plus ``tokens`` int64 when
    ``seeds`` is given: ``[N]`` for an int or ``[N]`` streams, ``[N, S]`` for ``[N, S]`` streams.
    """
    _check(logits, seeds, streams, positions)
    which = choose(logits.device, backend)
    h, lse, tokens = softmax_entropy_impl(logits, seeds, 0 if streams is None else streams, positions, which)
    return (h, lse) if seeds is None else (h, lse, tokens)
