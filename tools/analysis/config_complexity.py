"""Params and MACs of mmdet/mmseg configs against the OpenMMLab config each one modifies.

For each config the tool finds its *baseline*: the first ``mmdet::`` or
``mmseg::`` entry met walking ``_base_`` depth-first, through local base files,
in the order they are listed. It builds both models on the CPU with random
weights (no checkpoint is read or downloaded: ``init_cfg`` and ``pretrained``
are removed and ``init_weights()`` is never called; SyncBN becomes BN), runs one
image through backbone, neck and heads in ``mode='tensor'`` and prints a
markdown table: params, multiply-accumulates (GMACs, the unit mmdet's and the
papers' "GFLOPs" are counted in) and both as differences to the baseline.
Each baseline is measured once, however many configs share it. The measurement is
``mmplug/analysis/complexity.py``.

Inputs are ``1x3xHxW`` random tensors, H and W divisible by 32: by default
800x1344 for detection (``default_scope='mmdet'``) and 512x1024 for
segmentation (``'mmseg'``); ``--shape H W`` sets both. MACs are counted as in
``module_overhead.py`` (``mmplug.analysis.macs``: FlopCounterMode plus the dense-conv MACs of mmcv's
deformable convs, which run outside aten); the footnotes of the table say what
is and is not counted.

A folder argument takes every ``*.py`` under it, recursively, except demo twins
(``*_demo_*``) and ``_base_`` folders (partial configs).

With ``--speed`` the tool also measures forward images/s (``mode='tensor'``,
eval mode, ``torch.no_grad()``, ``--speed-batch`` images of the same size,
default 1) and adds the columns ``img/s`` and ``speed vs baseline`` (median over
rounds of the baseline's time over the config's). Each baseline is built
together with every config measured against it, and each config is timed
**paired with its baseline**: the two alternate, their order swapped every
round, and the medians of ``--repeats`` rounds after ``--warmup`` are reported
(``_paired_speed`` over ``timing.forward_speed``, the clock of
``benchmark_plugins.py``), so the noise of a busy machine falls on both alike
and the two forwards compared are seconds apart (timing a whole group in one
rotating round, as the first version did, put ~50 s between them for the 15
Faster R-CNN configs). The baseline's img/s pools its samples from all its
pairs. Pairing did not make the default 5 rounds steady on the 2-core VM: two
paired runs differed by up to 0.12 in a ratio, which is why the table shows
each ratio's quartiles. Two-stage detectors are timed as they are counted,
with the RPN's NMS switched off (IoU threshold 1.0): every RoI head then runs on
``test_cfg.rpn.max_per_img`` proposals per image, the same work in the
baseline and the config, where random weights would otherwise let NMS keep a
random number (the NMS call itself still runs and is timed). A group holds all
its models in memory at once (about 15 Faster R-CNNs for ``configs/``). On
CUDA (``--device cuda``, the default when available) the times come from CUDA
events and a ``peak MiB`` column gives each forward's peak memory above the
weights; that path has not been run here (CPU only). Params and MACs are
always counted on the CPU, at batch 1; without ``--speed`` the output is what
it always was.

    python tools/analysis/config_complexity.py configs/                 # every real config
    python tools/analysis/config_complexity.py configs/sge/*_1x_coco.py --out t.md --json t.json
    python tools/analysis/config_complexity.py configs/ --shape 128 128  # quick run
    python tools/analysis/config_complexity.py configs/ --speed --threads 2 --shape 512 512
"""
import argparse

from mmplug.analysis.complexity import check_shape, find_configs, run, to_markdown
from mmplug.analysis.options import add_speed_args, speed_meta
from mmplug.analysis.report import write_outputs
from mmplug.analysis.timing import num_threads


def parse_args(argv=None):
    """The options of ``argv`` (None: the command line); ``--shape`` checked."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='config files or folders (walked recursively, demo twins skipped)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size for every config (default: detection 800 1344, '
                             'segmentation 512 1024); divisible by 32')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', help='also write every number to this JSON file')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_speed_args(parser, batch=1, warmup=1, repeats=5)
    args = parser.parse_args(argv)
    if args.shape is not None:
        try:
            check_shape(tuple(args.shape))
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv=None):
    """Print the table (arguments as on the command line); returns the results dict."""
    args = parse_args(argv)
    configs = find_configs(args.configs)
    if not configs:
        raise SystemExit(f'no configs found in {args.configs}')
    with num_threads(args.threads) as threads:
        speed = speed_meta(args, threads) if args.speed else None
        results = run(configs, args.shape, speed, progress=not args.no_progress)
    write_outputs(to_markdown(results), results, args.out, args.json)
    return results


if __name__ == '__main__':
    main()
