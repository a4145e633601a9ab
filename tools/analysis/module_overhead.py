"""Parameter and FLOP overhead of every mmplug module on ResNet-50.

Builds mmdet's ``ResNet`` (depth 50, backbone only, all four stage outputs)
plain and with each module at the placement its paper (or docstring ``Note:``)
suggests, and prints params and multiply-accumulates (GMACs, the unit mmdet's
and the papers' "GFLOPs" are counted in) for one image, with the ratio to the
plain ResNet-50 (``mmplug/analysis/overhead.py``).

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (aten-level conv,
matmul and attention; elementwise ops, pooling, BN, ``grid_sample`` are not
counted, as in fvcore/mmengine counters). mmcv's deformable conv runs outside
aten, so a ``DCNv2UnitMask`` is counted as its dense conv (the MACs of the
sampled im2col product; bilinear sampling is not counted).

With ``--speed`` it also measures forward images/s of every variant (eval mode,
``torch.no_grad()``, ``--speed-batch`` images of ``--size``, default 8 of
224x224) and adds the columns ``img/s``, ``speed vs baseline`` (median over
rounds of the plain ResNet-50's time over the variant's) and, for plugins,
``time in module`` (the share of the plugged model's forward spent inside the
inserted modules, from forward hooks: ``time_in_modules``). All variants are
built first and timed **interleaved** with the plain ResNet-50: every round
runs each once, in its own (seeded) shuffled order, and the medians of
``--repeats`` rounds after ``--warmup`` are reported
(``mmplug.analysis.timing.forward_speed``, the clock of ``benchmark_plugins.py``), so
the noise of a busy machine falls on all of them alike. On CUDA (``--device cuda``,
the default when available) the times come from CUDA events and a ``peak MiB``
column gives each forward's peak memory above the weights; that path has not
been run here (CPU only). Without ``--speed`` the output is what it always was.

    python tools/analysis/module_overhead.py                 # 224x224, all variants
    python tools/analysis/module_overhead.py --size 800 1216 --only SE NonLocal
    python tools/analysis/module_overhead.py --speed --threads 2 --out o.md --json o.json
"""
import argparse

from mmplug.analysis.options import add_speed_args, speed_meta
from mmplug.analysis.overhead import BASELINE, VARIANTS, run, to_markdown
from mmplug.analysis.report import write_outputs
from mmplug.analysis.timing import num_threads


def parse_args(argv=None):
    """The options of ``argv`` (None: the command line)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--only', nargs='+', choices=list(VARIANTS)[1:],
                        help='variants to measure (the plain ResNet-50 always is)')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', help='also write every number to this JSON file')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_speed_args(parser, batch=8, warmup=2, repeats=10)
    return parser.parse_args(argv)


def main(argv=None):
    """Print the table (arguments as on the command line); returns the results dict."""
    args = parse_args(argv)
    names = [BASELINE] + (args.only or list(VARIANTS)[1:])
    with num_threads(args.threads) as threads:
        speed = speed_meta(args, threads) if args.speed else None
        rows = run(names, tuple(args.size), speed, progress=not args.no_progress)
    results = dict(size=list(args.size), rows=rows)
    if speed:
        results['speed'] = speed
    write_outputs(to_markdown(rows, args.size, speed), results, args.out, args.json)
    return results


if __name__ == '__main__':
    main()
