"""Utilities that are not modules: checkpoints, channel arithmetic, argument checks."""
from .channels import make_divisible, reduced_channels
from .checkpoint import allow_mmengine_checkpoints
from .pretrained import check_pretrained, pretrained_entries
from .validation import check_cfg, check_int, check_int_pair

__all__ = [
    'allow_mmengine_checkpoints', 'check_cfg', 'check_int', 'check_int_pair', 'check_pretrained',
    'make_divisible', 'pretrained_entries', 'reduced_channels'
]
