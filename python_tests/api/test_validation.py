"""Bad input raises ValueError naming the problem, and changes no state."""
import pytest
import torch

import epic_kernels
from epic_kernels.testing import prefill, random_prompts, tiny_llama


@pytest.fixture()
def step_args(tiny, batch7):
    _, logits, kv, mask = batch7
    return logits.detach().clone(), kv, mask


def _snapshot(kv):
    return [(layer.keys.clone(), layer.values.clone()) for layer in kv.layers]


def _call(tiny, logits, kv, mask, **overrides):
    kwargs = dict(alpha=0.5, horizon=2, rollouts=2, seed=0, attention_mask=mask)
    kwargs.update(overrides)
    return epic_kernels.sample_step(logits, kv, tiny, **kwargs)


BAD_LOGITS = [
    (lambda l: l[0], "shape"),
    (lambda l: l.unsqueeze(0), "shape"),
    (lambda l: l.long(), "float16, bfloat16, float32 or float64"),
    (lambda l: l.masked_fill(torch.zeros_like(l, dtype=torch.bool).index_fill_(1, torch.tensor([3]), True), float("nan")), "NaN"),
    (lambda l: l.index_fill(0, torch.tensor([2]), float("-inf")), "no finite entry"),
    (lambda l: l.index_fill(1, torch.tensor([0]), float("inf")), "+inf"),
    (lambda l: l[:5], "batch size"),
    (lambda l: l.tolist(), "torch.Tensor"),
]


@pytest.mark.parametrize("mutate,message", BAD_LOGITS)
def test_bad_logits(tiny, step_args, mutate, message):
    logits, kv, mask = step_args
    before = _snapshot(kv)
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        _call(tiny, mutate(logits), kv, mask)
    assert all(torch.equal(a, layer.keys) and torch.equal(b, layer.values)
               for (a, b), layer in zip(before, kv.layers))


BAD_PARAMS = [
    (dict(alpha=float("nan")), "alpha"),
    (dict(alpha=float("inf")), "alpha"),
    (dict(alpha="0.2"), "alpha"),
    (dict(horizon=0), "horizon"),
    (dict(horizon=2.5), "horizon"),
    (dict(rollouts=0), "rollouts"),
    (dict(block_size=0), "block_size"),
    (dict(rollout_top_k=0), "rollout_top_k"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**32), "seed"),
    (dict(seed=[1, 2, 3]), "3 seeds for a batch of 7"),
    (dict(seed=1.5), "seed"),
    (dict(attention_mask=torch.ones(7, 3)), "attention_mask must have shape"),
    (dict(attention_mask=torch.full((7, 9), 2)), "only 0 and 1"),
]


@pytest.mark.parametrize("override,message", BAD_PARAMS)
def test_bad_parameters(tiny, step_args, override, message):
    logits, kv, mask = step_args
    with pytest.raises(ValueError, match=message):
        _call(tiny, logits, kv, mask, **override)


def test_kv_of_another_model(tiny, step_args):
    logits, kv, mask = step_args
    other = tiny_llama(32, seed=3, layers=3)
    with pytest.raises(ValueError, match="does not belong to this model"):
        _call(other, logits, kv, mask)
    other = tiny_llama(32, seed=3, kv_heads=4)
    with pytest.raises(ValueError, match="does not belong to this model"):
        _call(other, logits, kv, mask)


def test_kv_batch_mismatch(tiny):
    logits, _, _ = prefill(tiny, random_prompts(32, [4, 4, 4], seed=2))
    _, kv, mask = prefill(tiny, random_prompts(32, [4, 4], seed=2))
    with pytest.raises(ValueError, match="kv has batch size 2 but logits have 3"):
        epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=0.2)
    with pytest.raises(ValueError, match="kv must be a transformers Cache"):
        epic_kernels.sample_step(logits.detach(), object(), tiny, alpha=0.2)


def test_logits_narrower_than_the_vocabulary(tiny, step_args):
    logits, kv, mask = step_args
    with pytest.raises(ValueError, match="logits have 20 columns but the model's output layer has 32"):
        _call(tiny, logits[:, :20], kv, mask)


@pytest.mark.parametrize("processor,message", [
    (lambda ids, x: x.masked_fill(torch.ones_like(x, dtype=torch.bool), float("nan")), "NaN"),
    (lambda ids, x: x.index_fill(1, torch.tensor([2]), float("inf")), r"\+inf"),
    (lambda ids, x: x[:, :10], r"must return logits of shape \(1, 32\)"),
    (lambda ids, x: None, "must return logits"),
])
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_bad_processor_outputs(tiny, processor, message, engine):
    """The same clear error on both engines (it used to be an IndexError deep in the fast engine)."""
    ids = torch.tensor(random_prompts(32, [5], seed=3))
    with pytest.raises(ValueError, match=message):
        epic_kernels.generate(tiny, ids, max_new_tokens=3, alpha=0.5, engine=engine, logits_processor=processor)


def test_the_caches_a_user_can_hand_over(tiny):
    """StaticCache is read up to its filled length (same tokens as a DynamicCache); an offloaded
    cache and a quantized-style layer are refused by name."""
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import QuantizedLayer

    ids = torch.tensor(random_prompts(32, [6], seed=4))
    kw = dict(alpha=0.5, horizon=2, rollouts=2, seed=3)
    tokens = {}
    for name, cache in [("dynamic", DynamicCache()), ("static", StaticCache(config=tiny.config, max_cache_len=20))]:
        out = tiny(input_ids=ids, past_key_values=cache, use_cache=True)
        tokens[name] = epic_kernels.sample_step(out.logits[:, -1], out.past_key_values, tiny, **kw).tokens
    assert torch.equal(tokens["dynamic"], tokens["static"])
    out = tiny(input_ids=ids, use_cache=True)
    out.past_key_values.offloading = True           # as DynamicCache(offloading=True) sets (needs CUDA)
    with pytest.raises(ValueError, match="offloaded DynamicCache"):
        epic_kernels.sample_step(out.logits[:, -1], out.past_key_values, tiny, **kw)
    class Quantized(QuantizedLayer):               # the shape of quanto's / HQQ's layers
        def _quantize(self, tensor, axis):
            return tensor

        def _dequantize(self, q_tensor):
            return q_tensor

    plain = tiny(input_ids=ids, use_cache=True)
    plain.past_key_values.layers[1] = Quantized.__new__(Quantized)
    with pytest.raises(ValueError, match="layer 1 of this DynamicCache is a Quantized"):
        epic_kernels.sample_step(plain.logits[:, -1], plain.past_key_values, tiny, **kw)
