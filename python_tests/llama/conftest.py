"""Fixtures of the llama.cpp engine's tests: the embedded GGUF on llama.cpp (built by `make setup`),
and the reference's model over it (every row decoded from scratch)."""
import pytest
import torch

from epic_kernels.llama import LlamaModel
from epic_kernels.llama.scratch import ScratchModel

# chat-free prompts of the embedded model's tokenizer (ids), of different lengths
PROMPTS = [      # "The history of the city is", "Once upon a time,", "def fibonacci(n):", "Water boils at",
    [504, 1463, 282, 260, 2240, 314],       # "Hello", "The history of the", "My favourite food is", "Paris is the"
    [6403, 1980, 253, 655, 28],
    [1604, 3987, 46477, 24, 94, 727],
    [12615, 36411, 418],
    [19556],
    [504, 1463, 282, 260],
    [5965, 20334, 1114, 314],
    [38634, 314, 260],
]


@pytest.fixture(scope="session")
def llama_model():
    return LlamaModel(None)


@pytest.fixture(scope="session")
def scratch(llama_model):
    model = ScratchModel(llama_model, threads=2)
    yield model
    model.close()


def left_pad(prompts):
    """``(input_ids, attention_mask)`` of left-padded prompts."""
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.int64)
    mask = torch.zeros(len(prompts), T, dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    return ids, mask
