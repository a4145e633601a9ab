"""CoordConv vs deconvolution on supervised coordinate classification, quadrant split.

Reproduces the quadrant-split result of Liu, Lehman, Molino, Such, Frank, Sergeev and
Yosinski, "An Intriguing Failing of Convolutional Neural Networks and the CoordConv
Solution", NeurIPS 2018 (https://arxiv.org/abs/1807.03247), Sec. 4 (supervised
coordinate classification: deconvolution models fail on the held-out quadrant, CoordConv
models solve both splits), on a 2-core CPU.

Problem: the input is a coordinate (i, j); the output is a ``64 x 64`` map of logits, a
softmax over all 4096 pixels, trained with cross-entropy against the one-hot pixel
(i, j). The coordinates are the square centres of the paper's Not-so-Clevr data: the
``56 x 56`` positions ``4 <= i, j < 60`` of the canvas (3136 examples). Quadrant split:
the examples of one quadrant of that grid are held out (default bottom-right,
``i, j >= 32``: 784 test, 2352 train). A model that learned the coordinate transform
gets the held-out quadrant right; one that memorised the training pixels cannot.

Models (the coordinate is scaled to ``[-1, 1]``, like the CoordConv channels):

* ``deconv``: the paper's convolutional baseline. The coordinate as a ``2 x 1 x 1``
  input, six stride-2 3x3 transposed convs (ReLU after each; 64 channels, the last 32)
  up to ``64 x 64``, then a 1x1 conv to one channel.
* ``coordconv``: the coordinate tiled to ``2 x 64 x 64``, then ``mmplug.CoordConv2d``
  (1x1, 32 channels: it appends the pixel's own coordinates), 1x1 convs to 64, 64 and
  1 channel, ReLU between.
* ``conv``: the ``coordconv`` network with ``nn.Conv2d`` as its first layer, an
  ablation: every pixel then sees the same input, so its logits are equal everywhere
  and the argmax never lands on a target, whatever the training.

Training: Adam, batch 16, L2 weight decay 0.001 (the authors' documented settings),
learning rate 0.005 for the CoordConv-style models (theirs) and 0.001 for deconv; every
model from the same seed and the same batch order.

Deviations from the paper:

* Steps: the authors train the deconv model for 2000 epochs and CoordConv for 100; here
  ``--deconv-steps`` (default 8000, about 54 epochs) and ``--steps`` (default 500, about
  3.4 epochs) fit the run into 10 minutes on a 2-core CPU. The deconv model has not
  finished memorising its training set by then.
* One deconv architecture (3x3 filters, the widths above), not the paper's sweep; the
  widths of the CoordConv model are ours. The deconv learning rate is 0.001: the
  authors' 0.01 left this network with dead ReLUs (constant output, loss ln 4096).
* The input coordinate is scaled to ``[-1, 1]`` (a choice made here).
* Train accuracy during training is measured on a fixed random subset of the training
  set of the held-out quadrant's size; the final value is on the whole training set.
* Tensors are channels-last: the 1x1 convs run about 3x faster on CPU, same function.

Outputs in ``--out-dir``: ``coordconv_quadrant.md`` (the table, also printed),
``coordconv_quadrant.json`` and ``coordconv_quadrant.png`` (held-out accuracy against
step, and where each model puts the held-out coordinates).

Examples::

    python tools/reproduce/coordconv_quadrant.py --threads 1        # full run, ~6 min
    python tools/reproduce/coordconv_quadrant.py --steps 1000 --deconv-steps 20000
    python tools/reproduce/coordconv_quadrant.py --smoke --out-dir /tmp/cc   # seconds
"""
import argparse
import math
import os
import os.path as osp
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmplug import CoordConv2d
from mmplug.analysis.report import write_outputs
from mmplug.analysis.timing import num_threads

MODELS = ('deconv', 'conv', 'coordconv')
QUADRANTS = ('top-left', 'top-right', 'bottom-left', 'bottom-right')
LR = {'deconv': 0.001, 'conv': 0.005, 'coordconv': 0.005}
#: The paper's quadrant-split results (Sec. 4; the abstract for speed and size).
PAPER = {
    'deconv': 'train: up to ~100 % (memorised) / test: ~0 %',
    'conv': '(not in the paper)',
    'coordconv': 'train 100 % / test 100 %, 10-100x fewer params, ~150x faster',
}
NAME = 'coordconv_quadrant'


def make_split(size, held_out):
    """Coordinates, one-hot targets and the quadrant split on a ``size x size`` canvas.

    Returns:
        dict: ``train_x``/``test_x`` (``[N, 2]`` (x, y) in [-1, 1]), ``train_y``/``test_y``
        (flat pixel index ``i * size + j``), ``train_ij``/``test_ij`` (``[N, 2]`` rows and
        columns), ``lo``, ``hi``, ``mid`` (the coordinate grid and the quadrant border).
    """
    margin = size // 16  # 4 at 64: the centres of the paper's 9x9 squares
    lo, hi = margin, size - margin
    mid = size // 2
    rows, cols = torch.meshgrid(torch.arange(lo, hi), torch.arange(lo, hi), indexing='ij')
    rows, cols = rows.flatten(), cols.flatten()
    low_i, low_j = held_out.startswith('top'), held_out.endswith('left')
    test = ((rows < mid) == low_i) & ((cols < mid) == low_j)
    scale = max(size - 1, 1)
    xy = torch.stack([(2 * cols - (size - 1)) / scale, (2 * rows - (size - 1)) / scale], 1)
    target = rows * size + cols
    ij = torch.stack([rows, cols], 1)
    return dict(train_x=xy[~test], train_y=target[~test], train_ij=ij[~test],
                test_x=xy[test], test_y=target[test], test_ij=ij[test], lo=lo, hi=hi, mid=mid)


class CoordinateNet(nn.Module):
    """Tiled coordinate -> first layer (CoordConv2d or Conv2d) -> 1x1 convs -> logits."""

    def __init__(self, size, first_layer):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            first_layer(2, 32, 1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 1))

    def forward(self, xy):
        n = xy.shape[0]
        tiled = xy.view(n, 2, 1, 1).expand(n, 2, self.size, self.size)
        tiled = tiled.contiguous(memory_format=torch.channels_last)
        return self.body(tiled).flatten(1)  # [N, size * size]


class DeconvNet(nn.Module):
    """Coordinate as a 1x1 map -> stride-2 transposed convs up to ``size`` -> logits."""

    def __init__(self, size, width=64):
        super().__init__()
        layers, cin = [], 2
        num_up = int(math.log2(size))
        for k in range(num_up):
            cout = width if k < num_up - 1 else width // 2
            layers += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                       nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, xy):
        return self.body(xy[:, :, None, None]).flatten(1)  # [N, size * size]


def build(model, size):
    if model == 'deconv':
        net = DeconvNet(size)
    else:
        net = CoordinateNet(size, CoordConv2d if model == 'coordconv' else nn.Conv2d)
    return net.to(memory_format=torch.channels_last)


@torch.no_grad()
def predict(net, xy, chunk=49):
    net.eval()
    out = torch.cat([net(xy[s:s + chunk]).argmax(1) for s in range(0, len(xy), chunk)])
    net.train()
    return out


def accuracy(net, xy, target):
    return (predict(net, xy) == target).float().mean().item()


def train(model, split, args):
    """Train one model; returns its result row and the accuracy curve."""
    torch.manual_seed(args.seed)
    net = build(model, args.size)
    steps = args.deconv_steps if model == 'deconv' else args.steps
    opt = torch.optim.Adam(net.parameters(), lr=LR[model], weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    probe = torch.randperm(len(split['train_x']), generator=gen)[:len(split['test_x'])]
    # Log-spaced evaluations: the curve is drawn on a log axis, and early steps matter.
    eval_at = {max(1, round(steps ** (k / args.evals))) for k in range(1, args.evals + 1)}
    curve, train_time = [], 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        idx = torch.randint(0, len(split['train_x']), (args.batch, ), generator=gen)
        loss = F.cross_entropy(net(split['train_x'][idx]), split['train_y'][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - start
        if step in eval_at:
            curve.append(dict(step=step, train_time=train_time, loss=loss.item(),
                              train_acc=accuracy(net, split['train_x'][probe],
                                                 split['train_y'][probe]),
                              test_acc=accuracy(net, split['test_x'], split['test_y'])))
            if args.verbose:
                print(f'  {model:<9} step {step:>6} loss {loss.item():.4f} '
                      f'train(probe) {curve[-1]["train_acc"]:.3f} '
                      f'test {curve[-1]["test_acc"]:.3f} ({train_time:.0f} s)', flush=True)
    pred = predict(net, split['test_x'])
    row = dict(model=model, params=sum(p.numel() for p in net.parameters()), steps=steps,
               train_acc=accuracy(net, split['train_x'], split['train_y']),
               test_acc=(pred == split['test_y']).float().mean().item(),
               train_time=train_time, paper=PAPER[model])
    return row, curve, pred


def to_markdown(results):
    lines = ['| model | params | steps | train acc | held-out quadrant acc | train time (s) '
             '| paper (quadrant split) |',
             '| --- | ---: | ---: | ---: | ---: | ---: | --- |']
    for r in results['rows']:
        lines.append(f'| {r["model"]} | {r["params"]:,} | {r["steps"]:,} | '
                     f'{100 * r["train_acc"]:.1f} % | {100 * r["test_acc"]:.1f} % | '
                     f'{r["train_time"]:.1f} | {r["paper"]} |')
    a = results['args']
    lines += ['', f'{results["num_train"]} train / {results["num_test"]} held-out coordinates '
              f'({a["held_out"]} quadrant held out), canvas {a["size"]}x{a["size"]}, batch '
              f'{a["batch"]}, seed {a["seed"]}, {results["threads"]} threads; total wall time '
              f'{results["wall_time"]:.0f} s.' + (' Smoke run.' if a['smoke'] else '')]
    return '\n'.join(lines) + '\n'


def plot(results, curves, preds, split, path):
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    models = [r['model'] for r in results['rows']]
    shown = [m for m in models if m != 'conv'] or models
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(4.6 * (1 + len(shown)), 4.2))
    ax = axes[0]
    for model in models:
        steps = [c['step'] for c in curves[model]]
        line, = ax.plot(steps, [100 * c['test_acc'] for c in curves[model]], marker='o',
                        ms=3, label=f'{model} held-out')
        ax.plot(steps, [100 * c['train_acc'] for c in curves[model]], ls='--',
                color=line.get_color(), label=f'{model} train')
    ax.set_xscale('log')
    ax.set_xlabel('training step')
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(-3, 103)
    ax.set_title('accuracy vs step (quadrant split)')
    ax.legend(fontsize=7)
    size, lo, hi, mid = results['args']['size'], split['lo'], split['hi'], split['mid']
    test_ij = split['test_ij']
    for ax, model in zip(axes[1:], shown):
        pred = preds[model]
        pi, pj = pred // size, pred % size
        hit = pred == split['test_y']
        ax.add_patch(plt.Rectangle((lo - 0.5, lo - 0.5), hi - lo, hi - lo, fc='0.92', ec='0.6'))
        qi = lo if test_ij[0, 0] < mid else mid
        qj = lo if test_ij[0, 1] < mid else mid
        ax.add_patch(plt.Rectangle((qj - 0.5, qi - 0.5), hi - mid, hi - mid, fc='none',
                                   ec='tab:red', lw=1.5, label='held-out quadrant'))
        ax.scatter(pj[hit], pi[hit], s=4, c='tab:green', label=f'correct ({int(hit.sum())})')
        ax.scatter(pj[~hit], pi[~hit], s=4, c='tab:orange',
                   label=f'wrong ({int((~hit).sum())})')
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_aspect('equal')
        ax.set_xlabel('j (column)')
        ax.set_ylabel('i (row)')
        ax.set_title(f'{model}: predicted pixel of each\nheld-out coordinate')
        ax.legend(fontsize=7, loc='upper left')
    fig.suptitle('Supervised coordinate classification, quadrant split (Liu et al. 2018); '
                 'grey: the coordinate grid, red: the held-out quadrant')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='CoordConv vs deconv: coordinate classification, quadrant split')
    parser.add_argument('--steps', type=int, default=500,
                        help='training steps of coordconv and conv (default: 500)')
    parser.add_argument('--deconv-steps', type=int, default=8000,
                        help='training steps of deconv (default: 8000)')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS,
                        help=f'models to train (default: {" ".join(MODELS)})')
    parser.add_argument('--held-out', default='bottom-right', choices=QUADRANTS,
                        help='quadrant held out for testing (default: bottom-right)')
    parser.add_argument('--size', type=int, default=64,
                        help='canvas size, a power of 2 >= 16 (default: 64, the paper)')
    parser.add_argument('--batch', type=int, default=16, help='batch size (default: 16)')
    parser.add_argument('--weight-decay', type=float, default=1e-3,
                        help='L2 weight decay (default: 0.001)')
    parser.add_argument('--evals', type=int, default=12,
                        help='accuracy evaluations per model, log-spaced in steps (default: 12)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default: 0)')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    parser.add_argument('--out-dir', default='work_dirs/reproductions',
                        help='where the table, JSON and figure go '
                             '(default: work_dirs/reproductions)')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny run for the tests: 16x16 canvas, 150 and 60 steps, '
                             '1 thread unless --threads')
    parser.add_argument('--verbose', action='store_true', help='print the accuracy curve')
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.steps, args.deconv_steps, args.evals = 16, 150, 60, 4
        # One thread: tiny ops on a shared machine are slower with more.
        args.threads = args.threads or 1
    for name in ('steps', 'deconv_steps', 'batch', 'evals'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.size < 16 or args.size & (args.size - 1):
        parser.error(f'--size must be a power of 2 >= 16, got {args.size}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    if args.weight_decay < 0:
        parser.error(f'--weight-decay must be >= 0, got {args.weight_decay}')
    args.models = [m for m in MODELS if m in args.models]  # fixed order, no repeats
    return args


def main(argv=None):
    """Train the models and write the table, JSON and figure; returns the results dict."""
    args = parse_args(argv)
    with num_threads(args.threads):
        start = time.perf_counter()
        split = make_split(args.size, args.held_out)
        rows, curves, preds = [], {}, {}
        for model in args.models:
            row, curves[model], preds[model] = train(model, split, args)
            rows.append(row)
        results = dict(args=vars(args), rows=rows, curves=curves,
                       num_train=len(split['train_x']), num_test=len(split['test_x']),
                       threads=torch.get_num_threads(),
                       wall_time=time.perf_counter() - start)
    os.makedirs(args.out_dir, exist_ok=True)
    write_outputs(to_markdown(results), results, osp.join(args.out_dir, f'{NAME}.md'),
                  osp.join(args.out_dir, f'{NAME}.json'))
    plot(results, curves, preds, split, osp.join(args.out_dir, f'{NAME}.png'))
    return results


if __name__ == '__main__':
    main()
