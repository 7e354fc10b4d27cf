"""Text of a sequence as its tokens arrive: incremental detokenization and stop strings.

Decoding the whole output after every token costs O(n) per token; ``TextStream`` decodes a window
of the last few tokens instead (the approach of vLLM's and TGI's detokenizers): the text of tokens
``[prefix, read)`` was already emitted, and the new text is what ``[prefix, now)`` decodes to beyond
it. Text that ends in an incomplete UTF-8 sequence (a U+FFFD at the end) waits for the next token.

Stop strings end the text before their first occurrence (the OpenAI API's ``stop``); text that
could still grow into a stop string is held back until it cannot.
"""
from __future__ import annotations


class TextStream:
    """``push(token) -> new text``; ``stopped`` once a stop string appeared (the text before it is
    everything emitted); ``flush()`` returns what was held back at the end."""

    def __init__(self, tokenizer, prompt_tail: list[int], stop: list[str] = ()):
        self.tokenizer = tokenizer
        # a few prompt tokens give the first output tokens their context (leading-space rules)
        self.tokens = list(prompt_tail)
        self.prefix = 0
        self.read = len(self.tokens)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.pending = ""               # decoded, not yet emitted (could start a stop string)
        self.stopped = False

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add ``token``; the text that can be emitted now (possibly empty)."""
        if self.stopped:
            return ""
        self.tokens.append(int(token))
        before = self._decode(self.tokens[self.prefix:self.read])
        now = self._decode(self.tokens[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""                   # an incomplete character, or nothing printable yet
        new = now[len(before):]
        self.prefix, self.read = self.read, len(self.tokens)
        self.tokens = self.tokens[self.prefix:]          # keep only the window
        self.read -= self.prefix
        self.prefix = 0
        return self._emit(new)

    def _emit(self, new: str) -> str:
        text = self.pending + new
        found = [at for at in (text.find(s) for s in self.stop) if at >= 0]
        if found:
            self.stopped, self.pending = True, ""
            return text[:min(found)]
        if self.hold == 0:
            self.pending = ""
            return text
        # hold back the longest tail that is a proper prefix of some stop string
        keep = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if s.startswith(text[-n:]):
                    keep = n
                    break
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """At the end of the sequence: the held-back text (it never became a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
