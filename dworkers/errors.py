"""The exception tree. Every error a user can cause is a ``DworkersError``.

    DworkersError                  anything dworkers reports to a user (exit code 2 by default)
    ├── ProblemsError              one or more located ``Problem``s (file:line:col: message — fix)
    │   ├── LoadError              a plan or tenant file that cannot be read or parsed
    │   ├── PlanValidationError    a plan whose graph, steps or templates are wrong (also a
    │   │                          PlanError, as the seed project has it)
    │   ├── TenantValidationError  a tenant whose models, limits or security settings are wrong
    │   ├── InputError             run inputs missing, unknown or unreadable
    │   └── PreflightError         a model that is not allowed, or a key that is not set
    ├── NotFoundError              a plan, tenant or run name that is not registered
    ├── PlanError                  anything wrong with a plan (the seed project's name)
    │   ├── PlanValidationError    (see above: a ProblemsError too)
    │   └── PlanNotFoundError      ``BasePlan.get_step`` with an id the plan does not have
    ├── HistoryError               the run history database cannot be used
    └── LLMError                   a provider call failed (carried by the step, not raised by a run)
        ├── RateLimitError         429; waited out as the endpoint asks, within a time limit
        ├── ProviderTimeoutError   no whole answer within the step's timeout_seconds; retried
        ├── ProviderUnavailableError  5xx or a connection error; retried
        ├── InvalidAnswerError     a 200 that is not an answer (empty, unparseable); retried
        ├── AuthenticationError    401/403; not retried
        └── BadRequestError        400/404/422 and other refusals; not retried
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a user's input, where it is, and how to fix it."""

    message: str
    hint: str = ""
    code: str = "invalid"
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def location(self) -> str:
        parts = [self.file or "<input>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def render(self) -> str:
        text = f"{self.location}: {self.message}"
        return f"{text} — {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["message"] = f"{self.message} — {self.hint}" if self.hint else self.message
        del data["hint"]
        return data


class DworkersError(Exception):
    """Base of every error that dworkers reports to a user."""

    exit_code = 2


class ProblemsError(DworkersError):
    """An error made of located problems; ``str()`` renders one per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


class LoadError(ProblemsError):
    """A file could not be read or parsed."""




class TenantValidationError(ProblemsError):
    """A tenant configuration is invalid."""


class InputError(ProblemsError):
    """Run inputs are missing, unknown or unreadable."""


class PreflightError(ProblemsError):
    """A run cannot start: a model is not allowed or a provider key is missing."""


class NotFoundError(DworkersError):
    """A named plan, tenant or run does not exist."""

    def __init__(self, kind: str, name: str, known: Sequence[str], hint: str = "") -> None:
        self.kind, self.name = kind, name
        guess = did_you_mean(name, known)
        message = f"no {kind} named {shown(name)}"
        if guess:
            message += f" — {suggestion(name, guess)}"
        elif hint:
            message += f" — {hint}"
        super().__init__(message)


class PlanError(DworkersError):
    """Anything wrong with a plan: invalid, or used wrongly from Python (the seed project's
    name for plan errors: ``pytest.raises(PlanError)`` catches a failed ``validate()``)."""


class PlanValidationError(ProblemsError, PlanError):
    """A plan is invalid (graph, steps, templates): located problems, and a ``PlanError``."""


class PlanNotFoundError(PlanError):
    """``BasePlan.get_step`` was asked for a step the plan does not have."""

    def __init__(self, plan: str, step_id: str, known: Sequence[str]) -> None:
        self.plan, self.step_id = plan, step_id
        guess = did_you_mean(step_id, known)
        message = f"plan {plan!r} has no step {shown(step_id)}"
        if guess:
            message += f" — {suggestion(step_id, guess)}"
        super().__init__(message)


class HistoryError(DworkersError):
    """The run history database cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one attempt consumed. ``cost_usd`` is ``None`` when it cannot be known (a model
    without a price); ``estimated`` when the counts were not reported by the provider but
    estimated from what was sent and received (an attempt cut off by a timeout, say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    estimated: bool = False


class LLMError(DworkersError):
    """A provider call failed. ``retryable`` says whether another attempt may succeed.

    ``headers`` are the answer's response headers, normalised by ``provider_headers.normalise``
    (empty when no answer came); ``retry_after`` is how long the endpoint asked to wait;
    ``usage`` is what the failed attempt consumed anyway (a stream cut off half-way is billed).
    """

    retryable = False
    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = dict(headers or {})
        self.status = status
        self.usage = usage


class RateLimitError(LLMError):
    retryable = True


class ProviderTimeoutError(LLMError):
    retryable = True


class ProviderUnavailableError(LLMError):
    retryable = True


class InvalidAnswerError(LLMError):
    """The endpoint answered 200 with nothing usable: no text, or a body that is not an answer.
    Such an answer is never kept as a step's deliverable."""

    retryable = True


class AuthenticationError(LLMError):
    pass


class BadRequestError(LLMError):
    pass


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages quote what users wrote, which
    can be arbitrarily long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + "..." + text[-1] if text[-1] in "'\"" else text[: limit - 3] + "..."


def suggestion(name: str, guess: str, template: str = "did you mean {!r}?") -> str:
    """"did you mean 'scope'?" — and, when ``name`` only looks like ``guess`` (a Cyrillic 'с'
    for a Latin 'c', a zero-width space), which characters differ, since the two strings
    would otherwise read the same."""
    import unicodedata

    text = template.format(guess)
    odd = [c for c in dict.fromkeys(name) if not c.isascii() and c not in guess]
    if odd and unicodedata.normalize("NFKC", name) != guess:
        described = ", ".join(f"{c!r} is U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}"
                              for c in odd[:3])
        text += f" (they only look alike: {described})"
    return text


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The closest known name, if one is close enough to be a likely typo."""
    import difflib

    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
