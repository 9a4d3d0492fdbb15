"""Imports every model module so that each registers itself."""

from vostool.models import crvos  # noqa: F401
