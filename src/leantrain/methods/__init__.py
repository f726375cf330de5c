"""Pruning-while-training methods: the `Method` protocol, the registry of methods by name, and
the methods themselves (importing this package registers each one)."""

from __future__ import annotations

from . import dcp, freezeout, learndrop, static, stochastic_depth, tp_prune  # registers each
from .base import Method, MethodWarning, Progress
from .registry import METHODS, build_methods, method_fields, register_method

__all__ = ["Method", "MethodWarning", "Progress", "METHODS", "build_methods", "method_fields",
           "register_method", "dcp", "freezeout", "learndrop", "static", "stochastic_depth",
           "tp_prune"]
