"""The tools' mmengine runtime (checkpoints, config and weight checks, CPU DDP); not
imported by ``import mmplug``. Importing it registers ``AtomicCheckpointHook``,
``atomic_local``, ``CPUDistributedDataParallel`` and ``CPUSyncBN`` (other tools:
``custom_imports = dict(imports=['mmplug', 'mmplug.engine'])``).
"""
from .atomic_checkpoint import (
    AtomicCheckpointHook,
    AtomicLocalBackend,
    UnsafeCheckpointError,
    atomic_write,
    check_checkpoint_is_safe,
    checkpoint_is_complete,
    find_resumable_checkpoint,
    get_rng_state,
    set_rng_state,
    use_atomic_checkpoints,
)
from .config_check import UnknownTypeError, check_model_types, check_registered_types
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .plugin_defaults import fill_plugin_positions
from .pretrained import check_pretrained, pretrained_entries, resolve_torchvision_urls
from .process_group import destroy_process_group
from .sync_bn import CPUSyncBatchNorm, convert_cpu_sync_batchnorm
from .tool_config import load_tool_config

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CPUDistributedDataParallel', 'CPUSyncBatchNorm',
    'UnknownTypeError', 'UnsafeCheckpointError', 'atomic_write', 'check_checkpoint_is_safe',
    'check_model_types', 'check_pretrained', 'check_registered_types', 'checkpoint_is_complete',
    'convert_cpu_sync_batchnorm', 'destroy_process_group', 'fill_plugin_positions',
    'find_resumable_checkpoint', 'get_rng_state', 'load_tool_config', 'pretrained_entries',
    'resolve_torchvision_urls', 'set_rng_state', 'setup_cpu_distributed', 'use_atomic_checkpoints'
]
