"""Remove secrets from text that dworkers itself produces and saves: every provider error
message (which then reaches the screen, run.json, report.md and the history) and the
``--api-base`` URL kept in the history. Model outputs are the user's deliverables and are kept
as they are.

``redact(text, secrets)`` replaces, in this order:

1. the given secret values and the values of environment variables whose names look secret
   (``*_KEY``, ``*_KEY_*``, ``*APIKEY*``, ``*_TOKEN``, ``*_SECRET*``, ``*PASSWORD*``; values of
   8 characters or more);
2. credentials in URLs (``scheme://user:password@host`` → ``scheme://[redacted]@host``);
3. key-shaped strings: ``sk-...``/``sk-ant-...`` and other vendors' prefixed keys,
   ``Bearer <token>``, ``Authorization: <scheme> <value>``, and ``name=value``/``name: value``
   pairs whose name ends in key, token, secret or password — where the value looks generated,
   so that "missing key: OPENAI_API_KEY" or "password: must contain a digit" stay readable.

Every pattern is compiled once, and each is anchored so that it is tried only where a match can
start: the work is linear in the length of the text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

MARKER = "[redacted]"

MIN_ENV_SECRET = 8  # shorter values ("1", "true") would redact ordinary words
MIN_GIVEN_SECRET = 4  # an empty or one-letter "secret" would redact everything

_SECRET_ENV_NAME = re.compile(r"_KEY\Z|_KEY_|APIKEY|_TOKEN\Z|_SECRET|PASSWORD")

# scheme://user[:password]@ — the scheme must start a word, so a long run of letters is
# scanned once rather than from each of its positions.
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*@"
)

# Vendors' key formats; the prefix kept is public, the rest is not.
_PREFIXED_KEY = re.compile(
    r"(?<![A-Za-z0-9_])"
    r"(sk-(?:ant-|proj-|or-)?|gsk_|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|hf_|xox[abposr]-|AIza|AKIA)"
    r"[A-Za-z0-9_\-]{8,}"
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")
# A token has a digit somewhere: "bearer instruments" is prose.
_BEARER = re.compile(
    r"\b(Bearer|bearer|BEARER)(\s+)(?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{8,}"
)
# Only a known scheme's credentials: "Authorization: permission denied" is prose.
_AUTHORIZATION = re.compile(
    r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
    r"(?:bearer|basic|token|apikey|api-key|key|digest)\s+)[^\s\"',;]{8,}"
)
# name=value / name: value / "name": "value", where name ends with a secret-looking word.
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_.-])"
    r"([A-Za-z0-9_.-]*(key|token|secret|password|passwd|pwd)[\"']?\s*([:=])\s*([\"']?))"
    r"([^\s\"'&,;<>()\[\]{}]+)"
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with secrets replaced by ``[redacted]`` (see the module's docstring)."""
    if not text:
        return text
    values = {s for s in secrets if s and len(s.strip()) >= MIN_GIVEN_SECRET}
    values.update(_env_secrets())
    for value in sorted(values, key=len, reverse=True):  # a longer secret may hold a shorter
        if value in text:
            text = text.replace(value, MARKER)
    text = _URL_USERINFO.sub(rf"\1{MARKER}@", text)
    text = _PREFIXED_KEY.sub(rf"\1…{MARKER}", text)
    text = _JWT.sub(MARKER, text)
    text = _BEARER.sub(rf"\1\2{MARKER}", text)
    text = _AUTHORIZATION.sub(rf"\1{MARKER}", text)
    return _ASSIGNMENT.sub(_assignment, text)


def redact_url(url: str) -> str:
    """``url`` without ``user:password@``, and with secret-looking query values redacted."""
    return redact(_URL_USERINFO.sub(r"\1", url))


def _env_secrets() -> set[str]:
    return {
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_ENV_SECRET and _SECRET_ENV_NAME.search(name.upper())
    }


def _assignment(match: re.Match[str]) -> str:
    prefix, word, value = match.group(1), match.group(2).lower(), match.group(5)
    assigned = match.group(3) == "=" or bool(match.group(4))  # key=value or "key": "value"
    if match.string.startswith(MARKER, match.end()) or _ENV_NAME.match(value):
        return match.group(0)  # already redacted, or a variable's name ("missing key: NAME")
    if word in ("key", "token") or not assigned:
        # "key: value", "password: must contain..." also occur in ordinary messages, so only
        # a value that looks generated is redacted.
        keep = not _looks_generated(value)
    else:
        keep = len(value) < 4  # password=..., "secret": "..."
    return match.group(0) if keep else prefix + MARKER


_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+\Z")


def _looks_generated(value: str) -> bool:
    """20+ characters, or 8+ with a digit or symbol: not a word of an error message."""
    if len(value) >= 20:
        return True
    return len(value) >= 8 and any(not c.isalpha() for c in value)
