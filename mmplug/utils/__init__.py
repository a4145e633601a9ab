"""Utilities that are not modules: checkpoints, channel arithmetic, argument and config
checks, CPU distributed training."""
from .atomic_checkpoint import (AtomicCheckpointHook, AtomicLocalBackend, UnsafeCheckpointError,
                                atomic_write, check_checkpoint_is_safe, checkpoint_is_complete,
                                find_resumable_checkpoint, get_rng_state, set_rng_state,
                                use_atomic_checkpoints)
from .channels import make_divisible, reduced_channels
from .checkpoint import allow_mmengine_checkpoints
from .config_check import (UnknownTypeError, check_model_types, check_registered_types,
                           close_type_names)
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .plugin_defaults import fill_plugin_positions
from .pretrained import check_pretrained, pretrained_entries, resolve_torchvision_urls
from .sync_bn import CPUSyncBatchNorm, convert_cpu_sync_batchnorm
from .validation import check_cfg, check_int, check_int_pair

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CPUDistributedDataParallel', 'CPUSyncBatchNorm',
    'UnknownTypeError', 'UnsafeCheckpointError', 'allow_mmengine_checkpoints', 'atomic_write',
    'check_cfg', 'check_checkpoint_is_safe', 'check_int', 'check_int_pair', 'check_model_types',
    'check_pretrained', 'check_registered_types', 'checkpoint_is_complete', 'close_type_names',
    'convert_cpu_sync_batchnorm', 'fill_plugin_positions', 'find_resumable_checkpoint',
    'get_rng_state', 'make_divisible',
    'pretrained_entries', 'reduced_channels', 'resolve_torchvision_urls', 'set_rng_state', 'setup_cpu_distributed',
    'use_atomic_checkpoints'
]
