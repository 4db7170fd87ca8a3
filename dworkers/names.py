"""What a name may look like: slugs (plan names, step and tenant ids) and identifiers (inputs,
template placeholders, environment variables). The one home of these patterns."""

from __future__ import annotations

import re
from typing import Any

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
"""Plan names, step ids and tenant ids: they name files, so nothing else is allowed."""
SLUG_HINT = "use lowercase letters, digits, '-' and '_', starting with a letter or digit"
MAX_SLUG_LENGTH = 100
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
"""Input names, ``{placeholder}`` names and environment variable names."""


def too_long(value: str) -> str:
    """How a slug over the limit is described, so the user learns the limit."""
    return f"{len(value)} characters long, over the limit of {MAX_SLUG_LENGTH}"


def slug_suggestion(name: str) -> str | None:
    """``name`` made into a valid slug ("Gather Data" → "gather-data"), if that is possible."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")
    return slug if slug and SLUG.match(slug) and len(slug) <= MAX_SLUG_LENGTH else None


def json_schema_pattern(regex: re.Pattern[str]) -> dict[str, Any]:
    """``regex`` (a full match, written ``...\\Z``) as a JSON Schema ``pattern``, so that the
    schema editors read (``dworkers schema``) checks names with the very same expression."""
    return {"pattern": "^" + regex.pattern.removesuffix(r"\Z") + "$"}


def provider_of(model: str) -> str:
    """litellm's provider prefix of ``model``: ``anthropic/claude-x`` → ``anthropic``; a model
    without a prefix is OpenAI's."""
    prefix, sep, _ = model.partition("/")
    return prefix.lower() if sep and prefix else "openai"
