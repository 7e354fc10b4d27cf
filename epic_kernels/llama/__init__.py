"""EPIC on llama.cpp: the engine's runtime interface over a llama.cpp context (``runtime``), a GGUF
model (``model``) and the decoding loop (``generate``). Needs ``llama-cpp-python`` (the Makefile
builds it; ``pip install 'epic_kernels[llama]'`` elsewhere). docs/engine.md, "The llama.cpp runtime"."""
from .generate import context_cells, generate
from .model import LlamaModel
from .runtime import LlamaRuntime, SeqPool

__all__ = ["generate", "context_cells", "LlamaModel", "LlamaRuntime", "SeqPool"]
