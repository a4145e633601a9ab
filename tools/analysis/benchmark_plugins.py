"""Speed, memory and cost of every mmplug module next to the peers that compute its function.

For each module and feature shape (a *group*) it builds our module, its peers
(fightingcv-attention, timm, mmcv, mmdet, mmseg; only those that compute the same function,
built with equal settings) and, for conv replacements, the plain op they replace (a
*reference*, not a peer), and measures them in one run, interleaved: forward and
forward+backward time, params, MACs, bytes saved for backward, the ``x.clone()`` floor, the
ratio to the fastest peer and the parity of each peer with ours. What is measured and how:
``mmplug/analysis/benchmark.py``; the peers and the mappings of our weights into them:
``mmplug/analysis/peers.py``. Under ``--threads`` every op runs with that many intra-op
threads (default ``torch.get_num_threads()``).

Shapes: ResNet-50 stage outputs (c2: 256 channels at stride 4, c3: 512 at 8,
c4: 1024 at 16, c5: 2048 at 32) for ``--batch`` images of ``--image`` size
times ``--scale``. The default, 8 images of 224x224 (c3 = 8x512x28x28), is a
detection input (800x1344 in mmdet) scaled down so a few CPU cores run the
whole table in minutes; ``--scale 4`` comes close to it. Each module runs at
the stages where it is used (``--stages`` overrides), with the input it gets
there:

* plugins and neck blocks: the stage output ``[N, C, H, W]``;
* conv replacements (CoordConv2d, GhostConv2d, DCNv2UnitMask): the stage's
  bottleneck ``conv2``, 3x3, ``C/4 -> C/4`` at the stage's resolution;
* strided replacements (BlurConv2d, BlurPool2d): the stride-2 ``conv2`` of the
  stage's first bottleneck, ``C/4`` channels at twice the stage's resolution;
* ASFF: FPN levels P3-P5 (256 channels at strides 8, 16, 32); given another
  stage, that stage and two levels of half and quarter its size.

``--shape N C H W`` replaces the stage shapes by one stage-output shape (conv
replacements still take ``C/4`` of it). ``--smoke`` runs tiny shapes (batch 2,
64x64 images, a quarter of the widths) with 1 warm-up and 2 repeats, for CI:
its numbers check that the tool works, not how fast anything is.

On CUDA (``--device cuda``, the default when available) times come from CUDA
events after a synchronize, and a ``peak MiB`` column gives the peak memory of
one forward+backward above what was allocated before it. That path is written
but has not been run here (CPU only).

    python tools/analysis/benchmark_plugins.py --threads 2 --out bench.md --json bench.json
    python tools/analysis/benchmark_plugins.py --only SE SGE --stages c3 --repeats 30
    python tools/analysis/benchmark_plugins.py --only NonLocal --shape 2 1024 64 64
    python tools/analysis/benchmark_plugins.py --smoke          # CI: seconds
"""
import argparse
import sys
from datetime import datetime, timezone

import torch

from mmplug.analysis.benchmark import DTYPES, STAGES, plan, run, to_markdown
from mmplug.analysis.options import non_negative_int, positive
from mmplug.analysis.peers import MODULES, timm_available
from mmplug.analysis.report import write_outputs
from mmplug.analysis.timing import device_name, num_threads

#: Defaults of the options, and those of --smoke (width_div: channels divided by it).
DEFAULTS = dict(batch=8, image=(224, 224), width_div=1, warmup=2, repeats=10)
SMOKE = dict(batch=2, image=(64, 64), width_div=4, warmup=1, repeats=2)


def parse_args(argv=None):
    """The options of ``argv`` (None: the command line), defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', nargs='+', choices=list(MODULES), metavar='MODULE',
                        help=f'modules to measure (default: all): {", ".join(MODULES)}')
    parser.add_argument('--stages', nargs='+', choices=list(STAGES),
                        help="feature levels for every module (default: each module's own)")
    parser.add_argument('--shape', type=positive(int), nargs=4, metavar=('N', 'C', 'H', 'W'),
                        help='one stage-output shape instead of the stages')
    parser.add_argument('--batch', type=positive(int), help='images per batch (default 8)')
    parser.add_argument('--image', type=positive(int), nargs=2, metavar=('H', 'W'),
                        help='image size the stage shapes derive from (default 224 224)')
    parser.add_argument('--scale', type=positive(float), default=1.0,
                        help='multiply the image size (default 1)')
    parser.add_argument('--warmup', type=non_negative_int, help='warm-up rounds (default 2)')
    parser.add_argument('--repeats', type=positive(int), help='timed rounds (default 10)')
    parser.add_argument('--threads', type=positive(int),
                        help='torch intra-op threads (default torch.get_num_threads())')
    parser.add_argument('--device', help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32',
                        help='time under autocast to this dtype (default fp32: no autocast); '
                        'parity is always checked in fp32')
    parser.add_argument('--compile', nargs='?', const='inductor', metavar='BACKEND',
                        help='time torch.compile(module, backend=BACKEND) (default backend: '
                        'inductor); the warm-up rounds compile')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes, 1 warm-up, 2 repeats: checks the tool, times nothing')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', help='also write every number to this JSON file')
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else DEFAULTS
    for key in ('batch', 'image', 'warmup', 'repeats'):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.width_div = defaults['width_div']
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.shape is not None and args.stages is not None:
        parser.error('--shape and --stages exclude each other')
    return args


def main(argv=None):
    """Run the benchmark (arguments as on the command line); returns the results dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    names = args.only or list(MODULES)
    jobs = plan(names, args.stages, args.shape, args.batch, args.image, args.scale,
                args.width_div)
    with num_threads(args.threads) as threads:
        groups = run(jobs, device, args.warmup, args.repeats, progress=not args.no_progress,
                     dtype=DTYPES[args.dtype], compile_backend=args.compile)
    image = [max(1, round(s * args.scale)) for s in args.image]
    meta = dict(device=str(device), device_name=device_name(device), threads=threads,
                torch=torch.__version__, dtype=args.dtype, compile=args.compile,
                timm=timm_available(), warmup=args.warmup, repeats=args.repeats,
                batch=args.batch, image=image, shape=args.shape, smoke=args.smoke,
                date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                argv=list(sys.argv[1:] if argv is None else argv))
    results = dict(meta=meta, groups=groups)
    write_outputs(to_markdown(results), results, args.out, args.json, json_indent=1)
    return results


if __name__ == '__main__':
    main()
