"""A GGUF model loaded by llama.cpp: its weights (memory-mapped, quantized as stored), its vocabulary
size and training context. Contexts (``runtime.LlamaRuntime``) are made from it per request."""
from __future__ import annotations

import os
from pathlib import Path

from .library import load

GGUF_MAGIC = b"GGUF"


def check_gguf(path) -> Path:
    """``path`` must be an existing GGUF file (its first four bytes ``GGUF``); otherwise a
    ``FileNotFoundError`` / ``ValueError`` that says what it is instead."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model file {str(p)!r} does not exist: give the path of a .gguf file "
                                "(or no --model for the embedded SmolLM2)")
    if not p.is_file():
        raise FileNotFoundError(f"{str(p)!r} is a directory; the llama.cpp engine needs a .gguf file "
                                "(a Hugging Face folder runs on --engine hf)")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{str(p)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
                         "llama.cpp reads GGUF models only: convert it with llama.cpp's convert_hf_to_gguf.py")
    return p


class LlamaModel:
    """``LlamaModel(path)``: the GGUF file at ``path`` (None: the embedded SmolLM2) on llama.cpp's CPU
    backend. ``n_vocab`` is the size of its logits rows, ``n_ctx_train`` its training context."""

    def __init__(self, path: str | os.PathLike | None = None, *, repack: bool = False):
        if path is None:
            from ..models import embedded_model_path

            path = embedded_model_path()
        self.path = check_gguf(path)
        self.lib = lib = load()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = bool(repack)
        self.ptr = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise ValueError(f"llama.cpp could not load {str(self.path)!r} (a GGUF file of an architecture or "
                             "version this llama.cpp build does not support, or a truncated file)")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.ptr))
        self.size_bytes = int(lib.llama_model_size(self.ptr))

    def is_eog(self, token: int) -> bool:
        """Does ``token`` end a generation (llama.cpp's end-of-generation set: EOS, EOT, ...)?"""
        return bool(self.lib.llama_vocab_is_eog(self.vocab, int(token)))

    def eog_ids(self) -> list[int]:
        return [t for t in range(self.n_vocab) if self.is_eog(t)]

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LlamaModel({str(self.path)!r}, n_vocab={self.n_vocab})"


__all__ = ["LlamaModel", "check_gguf", "GGUF_MAGIC"]
