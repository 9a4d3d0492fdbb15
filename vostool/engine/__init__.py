"""The propagation engine: one loop that every command drives."""

from vostool.engine.device import autocast, resolve_device, resolve_precision
from vostool.engine.propagator import Propagator, propagate
from vostool.models.registry import load_model

__all__ = ["Propagator", "propagate", "load_model", "autocast", "resolve_device", "resolve_precision"]
