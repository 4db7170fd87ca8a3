"""``TenantConfig``: a company's context, models, limits and security settings."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from dworkers.errors import Problem, TenantValidationError, shown
from dworkers.names import IDENTIFIER, SLUG, SLUG_HINT, json_schema_pattern, provider_of
from dworkers.redact import redact_url
from dworkers.types import ROLE_NAMES, SourceMap, SourcePath, WorkerRole

# litellm model strings: "provider/model", "model", "bedrock/anthropic.claude-3:0", ...
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9._:@+-]+)*\Z")
API_BASE = re.compile(r"https?://[^\s]+\Z")
COLOR = re.compile(r"#[0-9A-Fa-f]{6}\Z")
LOGO_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_model_name(model: str) -> str | None:
    """Why ``model`` is not a litellm model string ("provider/model"), or ``None`` if it is.

    For ``--model``/``DWORKERS_MODEL`` as well as the tenant's ``models``."""
    if not MODEL_NAME.match(model):
        return f"malformed model name {shown(model)}"
    return None


def check_api_base(url: str) -> str | None:
    """Why ``url`` is not an http(s) base URL, or ``None`` if it is.

    For ``--api-base``/``DWORKERS_API_BASE`` as well as the tenant's ``api_base``; the message
    never repeats a password written in the URL."""
    if not API_BASE.match(url):
        return f"api_base {shown(redact_url(url))} is not an http(s) URL"
    try:
        parts = urlsplit(url)
        credentials = parts.username is not None or parts.password is not None
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"api_base {shown(redact_url(url))} is not a valid URL"
    if credentials:
        # The HTTP client refuses to combine user:password in a URL with the API key's
        # Authorization header, after the run has started.
        return (f"api_base {shown(redact_url(url))} holds credentials (user:password@), "
                "which cannot be sent along with the API key; put the key in the provider's "
                "variable (OPENAI_API_KEY, or the tenant's api_key_env) and leave them out")
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Strict):
    """The default model and optional per-role overrides (litellm model strings)."""

    default: str = Field(default="openai/gpt-4o-mini", description="The model of every role "
                         "without its own: a litellm model string, 'provider/model'.",
                         json_schema_extra=json_schema_pattern(MODEL_NAME))
    analyst: str | None = Field(default=None, description="The analyst's model, if not default.",
                                json_schema_extra=json_schema_pattern(MODEL_NAME))
    researcher: str | None = Field(default=None, description="The researcher's model, if not "
                                   "default.", json_schema_extra=json_schema_pattern(MODEL_NAME))
    data_analyst: str | None = Field(default=None, description="The data analyst's model, if "
                                     "not default.",
                                     json_schema_extra=json_schema_pattern(MODEL_NAME))
    manager: str | None = Field(default=None, description="The manager's model, if not default.",
                                json_schema_extra=json_schema_pattern(MODEL_NAME))
    designer: str | None = Field(default=None, description="The designer's model, if not "
                                 "default.", json_schema_extra=json_schema_pattern(MODEL_NAME))


class WorkerConfig(_Strict):
    """This tenant's settings for one role."""

    custom_instructions: str = Field(default="", description="Added to the role's own "
                                     "instructions in every step of this role.")
    max_concurrent_tasks: int | None = Field(
        default=None, ge=1, le=10_000, description="At most this many steps of this role run at "
        "once (none: only limits.max_concurrency applies).")
    tools: list[str] = Field(
        default_factory=list, description="MCP tools every step of this role may call, unless "
        "the step names its own: 'server' (all its tools) or 'server.tool' (see mcp_servers).")


class RateLimitConfig(_Strict):
    """A model's provider limits, when the tenant knows them (else they are learned from the
    provider's answers)."""

    rpm: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                              description="Requests per minute.")
    tpm: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                              description="Tokens per minute (prompt + answer).")


class LimitsConfig(_Strict):
    """What one run may use."""

    max_concurrency: int = Field(default=8, ge=1, le=10_000, description="Steps running at "
                                 "once (--max-concurrency wins).")
    max_cost_usd: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Once a run has spent this much "
        "USD no new step starts; the rest are skipped (--max-cost wins).")
    timeout_seconds: float = Field(
        default=120, gt=0, le=86_400, allow_inf_nan=False, description="Seconds one attempt may "
        "take, from sending the request to the end of the whole answer, streamed or not, for "
        "steps that do not set their own timeout_seconds.")
    retry_max: int = Field(
        default=2, ge=0, le=100, strict=True, description="Retries after a timeout, a 5xx or an "
        "empty answer, for steps that do not set their own retry_max.")
    rate_limit_wait_seconds: float = Field(
        default=600, ge=0, le=86_400, allow_inf_nan=False, description="How long one step may "
        "wait in all, in seconds, for rate limits (429) to lift.")
    on_truncation: Literal["keep", "fail"] = Field(
        default="keep", description="An answer cut off at the model's token limit: 'keep' it "
        "(marked truncated) or 'fail' the step.")
    max_tool_calls: int = Field(
        default=10, ge=1, le=10_000, strict=True, description="The most MCP tool calls one "
        "step may make; a model that asks for more fails its step.")
    rate_limits: dict[str, RateLimitConfig] = Field(
        default_factory=dict, description="Model (or glob such as 'openai/*') → its provider "
        "limits (rpm, tpm); calls stay under them and under what the provider's answers say.")


class ModelPrice(_Strict):
    """What a model costs, for models whose price litellm does not know (self-hosted, behind
    a gateway): USD per million prompt (input) and completion (output) tokens."""

    input_per_million: float = Field(ge=0, le=1_000_000, allow_inf_nan=False,
                                     description="USD per million prompt tokens.")
    output_per_million: float = Field(ge=0, le=1_000_000, allow_inf_nan=False,
                                      description="USD per million completion tokens.")


class SecurityConfig(_Strict):
    """Which models this tenant may use."""

    allowed_models: list[str] = Field(
        default_factory=lambda: ["*"], description="Glob patterns of the models this tenant may "
        "use, e.g. 'openai/*'; any other model is refused before the first call.")


class BrandingConfig(_Strict):
    """How the tenant's deliverables (.docx, .pdf) look: its name and logo on the title page
    and in the header of every page, its colour on headings and table headers."""

    company_name: str = Field(default="", description="The name on the title page and in the "
                              "header of every page (default: the tenant's name).")
    logo: str | None = Field(default=None, description="A .png or .jpg file, relative to the "
                             "tenant file, on the title page and in the header.")
    primary_color: str | None = Field(default=None, description="The colour of headings and "
                                      "table headers, as '#RRGGBB'.",
                                      json_schema_extra=json_schema_pattern(COLOR))
    template: str | None = Field(default=None, description="A .docx, relative to the tenant "
                                 "file, whose styles, header and footer Word deliverables use.")


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpServerConfig(_Strict):
    """One MCP server, as in the ``mcpServers`` entries editors keep: a ``command`` started
    over stdio, or the ``url`` of a streamable HTTP server. Secrets are written as ``${VAR}``
    and read from the environment when the server starts, never from the file."""

    command: str | None = Field(default=None, description="The program that serves MCP over "
                                "stdio, e.g. 'npx' or 'python'.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for "
                                "the program; '${VAR}' is replaced by the variable's value.")
    url: str | None = Field(default=None, description="A streamable HTTP MCP endpoint "
                            "(http or https URL).")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers for url; "
                                    "'${VAR}' is replaced by the variable's value.")
    pure: bool = Field(default=False, description="Its tools answer the same arguments the "
                       "same way and change nothing, so a step using them may be answered from "
                       "the prompt cache.")
    timeout_seconds: float = Field(default=60, gt=0, le=86_400, allow_inf_nan=False,
                                   description="The longest one tool call may take.")
    max_result_chars: int = Field(default=20_000, ge=100, le=10_000_000, description="A tool's "
                                  "result is cut to this many characters (head and tail kept).")


Entry = TypeVar("Entry")


def entry_for(table: Mapping[str, Entry], model: str) -> Entry | None:
    """``table``'s entry for ``model`` (keys are model strings or globs): its own, else the
    first glob that matches it."""
    if model in table:
        return table[model]
    return next((entry for pattern, entry in table.items()
                 if fnmatch.fnmatchcase(model, pattern)), None)


StructuredMode = Literal["native", "json_mode", "instructions"]
"""How a typed step's JSON is asked for (see ``dworkers.llm.LiteLLMClient.structured_mode``)."""


class TenantConfig(_Strict):
    """Everything a run needs to know about the company it works for. Never holds secrets:
    ``api_key_env`` names the environment variable that holds the key for the provider of
    ``models.default`` (see ``api_key_env_for``)."""

    id: str = Field(description="The tenant's id, a lowercase slug: 'dworkers run --tenant ID'.",
                    json_schema_extra=json_schema_pattern(SLUG))
    name: str = Field(default="", description="The company's display name (default: the id).")
    context: str = Field(default="", description="Company background given to every worker.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="The model of each "
                                 "role: litellm model strings such as 'openai/gpt-4o-mini'.")
    workers: dict[WorkerRole, WorkerConfig] = Field(
        default_factory=dict, description="Settings per role: custom instructions, concurrency.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="What one run may "
                                 "use: concurrency, cost, time per attempt.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="Which models "
                                     "this tenant may use, as glob patterns.")
    api_base: str | None = Field(
        default=None, description="An OpenAI-compatible endpoint (http or https URL) for every "
        "call (--api-base wins).", json_schema_extra=json_schema_pattern(API_BASE))
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Prices of models litellm has none for (self-hosted, "
        "behind a gateway), by model string or glob: {'openai/gpt-mini': {input_per_million: "
        "0.15, output_per_million: 0.6}}.")
    branding: BrandingConfig | None = Field(
        default=None, description="The company name, logo, colour and Word template of every "
        "deliverable (.docx, .pdf).")
    context_windows: dict[str, Annotated[int, Field(ge=1, le=100_000_000)]] = Field(
        default_factory=dict, description="Context windows in tokens of models litellm does not "
        "know (self-hosted, behind a gateway), by model string or glob: {'openai/local-*': "
        "32768}. A run whose prompt would not fit stops before any call.")
    structured_output: dict[str, StructuredMode] = Field(
        default_factory=dict, description="How typed steps ask a model for JSON where litellm "
        "cannot tell (a gateway's own model names), by model string or glob: 'native' (a JSON "
        "Schema response_format), 'json_mode' (response_format json_object) or 'instructions' "
        "(no response_format: the schema in the prompt only). Default: native where litellm "
        "says the model takes a JSON Schema, else json_mode.")
    formats: list[Literal["md", "docx", "pdf"]] | None = Field(
        default=None, description="The deliverables 'dworkers run' writes when --format is not "
        "given (default: md): any of md, docx, pdf.")
    api_key_env: str | None = Field(
        default=None,
        description=(
            "The name of the environment variable (never the key itself) holding the key for "
            "the provider of models.default; models of other providers use their provider's "
            "usual variable (ANTHROPIC_API_KEY, ...)."
        ),
        json_schema_extra=json_schema_pattern(IDENTIFIER),
    )

    mcp_servers: dict[str, McpServerConfig] = Field(
        default_factory=dict, description="MCP servers whose tools steps may use (tools: "
        "[server] or [server.tool]): a name → command/args/env (stdio) or url/headers (HTTP).")

    _source: SourceMap | None = PrivateAttr(default=None)

    @property
    def source(self) -> SourceMap | None:
        return self._source

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def resolved_branding(self) -> BrandingConfig | None:
        """``branding`` ready for the document writers: the company name filled in (the
        tenant's name by default) and the logo and template as absolute paths, resolved
        against the tenant file's folder; ``None`` when the tenant sets no branding."""
        if self.branding is None:
            return None
        brand = self.branding
        return brand.model_copy(update={
            "company_name": brand.company_name or self.display_name,
            "logo": str(self._branding_file(brand.logo)) if brand.logo else None,
            "template": str(self._branding_file(brand.template)) if brand.template else None,
        })

    def _branding_file(self, name: str) -> Path:
        path = Path(name).expanduser()
        if self._source is not None and not path.is_absolute():
            path = Path(self._source.file).parent / path
        return path.absolute()

    def model_for(self, role: WorkerRole) -> str:
        override: str | None = getattr(self.models, role.value)
        return override or self.models.default

    def api_key_env_for(self, model: str) -> str | None:
        """The variable holding ``model``'s key: ``api_key_env`` for a model of the same
        provider as ``models.default`` ("openai" when a model names none), else ``None`` (the
        provider's usual variable, which litellm reads itself)."""
        if self.api_key_env and provider_of(model) == provider_of(self.models.default):
            return self.api_key_env
        return None

    def price_for(self, model: str) -> ModelPrice | None:
        """The declared price of ``model``: an exact entry, else the first matching glob."""
        return entry_for(self.prices, model)

    def structured_output_for(self, model: str) -> StructuredMode | None:
        """How typed steps ask ``model`` for JSON, if the tenant says: an exact entry, else the
        first matching glob; ``None``: as litellm says of the model."""
        return entry_for(self.structured_output, model)

    def context_window_for(self, model: str) -> int | None:
        """The context window the tenant states for ``model``: an exact entry, else the first
        matching glob."""
        return entry_for(self.context_windows, model)

    def rate_limits_for(self, model: str) -> tuple[float | None, float | None]:
        """(rpm, tpm) the tenant states for ``model``: its own entry, else the first glob that
        matches it, else (None, None)."""
        entry = entry_for(self.limits.rate_limits, model)
        return (entry.rpm, entry.tpm) if entry else (None, None)

    def worker(self, role: WorkerRole) -> WorkerConfig:
        return self.workers.get(role) or WorkerConfig()

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.security.allowed_models)

    def validate_config(self) -> None:
        problems = self.check()
        if problems:
            raise TenantValidationError(problems)

    def check(self) -> list[Problem]:
        """Every semantic problem: ids, model names, models outside ``allowed_models``."""
        found: list[Problem] = []

        def problem(path: SourcePath, message: str, hint: str, code: str) -> None:
            file, line, column = f"<tenant {self.id}>", None, None
            if self._source is not None:
                file = self._source.file
                line, column = self._source.at(path)
            found.append(Problem(message, hint, code, file, line, column))

        if not SLUG.match(self.id):
            problem(("id",), f"tenant id {shown(self.id)} is not valid", SLUG_HINT,
                    "invalid-tenant-id")
        patterns = self.security.allowed_models
        allowed = ", ".join(patterns[:10]) + (", ..." if len(patterns) > 10 else "")
        for role in ("default", *ROLE_NAMES):
            model = getattr(self.models, role)
            if model is None:
                continue
            path: SourcePath = ("models", role)
            error = check_model_name(model)
            if error:
                problem(path, f"{error} for {role}",
                        "write a litellm model string such as 'openai/gpt-4o-mini'",
                        "invalid-model")
            elif not self.allows(model):
                problem(path, f"model {shown(model)} for {role} is not in "
                        f"security.allowed_models ({allowed or 'nothing'})",
                        "pick an allowed model or extend allowed_models", "model-not-allowed")
        for i, pattern in enumerate(self.security.allowed_models):
            if not pattern.strip():
                problem(("security", "allowed_models", i), "empty pattern in allowed_models",
                        "remove it, or write a glob such as 'openai/*'", "invalid-pattern")
        for pattern in self.structured_output:
            if not pattern.strip():
                problem(("structured_output", pattern), "empty model pattern in "
                        "structured_output", "write a model or a glob such as 'openai/*'",
                        "invalid-pattern")
        if self.api_key_env is not None and not IDENTIFIER.match(self.api_key_env):
            problem(("api_key_env",), f"api_key_env {shown(self.api_key_env)} is not an "
                    "environment variable name",
                    "name the variable that holds the key, e.g. ACME_OPENAI_KEY",
                    "invalid-env-name")
        error = check_api_base(self.api_base) if self.api_base is not None else None
        if error:
            problem(("api_base",), error, "write it as http://host:port/v1", "invalid-url")
        if self.branding is not None:
            for path, message, hint, code in self._branding_problems(self.branding):
                problem(path, message, hint, code)
        for path, message, hint, code in self._tool_problems():
            problem(path, message, hint, code)
        return found

    def _tool_problems(self) -> list[tuple[SourcePath, str, str, str]]:
        """MCP servers that name no way to reach them (or two), and role defaults naming a
        server the tenant does not declare."""
        found: list[tuple[SourcePath, str, str, str]] = []
        for name, server in self.mcp_servers.items():
            at: SourcePath = ("mcp_servers", name)
            if not SLUG.match(name):
                found.append((at, f"MCP server name {shown(name)} is not valid", SLUG_HINT,
                              "invalid-server-name"))
            if (server.command is None) == (server.url is None):
                found.append((at, f"MCP server {shown(name)} needs either command (stdio) or "
                              "url (streamable HTTP)", "give exactly one of them",
                              "invalid-mcp-server"))
            if server.url is not None and check_api_base(server.url) is not None:
                found.append(((*at, "url"), f"url of MCP server {shown(name)} is not an http(s) "
                              "URL without credentials", "write it as http://host:port/mcp and "
                              "put secrets in headers as '${VAR}'", "invalid-url"))
            if server.command is not None and not server.command.strip():
                found.append(((*at, "command"), f"MCP server {shown(name)} has an empty "
                              "command", "name the program to start", "invalid-mcp-server"))
        for role, worker in self.workers.items():
            for index, entry in enumerate(worker.tools):
                error = self.unknown_tool_server(entry)
                if error:
                    found.append((("workers", role.value, "tools", index), error,
                                  self.tool_hint(), "unknown-tool-server"))
        return found

    def unknown_tool_server(self, entry: str) -> str | None:
        """Why ``entry`` (``server`` or ``server.tool``) names no server of this tenant."""
        server = entry.split(".", 1)[0]
        if server in self.mcp_servers:
            return None
        return f"tools names MCP server {shown(server)}, which tenant {self.id!r} does not declare"

    def tool_hint(self) -> str:
        declared = ", ".join(sorted(self.mcp_servers)[:10])
        return (f"use one of: {declared}" if declared
                else "declare it under mcp_servers: in the tenant file")

    def tools_for(self, role: WorkerRole, step_tools: list[str]) -> list[str]:
        """A step's tools: its own, else its role's default in this tenant."""
        return step_tools or self.worker(role).tools

    def _branding_problems(self, brand: BrandingConfig,
                           ) -> list[tuple[SourcePath, str, str, str]]:
        found: list[tuple[SourcePath, str, str, str]] = []
        if brand.primary_color is not None and not COLOR.match(brand.primary_color):
            found.append((("branding", "primary_color"), f"primary_color "
                          f"{shown(brand.primary_color)} is not a colour",
                          "write it as '#RRGGBB', e.g. '#1F4E79'", "invalid-color"))
        for key, name, suffixes in (("logo", brand.logo, LOGO_SUFFIXES),
                                    ("template", brand.template, (".docx",))):
            if name is None:
                continue
            at: SourcePath = ("branding", key)
            if not name.lower().endswith(suffixes):
                found.append((at, f"{key} {shown(name)} is not a {' or '.join(suffixes)} file",
                              f"name a {' or '.join(suffixes)} file", f"invalid-{key}"))
            elif not self._branding_file(name).is_file():
                found.append((at, f"{key} file {shown(name)} does not exist "
                              f"(looked for {shown(str(self._branding_file(name)), 120)})",
                              "fix the path (relative to the tenant file) or add the file",
                              f"missing-{key}"))
        return found
