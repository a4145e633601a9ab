"""Train configs with several seeds and print their final metrics as mean +- std.

Each (config, seed) is one ``tools/train.py`` run with ``randomness.seed=SEED`` in its own
work dir; the metrics are the last validation entry of that run's
``vis_data/scalars.json`` (``coco/bbox_mAP``... for mmdet, ``mIoU``... for mmseg). A run
whose work dir already holds them is not trained again, so an interrupted ablation
continues where it stopped.

    python tools/analysis/seed_ablation.py CONFIG [CONFIG ...] --seeds 0 1 2 \\
        --work-dir work_dirs/ablation [--out table.md] [--json table.json]
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

from mmplug.analysis.report import write_outputs

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: Metrics shown, in order, where a run reports them.
METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'mIoU', 'aAcc')


def final_metrics(work_dir):
    """The last validation entry of the newest run in ``work_dir``, or None."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        return None
    entries = []
    with open(logs[-1], encoding='utf-8') as f:
        for line in f:
            entry = json.loads(line)
            if any(key in entry for key in METRICS):
                entries.append(entry)
    return {k: v for k, v in entries[-1].items() if k in METRICS} if entries else None


def run(config, seed, work_dir, extra):
    """Train ``config`` with ``seed`` into ``work_dir`` unless it already finished there."""
    metrics = final_metrics(work_dir)
    if metrics is None:
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
               work_dir, '--cfg-options', f'randomness.seed={seed}', *extra]
        subprocess.run(cmd, check=True, cwd=ROOT)
        metrics = final_metrics(work_dir)
    if metrics is None:
        raise RuntimeError(f'{config} seed {seed}: no validation metrics in {work_dir}')
    return metrics


def summarise(results):
    """``{config: {metric: (mean, std, values)}}`` from ``{config: [metrics per seed]}``."""
    table = {}
    for config, runs in results.items():
        keys = [k for k in METRICS if all(k in r for r in runs)]
        table[config] = {k: (statistics.mean(r[k] for r in runs),
                             statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0,
                             [r[k] for r in runs]) for k in keys}
    return table


def to_markdown(table, seeds):
    keys = [k for k in METRICS if any(k in row for row in table.values())]
    lines = [f'| config | {" | ".join(keys)} |', '| --- |' + ' ---: |' * len(keys)]
    for config, row in table.items():
        cells = [f'{row[k][0]:.3f} +- {row[k][1]:.3f}' if k in row else '-' for k in keys]
        lines.append(f'| {osp.relpath(config, ROOT)} | {" | ".join(cells)} |')
    lines.append('')
    lines.append(f'Mean +- sample standard deviation over seeds {", ".join(map(str, seeds))}.')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', help='config files to train')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', default='work_dirs/ablation',
                        help='runs go to WORK_DIR/<config name>/seed<SEED>')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='further key=value overrides for every run')
    parser.add_argument('--out', help='also write the markdown table here')
    parser.add_argument('--json', help='also write every run\'s metrics here')
    args = parser.parse_args(argv)
    for config in args.configs:
        if not osp.isfile(config):
            parser.error(f'no such config: {config!r}')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = {}
    for config in args.configs:
        name = osp.splitext(osp.basename(config))[0]
        results[osp.abspath(config)] = [
            run(osp.abspath(config), seed, osp.abspath(osp.join(args.work_dir, name,
                                                               f'seed{seed}')),
                args.cfg_options) for seed in args.seeds]
    table = summarise(results)
    write_outputs(to_markdown(table, args.seeds),
                  {osp.relpath(c, ROOT): r for c, r in results.items()}, args.out, args.json,
                  json_indent=1)
    return table


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    main()
