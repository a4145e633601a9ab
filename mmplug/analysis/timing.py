"""Interleaved timing shared by the analysis tools.

``tools/analysis/benchmark_plugins.py`` (modules against their peers),
``module_overhead.py`` (plain vs plugged ResNet-50) and ``config_complexity.py`` (configs
vs their baselines) all time candidates **round-robin**: each round times every candidate
once, in a seeded shuffled order (the first two) or, for pairs, alternating, so the noise
of a busy machine falls on all of them alike and no candidate always follows the same
neighbour; warm-up rounds are dropped and medians reported. This module holds that
schedule (``round_robin``), the clock (``timer``: ``perf_counter`` on the CPU, CUDA events
after a synchronize on CUDA), the forward-throughput measurement of whole models
(``forward_speed``), the thread count (``num_threads``), the progress bar and the device
name. Import it; it runs nothing by itself.

The CUDA paths (events, peak memory) are written but have not been run here (CPU only).
"""
import contextlib
import platform
import random
import statistics
import sys
import time

import torch

__all__ = ['device_name', 'forward_speed', 'num_threads', 'peak_bytes', 'progress_bar',
           'quartiles', 'round_robin', 'timer']


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


def peak_bytes(fn, device):
    """Call ``fn()``; return its result and, on CUDA, the peak memory allocated during the
    call above what was allocated before it (activations and workspace, not the weights
    already there), else None."""
    if device.type != 'cuda':
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - before


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
        shuffle (bool): Each round in its own seeded order (more than two keys).
        seed (int): Seed of the shuffled orders.

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
                peaks[name] = peak_bytes(forward, device)[1]
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
