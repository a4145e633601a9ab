"""Utilities that are not modules (checkpoint loading helpers)."""
from .checkpoint import allow_mmengine_checkpoints

__all__ = ['allow_mmengine_checkpoints']
