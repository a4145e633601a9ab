"""Unregistered primitives the modules share (channels, checks, coordinates, strip pooling,
blur, memory layouts, norm modes, tracing); the module folders import only these and the registry.
"""
from .activation import activate, build_act
from .blur import PAD_MODES, Blur, binomial_filter, check_blur_args
from .channels import make_divisible, reduced_channels
from .coords import coord_channels, num_coords
from .memory_format import memory_format_of
from .norm_mode import follow_module_mode
from .strip_pool import strip_convs, strip_pool
from .tracing import is_tracing
from .validation import (
    InputSizeError,
    check_bool,
    check_cfg,
    check_conv_channels,
    check_conv_input,
    check_divisible,
    check_input,
    check_int,
    check_int_pair,
    check_int_tuple,
    check_odd,
)
from .variants import check_variant_keys

__all__ = [
    'Blur', 'InputSizeError', 'PAD_MODES', 'activate', 'binomial_filter', 'build_act',
    'check_blur_args', 'check_bool', 'check_cfg', 'check_conv_channels', 'check_conv_input',
    'check_divisible', 'check_input', 'check_int', 'check_int_pair', 'check_int_tuple',
    'check_odd', 'check_variant_keys', 'coord_channels', 'follow_module_mode', 'is_tracing',
    'make_divisible', 'memory_format_of', 'num_coords', 'reduced_channels', 'strip_convs',
    'strip_pool'
]
