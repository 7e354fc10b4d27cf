"""Request bodies of the OpenAI API as the service accepts them, EPIC's fields beside the standard
ones, and the OpenAI error body.

Unknown fields are refused (400 naming the field) rather than ignored, and so are standard fields
whose meaning EPIC does not implement (``n`` > 1, ``logprobs``, penalties, ``logit_bias``,
``temperature`` other than 1): a request never gets a silently different result.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .. import defaults
from ..philox import MAX_SEED

Finite = Field(allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    stop: Union[str, list[str], None] = None
    top_k: int | None = Field(defaults.TOP_K, ge=1)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    temperature: float | None = Field(None, allow_inf_nan=False)
    n: int | None = None
    logprobs: Union[bool, int, None] = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: str | None = None
    epic_alpha: float = Field(defaults.ALPHA, allow_inf_nan=False)
    epic_horizon: int = Field(defaults.HORIZON, ge=1, le=16)
    epic_rollouts: int = Field(defaults.ROLLOUTS, ge=1, le=64)
    epic_rollout_top_k: int | None = Field(defaults.ROLLOUT_TOP_K, ge=1)
    epic_entropies: bool = False
    ignore_eos: bool = False        # vLLM's extension: run to max_tokens (benchmarks)

    def unsupported(self) -> tuple[str, str] | None:
        """``(field, why)`` for a standard field set to something EPIC does not implement."""
        if self.temperature is not None and self.temperature != 1:
            return "temperature", ("EPIC samples from the model's distribution at temperature 1, reweighted by "
                                   "lookahead entropy; set epic_alpha instead (or omit temperature / set it to 1)")
        if self.n not in (None, 1):
            return "n", "one choice per request: send n requests with different seeds"
        if self.logprobs not in (None, False, 0):
            return "logprobs", "log probabilities are not returned (epic_entropies returns per-token entropies)"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                return name, "penalties are not implemented"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not implemented"
        stops = self.stop_list()
        if len(stops) > 4:
            return "stop", f"at most 4 stop strings, got {len(stops)}"
        if any(not s for s in stops):
            return "stop", "stop strings must not be empty"
        return None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self):
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            if len(self.prompt) != 1:
                return "prompt", f"one prompt per request, got {len(self.prompt)}"
        if self.echo:
            return "echo", "echo is not implemented"
        if self.best_of not in (None, 1):
            return "best_of", "best_of is not implemented"
        if self.suffix:
            return "suffix", "suffix (insertion) is not implemented"
        return super().unsupported()

    def single_prompt(self):
        p = self.prompt
        return p[0] if isinstance(p, list) and p and not isinstance(p[0], int) else p


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI API's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
