"""Unregistered primitives shared by the modules."""
from .tracing import is_tracing

__all__ = ['is_tracing']
