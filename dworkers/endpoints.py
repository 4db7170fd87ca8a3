"""Which endpoint a model's calls go to, however it was set: ``--api-base`` (or
``DWORKERS_API_BASE``), the tenant's ``api_base``, or the provider's own environment variables
(``OPENAI_API_BASE``, ``OPENAI_BASE_URL``, ``ANTHROPIC_API_BASE``, ...), as litellm reads them.

An answer is only reused for the endpoint that gave it, so the cache key includes this.
"""

from __future__ import annotations

import os

from dworkers.names import provider_of


def endpoint_for(model: str, api_base: str | None) -> str | None:
    """The endpoint ``model`` is called at: ``api_base`` when given, else what the provider's
    environment variables say (every one litellm may read, so none can change unnoticed), else
    ``None`` for the provider's default."""
    if api_base:
        return api_base
    stem = provider_of(model).upper().replace("-", "_")
    found = [f"{name}={value}" for name in (f"{stem}_API_BASE", f"{stem}_BASE_URL")
             if (value := os.environ.get(name))]
    return " ".join(found) or None
