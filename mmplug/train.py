"""Train an mmdet or mmseg model from a config, with mmplug's modules registered.

Mirrors mmdet 3.x's ``tools/train.py``; the config's ``default_scope`` picks the
library. Demo data is generated on first use; missing real data stops with a
message. Checkpoints are atomic and hold the RNG states, so ``--resume`` after
a kill is bit-identical on CPU (see ``mmplug.engine.atomic_checkpoint``).

    python -m mmplug.train CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
                                     [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmplug  # noqa: F401  registers the modules and allows mmengine's checkpoints
from mmplug.data import prepare_data
from mmplug.engine import (
    check_checkpoint_is_safe,
    check_pretrained,
    destroy_process_group,
    find_resumable_checkpoint,
    load_tool_config,
    resolve_torchvision_urls,
    setup_cpu_distributed,
    use_atomic_checkpoints,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model with mmplug modules')
    parser.add_argument('config', help='config file path, or mmplug::<path> for a config that '
                        'ships with the package (e.g. mmplug::faster_rcnn_r50_dcn_asff.py)')
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
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def unfused_where_unsupported(cfg):
    """Set ``optim_wrapper.optimizer.fused=False`` where this torch cannot run it (fused
    Adam/AdamW on CPU needs torch >= 2.4): the same updates, slower. Returns whether it did.
    """
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', {})
    cls = getattr(torch.optim, str(optimizer.get('type')), None)
    if not optimizer.get('fused') or cls is None:
        return False
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        cls([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return False
    except (RuntimeError, TypeError, ValueError) as err:
        optimizer['fused'] = False
        print_log(f'optim_wrapper.optimizer.fused=True is not available here ({err}); training '
                  'with fused=False', logger='current')
        return True


def main(argv=None):
    args = parse_args(argv)
    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)

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

    unfused_where_unsupported(cfg)
    prepare_data(cfg)
    # The runner initialises the weights before it loads or resumes, so always check.
    resolve_torchvision_urls(cfg)  # torchvision:// -> the same weights' URL, without torchvision
    check_pretrained(cfg)
    use_atomic_checkpoints(cfg)
    check_checkpoint_is_safe(cfg.get('load_from'))
    # torchrun on CPUs: a gloo group and a DDP wrapper that takes SyncBN (no-op on GPUs).
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    destroy_process_group()  # after a finished run only (see its docstring)


if __name__ == '__main__':
    main()
