"""Multi-process training on CPUs with mmengine's ``pytorch`` launcher (torchrun).

mmengine 0.10's launcher calls ``torch.cuda.set_device``, wraps the model in DDP
with ``device_ids`` (refused for a CPU model), and ``nn.SyncBatchNorm`` cannot
train on CPU. :func:`setup_cpu_distributed` fixes the three when the processes
run on CPU and does nothing on accelerators.
"""
import datetime
import logging
import os

import torch.distributed as dist
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .sync_bn import convert_cpu_sync_batchnorm

#: The wrapper type that :func:`setup_cpu_distributed` puts into ``model_wrapper_cfg``.
CPU_DDP_TYPE = 'CPUDistributedDataParallel'


@MODEL_WRAPPERS.register_module(CPU_DDP_TYPE)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper that also accepts a CPU model with ``nn.SyncBatchNorm``.

    On CPU it swaps each ``nn.SyncBatchNorm`` for ``CPUSyncBatchNorm`` and drops
    ``device_ids``/``output_device``; on an accelerator it is
    ``MMDistributedDataParallel`` unchanged.

    Args:
        module (nn.Module): The model, already on its device.
        broadcast_buffers (bool): As in DDP. Defaults to False (as mmengine).
        **kwargs: Passed to ``MMDistributedDataParallel``.
    """

    def __init__(self, module, broadcast_buffers=False, **kwargs):
        devices = {p.device.type for p in module.parameters()}
        if devices <= {'cpu'}:
            module = convert_cpu_sync_batchnorm(module)
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, broadcast_buffers=broadcast_buffers, **kwargs)


def setup_cpu_distributed(cfg):
    """Prepare ``cfg`` for a ``--launcher pytorch`` run on CPUs; no-op otherwise.

    Initialises the process group from torchrun's environment with
    ``env_cfg.dist_cfg`` (backend ``'gloo'`` unless ``'gloo'`` or ``'mpi'``;
    ``timeout`` in seconds), so the runner skips its CUDA-only ``init_dist``, and
    sets ``cfg.model_wrapper_cfg`` to :class:`CPUDistributedDataParallel` unless
    the config names a wrapper.

    Args:
        cfg (mmengine.Config): The training config, ``launcher`` already set.

    Returns:
        bool: True when it set the run up for CPUs.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or get_device() != 'cpu':
        return False
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    if backend not in ('gloo', 'mpi'):
        print_log(f'CPU processes: env_cfg.dist_cfg.backend {backend!r} needs GPUs, '
                  f'using gloo', logger='current')
        backend = 'gloo'
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = backend
    if not dist.is_initialized():
        if dist_cfg.get('timeout') is not None:
            dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
        dist.init_process_group(backend=backend, rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']), **dist_cfg)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type=CPU_DDP_TYPE, find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif cfg.model_wrapper_cfg.get('type') != CPU_DDP_TYPE:
        print_log(f'CPU processes: model_wrapper_cfg {cfg.model_wrapper_cfg!r} is kept; '
                  f'SyncBN layers need type={CPU_DDP_TYPE!r} on CPU', logger='current',
                  level=logging.WARNING)
    return True
