"""The only package that reads YAML: plan and tenant files → validated models, with positions.

- ``build``: plans and tenants from loaded values, every problem found in one pass.
- ``reader``: the bounded YAML reader (untrusted files: size, depth and value count capped).
- ``problems``: pydantic's errors → located problems; the one helper that places a problem.

Nothing here can raise anything but ``LoadError``, ``PlanValidationError`` or
``TenantValidationError`` for any input.
"""

from dworkers.loader.build import (
    FileKind,
    detect_kind,
    load_any,
    load_plan,
    load_tenant,
    plan_from_data,
    tenant_from_data,
)
from dworkers.loader.reader import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, read_yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "FileKind",
    "detect_kind",
    "load_any",
    "load_plan",
    "load_tenant",
    "plan_from_data",
    "read_yaml",
    "tenant_from_data",
]
