"""Token estimates: how big a call will be before it is sent, learned from earlier answers.

The rate gate books a call's tokens before it goes, and the budget holds its cost: both need
the call's size before the provider has counted it. ``TokenEstimator`` gives it as prompt
tokens (the prompt's characters, scaled by what the provider counted for earlier prompts of
the same model) plus completion tokens (the longest recent answer of the same step, else
``DEFAULT_OUTPUT_TOKENS``). For a model whose price only its endpoint's reports reveal, it also
learns what a token has cost. Standard library only: no I/O, no litellm.
"""

from __future__ import annotations

import math

DEFAULT_OUTPUT_TOKENS = 256  # a step's expected answer length before one has been seen
CHARS_PER_TOKEN = 4.0  # a prompt's length in tokens, before the provider has counted one


class TokenEstimator:
    """A call's tokens before it is sent, per model and step; see the module docstring."""

    def __init__(self) -> None:
        self._chars_per_token: dict[str, float] = {}
        self._output: dict[tuple[str, str], float] = {}
        self._usd_per_token: dict[str, float] = {}

    def split(self, model: str, step: str, prompt_chars: int) -> tuple[int, int]:
        """(prompt tokens, completion tokens) a call of ``step`` to ``model`` is expected to
        use; the completion part is never 0, so a budget always holds something for it."""
        ratio = self._chars_per_token.get(model, CHARS_PER_TOKEN)
        output = self._output.get((model, step), DEFAULT_OUTPUT_TOKENS)
        return math.ceil(prompt_chars / ratio), max(1, math.ceil(output))

    def estimate(self, model: str, step: str, prompt_chars: int) -> int:
        """Prompt and completion tokens together: what the rate gate books."""
        prompt, completion = self.split(model, step, prompt_chars)
        return max(1, prompt + completion)

    def usd_per_token(self, model: str) -> float | None:
        """The most a token of ``model`` has cost lately by its endpoint's reports (prompt and
        completion together), or ``None`` before any report."""
        return self._usd_per_token.get(model)

    def learn(self, model: str, step: str, prompt_chars: int, prompt_tokens: int,
              completion_tokens: int, cost_usd: float | None = None) -> None:
        """Learn from an answer: its counted tokens, and what it cost when that is known."""
        if prompt_tokens > 0 and prompt_chars > 0:
            seen = prompt_chars / prompt_tokens
            old = self._chars_per_token.get(model)
            self._chars_per_token[model] = seen if old is None else 0.8 * old + 0.2 * seen
        if completion_tokens > 0:
            old_output = self._output.get((model, step))
            # Decays towards typical lengths, jumps to a longer answer at once.
            self._output[(model, step)] = (completion_tokens if old_output is None
                                           else max(completion_tokens, 0.9 * old_output
                                                    + 0.1 * completion_tokens))
        tokens = prompt_tokens + completion_tokens
        if cost_usd is not None and tokens > 0:
            # The dearest rate seen, decaying slowly: a completion token usually costs more
            # than a prompt token, so an answer-heavy call must not be held at a cheap rate.
            rate = cost_usd / tokens
            old_rate = self._usd_per_token.get(model)
            self._usd_per_token[model] = (rate if old_rate is None
                                          else max(rate, 0.95 * old_rate + 0.05 * rate))
