"""Train an mmdet or mmseg model from a config, with mmplug's modules registered.

Mirrors mmdet 3.x's ``tools/train.py``; the config's ``default_scope`` (``mmdet``
or ``mmseg``) decides which library builds the model. Embedded demo data is
generated on first use; missing real data stops with a message.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
                                 [--cfg-options k=v ...] [--launcher pytorch]

Checkpoints are written atomically (mmplug's AtomicCheckpointHook replaces
CheckpointHook) and hold the random generators' states, so a run killed at any
moment and continued with ``--resume`` ends bit-identical to an uninterrupted one
on CPU, given a fixed seed (``randomness=dict(seed=...)``), epoch checkpoints for
epoch-based loops (any interval for iteration-based ones) and, with
``num_workers > 0``, ``train_dataloader.persistent_workers=False``.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmplug  # noqa: F401  registers the modules and allows mmengine's checkpoints
from mmplug.data import prepare_data
from mmplug.utils import (check_checkpoint_is_safe, check_pretrained, check_registered_types,
                          find_resumable_checkpoint, setup_cpu_distributed, use_atomic_checkpoints)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model with mmplug modules')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size (needs auto_scale_lr in cfg)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint; without a path, from the latest complete '
             'checkpoint in the work dir (bit-identical on CPU with a fixed seed and '
             'persistent_workers=False; see the docstring of tools/train.py)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs, e.g. '
             'train_dataloader.batch_size=4 model.backbone.depth=101')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    check_registered_types(cfg)

    # work_dir priority: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, '
                             f'the config has {optim_type!r}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs `auto_scale_lr = dict(enable=..., '
                               'base_batch_size=...)` in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        # last_checkpoint, or the newest complete checkpoint if that one is damaged
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    prepare_data(cfg)
    # The runner initialises the weights before it loads or resumes, so always check.
    check_pretrained(cfg)
    use_atomic_checkpoints(cfg)
    check_checkpoint_is_safe(cfg.get('load_from'))
    # torchrun on CPUs: a gloo group and a DDP wrapper that takes SyncBN (no-op on GPUs).
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
