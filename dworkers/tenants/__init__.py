"""Tenants: a company's context, models, limits and security settings."""

from dworkers.tenants.config import TenantConfig

__all__ = ["TenantConfig"]
