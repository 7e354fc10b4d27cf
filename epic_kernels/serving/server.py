"""The server transport: an OpenAI-compatible server (``vllm serve MODEL --max-logprobs 50 ...``)
reached by URL with the ``openai`` client, so the model can live on another machine or many GPUs.

Each round's requests are grouped by sampling parameters; every group is one ``completions`` call
with a list of token-id prompts, and the groups of a round are sent concurrently, so the server's
continuous batching runs them together. vLLM's extensions used: ``return_tokens_as_token_ids``
(logprobs keyed ``token_id:N``, never by text, which can collide), ``top_k``, ``ignore_eos``;
``/metrics`` tells whether prefix caching is on; the tokenizer is loaded from the served model's
folder when it is local, or given.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .transport import EngineInfo, Request, Response, Sample, ServingError, sort_logprobs

_TOKEN = re.compile(r"token_id:(-?\d+)$")


def _token_id(text: str) -> int:
    m = _TOKEN.match(text)
    if m is None:
        raise ServingError(f"the server returned a logprob keyed {text!r}, not 'token_id:N': it ignored "
                           "return_tokens_as_token_ids (is it a vLLM server?)")
    return int(m.group(1))


def prefix_caching_from_metrics(text: str) -> bool | None:
    """``enable_prefix_caching`` from vLLM's Prometheus ``cache_config_info`` metric (None: absent)."""
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            m = re.search(r'enable_prefix_caching="(\w+)"', line)
            if m:
                return m.group(1).lower() == "true"
    return None


class ServerTransport:
    """Transport over a running OpenAI-compatible vLLM server at ``url`` (``http://host:port/v1``)."""

    def __init__(self, url: str, *, model: str | None = None, tokenizer=None, vocab_size: int | None = None,
                 max_logprobs: int | None = None, timeout: float = 120.0, concurrency: int = 64,
                 api_key: str = "EMPTY"):
        import httpx
        import openai

        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0)
        self.pool = ThreadPoolExecutor(max_workers=concurrency)
        self._openai = openai
        try:
            models = self.client.models.list().data
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            self.pool.shutdown()
            raise ServingError(f"cannot reach a vLLM server at {self.url}: {err.__class__.__name__}: {err} "
                               "(is `vllm serve` running there?)") from None
        except openai.APIStatusError as err:
            self.pool.shutdown()
            raise ServingError(f"the server at {self.url} answered /models with HTTP {err.status_code}: {err}") from None
        if not models:
            raise ServingError(f"the server at {self.url} serves no model")
        card = next((m for m in models if model in (None, m.id)), None)
        if card is None:
            raise ServingError(f"the server at {self.url} does not serve {model!r} (it serves "
                               f"{', '.join(m.id for m in models)})")
        self.model = card.id
        root = self.url[: -len("/v1")]
        try:
            metrics = httpx.get(root + "/metrics", timeout=timeout).text
        except httpx.HTTPError:
            metrics = ""
        caching = prefix_caching_from_metrics(metrics)
        if tokenizer is None:
            tokenizer = self._load_tokenizer(getattr(card, "root", None) or self.model)
        eos = getattr(tokenizer, "eos_token_id", None)
        try:
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(getattr(card, "root", None) or self.model).eos_token_id
            eos = gen if gen is not None else eos
        except Exception:       # not a local folder with a generation config: the tokenizer's EOS
            pass
        eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        vocab = vocab_size or self._vocab_size(tokenizer, getattr(card, "root", None) or self.model)
        self.info = EngineInfo(max_logprobs=max_logprobs or 10**9, prefix_caching=caching, vocab_size=vocab,
                               eos_token_ids=eos, tokenizer=tokenizer, model=self.model, raw_logprobs=None)
        if caching is None:
            raise ServingError(f"cannot tell whether prefix caching is on at {self.url} (no vllm:cache_config_info "
                               "in /metrics): EPIC needs it; is this a vLLM server?")

    @staticmethod
    def _load_tokenizer(name: str):
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name)
        except Exception as err:
            raise ServingError(f"no tokenizer for the served model {name!r} ({err.__class__.__name__}): EPIC on "
                               "vLLM needs the model's tokenizer for prompts, EOS ids and text; pass tokenizer=") from None

    @staticmethod
    def _vocab_size(tokenizer, name: str) -> int:
        try:
            from transformers import AutoConfig

            return int(AutoConfig.from_pretrained(name).vocab_size)
        except Exception:
            return len(tokenizer)

    def _call(self, group: list):
        r = group[0][1]
        body = dict(top_k=r.top_k if r.top_k is not None else -1, ignore_eos=True, return_tokens_as_token_ids=True)
        kw = dict(model=self.model, prompt=[list(q.prompt) for _, q in group], max_tokens=r.max_tokens,
                  logprobs=r.logprobs, n=r.n, temperature=0.0 if r.top_k is None else 1.0, top_p=1.0,
                  extra_body=body)
        if r.seed is not None:
            kw["seed"] = r.seed
        o = self._openai
        try:
            return self.client.completions.create(**kw)
        except (o.APIConnectionError, o.APITimeoutError) as err:
            raise ServingError(f"lost the vLLM server at {self.url}: {err}") from None
        except o.BadRequestError as err:
            msg = str(err)
            if "logprobs" in msg and ("max" in msg or "greater" in msg):
                raise ServingError(f"the server refuses {r.logprobs} logprobs per position ({msg}): start it with "
                                   f"--max-logprobs {r.logprobs} or lower top_k / rollout_top_k") from None
            raise ServingError(f"the server refused a request: {msg}") from None

    def generate(self, requests: Sequence[Request]) -> list:
        groups: dict = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.group_key(), []).append((i, r))
        out = [None] * len(requests)
        for group, res in zip(groups.values(), self.pool.map(self._call, groups.values())):
            n = group[0][1].n
            choices = sorted(res.choices, key=lambda c: c.index)
            if len(choices) != n * len(group):
                raise ServingError(f"the server returned {len(choices)} choices for {len(group)} prompts x n={n}")
            for j, (i, r) in enumerate(group):
                samples = []
                for c in choices[j * n:(j + 1) * n]:
                    lp = c.logprobs
                    tokens = [_token_id(t) for t in lp.tokens]
                    pos = [sort_logprobs([(_token_id(t), float(v)) for t, v in top.items()], r.logprobs)
                           for top in lp.top_logprobs]
                    samples.append(Sample(tokens, [p[0] for p in pos], [p[1] for p in pos]))
                out[i] = Response(samples, None)
        return out

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


__all__ = ["ServerTransport", "prefix_caching_from_metrics"]
