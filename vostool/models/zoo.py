"""Imports every model module so that each registers itself."""

from vostool.models import crvos  # noqa: F401
from vostool.models import rgmp  # noqa: F401
from vostool.models import gam  # noqa: F401
from vostool.models import dtn  # noqa: F401
from vostool.models import rvos  # noqa: F401
