"""Evaluate a checkpoint of an mmdet or mmseg config, with mmplug's modules registered
(mirrors mmdet 3.x's ``tools/test.py``)::

    python -m mmplug.test CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                          [--show-dir DIR] [--tta] [--cfg-options k=v ...]
                          [--launcher pytorch]
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmplug  # noqa: F401  registers the modules and allows mmengine's checkpoints
from mmplug.data import prepare_data
from mmplug.engine import check_checkpoint_is_safe, destroy_process_group, load_tool_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model with mmplug modules')
    parser.add_argument('config', help='config file path, or mmplug::<path> for a config that '
                        'ships with the package')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump the predictions to a pickle file (.pkl) for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='draw predictions into this dir (relative to the work dir)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (cfg.tta_model)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on drawing in the config's ``visualization`` hook (mmdet and mmseg)."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise RuntimeError('--show/--show-dir need a `visualization` hook in default_hooks '
                           '(DetVisualizationHook or SegVisualizationHook)')
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if hook.get('type', '').endswith('SegVisualizationHook'):
            hook['interval'] = 1  # mmseg's hook draws every `interval`-th image
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            hook['test_out_dir'] = args.show_dir
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    cfg.load_from = args.checkpoint
    check_checkpoint_is_safe(cfg.load_from)  # names what a refused checkpoint holds
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise RuntimeError('--tta needs `tta_model` and `tta_pipeline` in the config')
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl file, got {args.out!r}')

    prepare_data(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)

    if args.out is not None:
        if cfg.get('default_scope') == 'mmdet':
            from mmdet.evaluation import DumpDetResults  # encodes masks compactly
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        else:
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))

    runner.test()
    destroy_process_group()  # after a finished run only (see its docstring)


if __name__ == '__main__':
    main()
