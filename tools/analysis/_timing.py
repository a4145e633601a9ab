"""Interleaved timing shared by the analysis tools.

``benchmark_plugins.py`` (modules against their peers), ``module_overhead.py``
(plain vs plugged ResNet-50) and ``config_complexity.py`` (configs vs their
baselines) all time candidates **round-robin**: each round times every
candidate once, in a seeded shuffled order (``benchmark_plugins.py``,
``module_overhead.py``) or, for pairs, alternating, so the noise of a busy
machine falls on all of them alike and no candidate always follows the same
neighbour; warm-up rounds are dropped and medians reported. This module holds
that schedule (``round_robin``), the clock (``timer``: ``perf_counter`` on the
CPU, CUDA events after a synchronize on CUDA), the forward-throughput
measurement of whole models (``forward_speed``) and the small command-line,
formatting and output helpers the tools share.

The CUDA paths (events, peak memory) are written but have not been run here
(CPU only).
"""
import argparse
import contextlib
import json
import math
import platform
import random
import statistics
import sys
import time

import torch

MIB = 2**20


def timer(device):
    """``timed(fn)``: milliseconds of ``fn()`` (CUDA events after a synchronize on CUDA)."""
    if device.type == 'cuda':
        def timed(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
    return timed


def round_robin(keys, measure, warmup, repeats, on_round=None, shuffle=False, seed=0):
    """Call ``measure(key)`` for every key in each of ``warmup + repeats`` rounds.

    Round ``r`` starts at key ``r % len(keys)`` and wraps around, so every key
    is timed early and late in a round equally often. A rotation keeps the
    cyclic order, though: every key always runs right after the same
    neighbour, and what that neighbour leaves behind (freed buffers, a cold or
    warm cache) biases the key's time the same way every round. Measured:
    with SE's forward always right after the clone and fightingcv's always
    after SE's forward+backward, SE read 1.10-1.24x fightingcv at c4/c5 in
    three runs, 0.78-0.94x with both timed alone, side by side. With
    ``shuffle`` every round takes its own permutation of the keys (from
    ``random.Random(seed)``: the same schedule every run), so neither a key's
    position nor its predecessor is fixed. Two keys simply alternate either way.

    Args:
        keys (list): What to measure, in the order of round 0.
        measure (callable): ``measure(key)`` returns one sample (e.g. ms).
        warmup (int): Rounds whose samples are dropped.
        repeats (int): Rounds whose samples are kept.
        on_round (callable, optional): Called after each round (a progress bar).

    Returns:
        dict: key -> list of the ``repeats`` kept samples, in round order.
    """
    keys = list(keys)
    samples = {key: [] for key in keys}
    rng = random.Random(seed)
    for r in range(warmup + repeats):
        k = r % len(keys)
        order = (rng.sample(keys, len(keys)) if shuffle and len(keys) > 2
                 else keys[k:] + keys[:k])
        for key in order:
            sample = measure(key)
            if r >= warmup:
                samples[key].append(sample)
        if on_round is not None:
            on_round()
    return samples


def forward_speed(forwards, images, device, warmup, repeats, baseline=None, on_round=None,
                  shuffle=False):
    """Forward images/s of models, timed round-robin (``round_robin``) under ``no_grad``.

    Args:
        forwards (dict): name -> ``fn()`` that runs one forward of a batch of
            ``images`` images (model in eval mode and inputs on ``device``: the
            caller's job).
        images (int): Images per forward, for images/s.
        device (torch.device): Where the models run (the clock follows it).
        warmup (int): Rounds not counted.
        repeats (int): Rounds counted (medians).
        baseline (str, optional): Name the ratios are taken against.
        on_round (callable, optional): Called after each round.
        shuffle (bool): Each round in its own order (``round_robin``).

    Returns:
        dict: name -> dict with ``fwd_ms`` (median), ``fwd_samples_ms``,
        ``img_s`` (``images`` over the median time), ``speed_vs_baseline``
        (median over rounds of the baseline's time over this model's time in
        the same round: robust to rounds slowed by other jobs, which a ratio of
        medians is not; None without a baseline), ``speed_vs_baseline_iqr``
        (the quartiles ``[q1, q3]`` of those per-round ratios: how much the
        rounds disagreed; None without a baseline) and
        ``peak_bytes`` (CUDA: peak memory allocated during one forward above
        what was allocated before it, i.e. activations and workspace, not the
        weights; None on the CPU).
    """
    timed = timer(device)
    peaks = dict.fromkeys(forwards)
    with torch.no_grad():
        if device.type == 'cuda':  # one untimed forward each, before the rounds
            for name, forward in forwards.items():
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                forward()
                torch.cuda.synchronize(device)
                peaks[name] = torch.cuda.max_memory_allocated(device) - before
        samples = round_robin(list(forwards), lambda name: timed(forwards[name]), warmup,
                              repeats, on_round, shuffle=shuffle)
    rows = {}
    for name, times in samples.items():
        ms = statistics.median(times)
        rows[name] = dict(fwd_ms=ms, fwd_samples_ms=times, img_s=images / ms * 1e3,
                          peak_bytes=peaks[name])
    base = samples.get(baseline)
    for name, row in rows.items():
        ratios = None if base is None else [b / t for b, t in zip(base, samples[name])]
        row['speed_vs_baseline'] = None if ratios is None else statistics.median(ratios)
        row['speed_vs_baseline_iqr'] = None if ratios is None else quartiles(ratios)
    return rows


def quartiles(values):
    """``[q1, q3]`` of ``values`` (``statistics.quantiles``, inclusive method)."""
    if len(values) == 1:
        return [values[0], values[0]]
    q1, _, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return [q1, q3]


def fmt_speed(row):
    """The ``speed vs baseline`` cell: ``0.93x (0.90-0.95)``, the median ratio and its
    quartiles over the rounds (``1.00x`` alone where they all agree, as for the
    baseline itself); '-' without a ratio."""
    ratio, iqr = row.get('speed_vs_baseline'), row.get('speed_vs_baseline_iqr')
    if ratio is None:
        return '-'
    if iqr is None or iqr[0] == iqr[1] == ratio:
        return fmt_ratio(ratio)
    return f'{fmt_ratio(ratio)} ({iqr[0]:.2f}-{iqr[1]:.2f})'


@contextlib.contextmanager
def num_threads(threads=None):
    """Run the block with ``threads`` torch intra-op threads (None: unchanged); yields the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def progress_bar(total, desc=None, unit='round'):
    """A tqdm bar on stderr (mmengine's ProgressBar without tqdm): ``update()``, ``close()``."""
    try:
        from tqdm import tqdm
    except ImportError:
        from mmengine.utils import ProgressBar

        class _Bar:
            def __init__(self):
                self.bar = ProgressBar(total, file=sys.stderr)

            def update(self, n=1):
                for _ in range(n):
                    self.bar.update()

            def set_description(self, text):
                pass

            def close(self):
                sys.stderr.write('\n')
        return _Bar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def device_name(device):
    """The GPU's name, or the CPU's model name from ``/proc/cpuinfo``."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return f'CPU {line.split(":", 1)[1].strip()}'
    except OSError:
        pass
    return f'CPU {platform.processor() or platform.machine()}'


def fmt(value, digits=3):
    """``value`` with ``digits`` significant digits, no exponent; '-' for None."""
    if value is None:
        return '-'
    if value == 0:
        return '0'
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f'{value:.{decimals}f}'


def fmt_ratio(value):
    """``1.23x``; '' for None."""
    return '' if value is None else f'{value:.2f}x'


def positive(cast):
    """An argparse ``type``: ``cast(text)``, rejected unless > 0."""
    def parse(text):
        value = cast(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    return parse


def non_negative_int(text):
    """An argparse ``type``: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def add_speed_args(parser, batch, warmup, repeats):
    """Add ``--speed`` and its settings (defaults: ``batch``, ``warmup``, ``repeats``)."""
    group = parser.add_argument_group('forward speed (with --speed)')
    group.add_argument('--speed', action='store_true',
                       help='also measure forward images/s, interleaved with the baseline')
    group.add_argument('--speed-batch', type=positive(int), default=batch,
                       help=f'images per timed forward (default {batch})')
    group.add_argument('--warmup', type=non_negative_int, default=warmup,
                       help=f'untimed rounds (default {warmup})')
    group.add_argument('--repeats', type=positive(int), default=repeats,
                       help=f'timed rounds, medians (default {repeats})')
    group.add_argument('--threads', type=positive(int),
                       help='torch intra-op threads (default torch.get_num_threads())')
    group.add_argument('--device', help="'cpu' or 'cuda' for the timing (default: cuda when "
                       'available); params and MACs are always counted on the CPU')


def speed_meta(args, threads):
    """What a speed run was: device, threads, torch, batch, warm-up and repeats (JSON-able)."""
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    return dict(device=str(device), device_name=device_name(device), threads=threads,
                torch=torch.__version__, batch=args.speed_batch, warmup=args.warmup,
                repeats=args.repeats)


def speed_note(meta, paired=False):
    """One sentence saying how the img/s were measured (for a table's notes).

    ``paired``: every model was timed against its baseline alone (config_complexity's
    ``_paired_speed``), not in one round with all the others.
    """
    order = ('each model measured against a baseline runs in alternation with it alone, '
             'their order swapped from round to round, so the two share the machine\'s '
             'noise (the baseline\'s img/s: the median over all its pairs)' if paired else
             'in each round the baseline and every model measured against it run once, in '
             'an order shuffled from round to round (seeded), so they share the machine\'s '
             'noise and none always follows the same model')
    note = (f'img/s: forward images per second at batch {meta["batch"]}, eval mode, '
            f'`torch.no_grad()`, fp32, median of {meta["repeats"]} rounds after '
            f'{meta["warmup"]} warm-up; {order}. speed vs baseline: median over the rounds '
            'of the baseline\'s time over the model\'s time in the same round (below 1.00x: '
            'slower), in brackets the quartiles of those per-round ratios (half the rounds '
            f'fell between them). {meta["device_name"]}, '
            f'{meta["threads"]} thread{"s" if meta["threads"] != 1 else ""}, '
            f'torch {meta["torch"]}.')
    if meta['device'].startswith('cuda'):
        note += (' CUDA: CUDA-event times after a synchronize; peak MiB: peak memory '
                 'allocated during one forward above what was allocated before it '
                 '(activations and workspace, not the weights).')
    return note


def write_outputs(table, results, out=None, json_path=None, json_indent=2):
    """Print the markdown ``table``; write it to ``out`` and ``results`` to ``json_path`` if given."""
    print(table, end='')
    if out:
        with open(out, 'w', encoding='utf-8') as f:
            f.write(table)
    if json_path:
        with open(json_path, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=json_indent)
            f.write('\n')
