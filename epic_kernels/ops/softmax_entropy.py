"""``softmax_entropy``: entropy and log-sum-exp of each row's softmax in one pass, optionally with
keyed Gumbel-max samples of the same row (the rollout step).

Contract (every backend)::

    softmax_entropy(logits [N, V]) -> (entropy [N], lse [N])
    softmax_entropy(logits, seeds=[N], streams=int | [N] | [N, S], positions=[N])
        -> (entropy [N], lse [N], tokens int64 [N] or [N, S])

``logits`` float16 / bfloat16 / float32 / float64, ``-inf`` = removed token, at least one finite
entry per row, no NaN / +inf; ``N = 0`` is allowed and gives empty outputs on every backend.
Entropy and lse are in the accumulate dtype (``core.compute_dtype``: float32, float64 for float64
logits), to the tolerances of docs/kernels.md; ``tokens[n] = argmax_v (logits[n, v] + G_v)`` with
``G`` keyed ``(seeds[n], streams[n], positions[n], v)`` (``epic_kernels.philox``), ties to the lower
id, token for token equal to ``reference.gumbel_argmax``. With ``streams [N, S]`` column k equals
the call with ``streams[:, k]``.

Backends (``ops.dispatch``): ``reference`` (``reference.softmax_entropy`` + ``gumbel_argmax``, one
pass per stream), ``cpp`` (``torch.ops.epic_kernels.softmax_entropy[_sample]``: csrc/cpu/softmax_entropy.cpp,
the S streams in one pass; csrc/cuda/softmax_entropy.cu, one launch per stream) and ``triton``
(``triton_kernels.softmax_entropy_triton``, one launch per stream).
"""
from __future__ import annotations

import torch

from .. import _ext, reference
from ..core import compute_dtype
from ..validate import check_logits, check_logits_meta, check_row_keys
from .dispatch import choose

OP = "softmax_entropy"


def check_softmax_entropy(logits, seeds=None, streams=None, positions=None, *, values: bool = True) -> None:
    """The op's validator: ``ValueError`` naming the problem (see the module docstring).
    ``values=False`` leaves out the scans of the logits for NaN, +inf and dead rows."""
    check_logits(logits, empty_batch=True, values=values)
    if seeds is None:
        if streams is not None or positions is not None:
            raise ValueError("streams and positions need seeds")
        return
    n = logits.shape[0]
    check_row_keys(n, seeds=seeds, positions=positions)
    if isinstance(streams, torch.Tensor):
        if streams.dtype.is_floating_point or streams.dtype.is_complex or streams.dtype == torch.bool:
            raise ValueError(f"streams must be an int or an integer tensor, got {streams.dtype}")
        if streams.dim() == 2:
            if streams.shape[0] != n or streams.shape[1] < 1:
                raise ValueError(f"streams [N, S] must have shape ({n}, S) with S >= 1, "
                                 f"got {tuple(streams.shape)}")
        elif streams.dim() > 2 or streams.numel() not in (1, n):
            raise ValueError(f"streams must be an int, [N] or [N, S] with N = {n} rows, "
                             f"got shape {tuple(streams.shape)}")


def _cpp(logits, seeds, streams, positions):
    """The C++ op (CPU or CUDA kernels, by the tensors' device)."""
    if seeds is None:
        return (*_ext.op("softmax_entropy")(logits), None)
    if not isinstance(streams, torch.Tensor):
        streams = torch.as_tensor(streams, dtype=torch.int64, device=logits.device)
    if streams.dim() < 2:          # one stream for every row: an int, a one-element or [N] tensor
        streams = streams.expand(logits.shape[0])
    return _ext.op("softmax_entropy_sample")(logits, seeds, streams.contiguous(), positions)


def _per_column(one, streams):
    """``streams [N, S]`` by S one-stream calls ``one(streams_k) -> (h, lse, tokens)``."""
    outs = [one(streams[:, k].contiguous()) for k in range(streams.shape[1])]
    return outs[0][0], outs[0][1], torch.stack([o[2] for o in outs], 1)


def softmax_entropy_reference(logits, seeds=None, streams=0, positions=None):
    """The specification: ``reference.softmax_entropy`` and one ``gumbel_argmax`` per stream."""
    h, lse = reference.softmax_entropy(logits)
    if seeds is None:
        return h, lse, None
    streams = torch.as_tensor(streams, dtype=torch.int64, device=logits.device)
    if streams.dim() == 2:
        return _per_column(lambda s: (h, lse, reference.gumbel_argmax(logits, seeds, s, positions)), streams)
    return h, lse, reference.gumbel_argmax(logits, seeds, streams, positions)


def softmax_entropy_impl(logits, seeds=None, streams=0, positions=None, backend: str = "reference"):
    """No validation (the engine's hot loop); ``backend`` from ``dispatch.choose``. Returns
    ``(entropy, lse, tokens or None)``; ``streams`` an int, ``[N]`` or ``[N, S]``."""
    if backend == "cpp":
        return _cpp(logits, seeds, streams, positions)
    if backend == "triton":
        from ..triton_kernels import softmax_entropy_triton
        if seeds is None:
            return softmax_entropy_triton(logits)
        if isinstance(streams, torch.Tensor) and streams.dim() == 2:
            return _per_column(lambda s: softmax_entropy_triton(logits, seeds, s, positions), streams)
        return softmax_entropy_triton(logits, seeds, streams, positions)
    return softmax_entropy_reference(logits, seeds, streams, positions)


def softmax_entropy(logits: torch.Tensor, *, seeds: torch.Tensor | None = None, streams=None,
                    positions: torch.Tensor | None = None, backend: str | None = None):
    """Entropy and log-sum-exp of ``softmax(logits)`` per row, optionally with keyed samples.

    Parameters
    ----------
    logits : ``[N, V]`` float16/bfloat16/float32/float64; ``-inf`` entries allowed (one finite per row).
    seeds, streams, positions : optional. With ``seeds`` (int64 ``[N]``), also returns
        ``argmax_v (logits_v + G_v)`` with noise keyed ``(seeds[n], streams[n], positions[n], v)``;
        ``streams`` is an int or integer ``[N]`` (0 = step noise, 1 + r = rollout r), or integer
        ``[N, S]`` with ``S >= 1`` for S samples per row, column k keyed by ``streams[:, k]``
        (e.g. ``1 + arange(K)`` for K rollouts). The C++ CPU backend draws the S samples in one
        softmax pass (entropy and lse once); Triton, the C++ CUDA kernels and the reference loop
        over the columns. Either way column k equals the call with ``streams[:, k]`` token for token.
    backend : ``"reference" | "cpp" | "triton"`` (``"cpu"``: alias of ``"cpp"``) or None (auto;
        see ``ops.dispatch``).

    Returns
    -------
    ``(entropy [N], lse [N])`` in the accumulate dtype, plus ``tokens`` int64 when ``seeds`` is
    given: ``[N]`` for an int or ``[N]`` streams, ``[N, S]`` for ``[N, S]`` streams.
    """
    # The C++ CPU kernel reads every entry anyway, and a row with NaN, +inf or no finite entry gives
    # it a non-finite lse (csrc/include/cpu_softmax.h): there the scans of the logits run only
    # then, to name the problem. Scanning first reads the logits three more times, which costs more
    # than the kernel itself at the engine's shapes (docs/kernels.md, "C++ CPU kernels": the
    # "scans first" column of the softmax_entropy table, with its command).
    check_softmax_entropy(logits, seeds, streams, positions, values=False)
    which = choose(logits.device, backend, OP)
    after = which == "cpp" and logits.device.type == "cpu"
    if not after:
        check_logits(logits, empty_batch=True)
    h, lse, tokens = softmax_entropy_impl(logits, seeds, 0 if streams is None else streams, positions, which)
    if after and not bool(torch.isfinite(lse).all()):
        check_logits(logits, empty_batch=True)          # raises, naming the rows
    return (h, lse) if seeds is None else (h, lse, tokens)


def register_fake() -> None:
    """Shape/dtype-only kernels of the C++ ops (called by ``_ext.load``)."""

    @torch.library.register_fake("epic_kernels::softmax_entropy")
    def _softmax_entropy_fake(logits):
        check_logits_meta(logits)
        n, acc = logits.shape[0], compute_dtype(logits.dtype)
        return logits.new_empty(n, dtype=acc), logits.new_empty(n, dtype=acc)

    @torch.library.register_fake("epic_kernels::softmax_entropy_sample")
    def _softmax_entropy_sample_fake(logits, seeds, streams, positions):
        check_logits_meta(logits)
        n, acc = logits.shape[0], compute_dtype(logits.dtype)
        torch._check(streams.dim() in (1, 2) and streams.shape[0] == n,
                     lambda: f"streams must have shape ({n},) or ({n}, S), got {tuple(streams.shape)}")
        torch._check(streams.dim() == 1 or streams.shape[1] >= 1,
                     lambda: f"streams of shape (N, S) needs S >= 1, got {tuple(streams.shape)}")
        torch._check(not streams.dtype.is_floating_point and not streams.dtype.is_complex
                     and streams.dtype != torch.bool,
                     lambda: f"streams must be an integer tensor, got {streams.dtype}")
        tokens = (n,) if streams.dim() == 1 else (n, streams.shape[1])
        return (logits.new_empty(n, dtype=acc), logits.new_empty(n, dtype=acc),
                logits.new_empty(tokens, dtype=torch.int64))


__all__ = ["softmax_entropy", "softmax_entropy_impl", "softmax_entropy_reference", "check_softmax_entropy",
           "register_fake"]
