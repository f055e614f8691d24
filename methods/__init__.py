"""Quantizers for bitbench, each behind the registry in `methods.registry`."""

from methods.registry import available, create, load, resolve

__all__ = ["available", "create", "load", "resolve"]
