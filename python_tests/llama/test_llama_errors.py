"""Bad input to the llama.cpp engine: each a clear error naming the limit and the fix, and the model
and its contexts still usable afterwards; and the CLI entry."""
import json

import pytest
import torch

from epic_kernels.cli.generate import main
from epic_kernels.engine.runtime import CallRows
from epic_kernels.llama import LlamaModel, LlamaRuntime, generate
from epic_kernels.llama.library import missing_cpu_flags

from .conftest import PROMPTS

KW = dict(max_new_tokens=4, alpha=0.5, horizon=2, rollouts=2, top_k=6, rollout_top_k=6, seed=1, eos_token_id=None)


def still_works(model):
    return generate(model, torch.tensor([PROMPTS[0]]), **KW).new_tokens[0]


def test_missing_and_non_gguf_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlamaModel(tmp_path / "nothing.gguf")
    with pytest.raises(FileNotFoundError, match="directory"):
        LlamaModel(tmp_path)
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file, not a model")
    with pytest.raises(ValueError, match="not a GGUF file.*convert"):
        LlamaModel(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x00" * 60)
    with pytest.raises(ValueError, match="could not load"):
        LlamaModel(truncated)


def test_prompt_longer_than_the_context(llama_model):
    before = still_works(llama_model)
    long = torch.tensor([PROMPTS[0] * 60])                # 360 tokens
    with pytest.raises(ValueError, match=r"n_ctx=256.*n_ctx >= \d+"):
        generate(llama_model, long, n_ctx=256, **KW)
    with pytest.raises(ValueError, match="reaches position .* trained for: use a shorter prompt"):
        generate(llama_model, torch.tensor([PROMPTS[0] * 1400]), **KW)
    assert still_works(llama_model) == before


def test_more_sequences_than_sequence_ids(llama_model):
    before = still_works(llama_model)
    with pytest.raises(ValueError, match="n_seq_max=256.*at most 64 prompts"):
        generate(llama_model, torch.tensor([PROMPTS[3]] * 65), **KW)
    # a step that needs more live paths than the context has ids: the error names the limit and fix
    rt = LlamaRuntime(llama_model, 1, 256, n_seq_max=8)
    rt.prefill([PROMPTS[0]])
    with pytest.raises(ValueError, match=r"n_seq_max=8.*lower max_rows, top_k"):
        rt.take(7)
    p = rt.take(2)                                         # nothing changed: the runtime still runs
    out = rt.run(CallRows(torch.zeros(2, dtype=torch.long), p, torch.zeros(2, dtype=torch.long),
                          torch.tensor([657, 28]), torch.full((2,), len(PROMPTS[0]))))
    assert out.shape == (2, llama_model.n_vocab) and torch.isfinite(out).all()
    rt.close()
    assert still_works(llama_model) == before


def test_vocabulary_mismatch(llama_model):
    class OtherTokenizer:                                   # another model's: more ids than these logits
        def __len__(self):
            return llama_model.n_vocab + 1000

    before = still_works(llama_model)
    with pytest.raises(ValueError, match=r"tokenizer has 50152 tokens .* vocabulary of 49152.*tokenizer of this GGUF"):
        generate(llama_model, torch.tensor([PROMPTS[0]]), tokenizer=OtherTokenizer(), **KW)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 49152\)"):
        generate(llama_model, torch.tensor([[5, 60000]]), **KW)
    assert still_works(llama_model) == before


def test_cpu_without_the_builds_instructions():
    assert missing_cpu_flags("flags\t\t: fpu sse sse2 avx avx2 fma f16c bmi2\n") == []
    assert missing_cpu_flags("flags\t\t: fpu sse sse2 sse4_2 avx\n") == ["avx2", "fma", "f16c", "bmi2"]
    assert missing_cpu_flags() == []                        # this machine runs the build


def test_cli_json_matches_the_python_entry(llama_model, tmp_path, capsys):
    from epic_kernels.models import chat_prompt_ids, embedded_model_path, gguf_tokenizer

    path = tmp_path / "out.json"
    assert main(["--engine", "llama.cpp", "--max-new-tokens", "6", "--seed", "4", "--prompt", "Name a colour.",
                 "--quiet-steps", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    ids = chat_prompt_ids(gguf_tokenizer(embedded_model_path()), "Name a colour.")
    ours = generate(llama_model, ids, max_new_tokens=6, seed=4).new_tokens[0]
    assert record["engine"] == "llama.cpp" and record["tokens"] == ours
    assert len(record["steps"]) == len(ours)
    capsys.readouterr()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    assert main(["--engine", "llama.cpp", "--model", str(junk)]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
