"""Speed, memory and cost of every mmplug module next to the peers that compute its function.

For each module and feature shape (a *group*) the tool builds our module, its
peers (fightingcv-attention, mmcv, mmdet, mmseg; only those that compute the
same function, built with equal settings) and, for conv replacements, the plain
op they replace (a *reference*, not a peer). It measures them **in one run,
interleaved**: every repeat times each candidate of the group once, in an order
shuffled from repeat to repeat (seeded: ``timing.round_robin``), so the noise
of a busy machine falls on all of them alike and no candidate always runs right
after the same neighbour (a fixed rotation did that, and biased SE's forward at
c4/c5 by 10-24 %). Per candidate:

* ``fwd ms``: median forward time, train mode, under ``torch.no_grad()`` (BN
  normalises with batch statistics as in training; no graph is recorded).
* ``fwd+bwd ms``: median time of a forward with grad and
  ``out.sum().backward()`` (a tuple output: the sum of its sums). The input
  requires grad, so its gradient is computed as inside a network; gradients
  are cleared before each repeat, outside the timing.
* ``params``; ``MMACs`` of one forward of the whole batch, counted by
  ``macs.count_macs``: FlopCounterMode FLOPs / 2 (aten conv,
  matmul, attention; elementwise ops, pooling, normalisation, ``grid_sample``
  are not counted) plus mmcv's deformable convs as their dense conv.
* ``saved MiB``: what autograd keeps for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``: the sum of ``nbytes`` of the
  *distinct storages* of the saved tensors (a view, or a tensor saved by
  several ops, counts once, as its whole storage), leaving out the storages of
  the inputs, the parameters and the buffers, which exist whether or not the
  module is trained. The output counts when the module saves it (a sigmoid
  does). ``saved_tensor_bytes`` is the rule as a function.
* the clone floor: the median time of one ``x.clone()`` of the input(s), timed
  in the same rounds. A module that reads its input and writes its output
  once cannot beat it; ``fwd / clone`` says how far above it a module is.
* ``vs fastest peer``: time over the fastest peer's time in the group, forward
  and forward+backward each against its own fastest peer (a peer's own ratio
  is >= 1.00x). Blank where a group has no peer and for reference rows.

Warm-up repeats are excluded from the medians.

Parity: copies of ours and of each peer get random weights, ours are mapped into the
peer (``mmplug.analysis.peers``: the ``parity_*`` functions, which the parity tests of
``tests/test_*.py`` use too) and both run on the first two images in eval mode, in fp32
with TF32 off (``check_parity``); the table's footnotes give ``max |ours - peer|`` and what
had to be set equal (e.g. biases the peer lacks).

On CUDA times come from CUDA events after a synchronize, and a ``peak MiB`` column gives
the peak memory of one forward+backward above what was allocated before it. That path is
written but has not been run here (CPU only).

``tools/analysis/benchmark_plugins.py`` is the command line (shapes, options, usage);
import this module to run it from Python::

    from mmplug.analysis import benchmark
    groups = benchmark.run(benchmark.plan(['SE'], stages=['c3']), torch.device('cpu'), 2, 10)
"""
import contextlib
import copy
import math
import statistics

import torch
from torch import nn

from mmplug.analysis.macs import count_macs
from mmplug.analysis.peers import MODULES
from mmplug.analysis.report import MIB, fmt, fmt_ratio
from mmplug.analysis.timing import peak_bytes, progress_bar, round_robin, timer

#: Feature levels: name -> (channels, stride). c2-c5: ResNet-50 stage outputs;
#: p3: an FPN level (256 channels).
STAGES = {'c2': (256, 4), 'c3': (512, 8), 'c4': (1024, 16), 'c5': (2048, 32), 'p3': (256, 8)}

#: Parity holds when max |ours - peer| <= PARITY_TOL * max(1, max |peer|).
PARITY_TOL = 1e-4


# ------------------------------------------------------------ shapes

def stage_shape(stage, batch, image, width_div=1):
    """``[N, C, H, W]`` of feature level ``stage`` for ``batch`` images of size ``image``."""
    channels, stride = STAGES[stage]
    return (batch, channels // width_div, math.ceil(image[0] / stride),
            math.ceil(image[1] / stride))


def input_shapes(kind, shape):
    """Input shapes of a module of input ``kind`` placed at a stage whose output is ``shape``."""
    n, c, h, w = shape
    if kind == 'conv':  # the bottleneck's conv2
        return [(n, c // 4, h, w)]
    if kind == 'strided':  # the stride-2 conv2 of the stage's first bottleneck
        return [(n, c // 4, 2 * h, 2 * w)]
    if kind == 'pyramid':  # this level and two coarser ones
        return [(n, c, math.ceil(h / s), math.ceil(w / s)) for s in (1, 2, 4)]
    return [tuple(shape)]


def _shape_label(shapes, where):
    text = ' + '.join('x'.join(map(str, s)) for s in shapes)
    return f'{text} ({where})' if where else text


def _where(kind, stage):
    if stage is None:
        return 'custom'
    name = stage.upper() if stage.startswith('p') else stage
    if kind == 'pyramid':  # e.g. P3-P5
        return f'{name}-{name[0]}{int(stage[1:]) + 2}'
    return {'conv': f'{name} conv2', 'strided': f'{name} strided conv2'}.get(kind, name)


# ------------------------------------------------------------ measurements

def _storage_key(t):
    storage = t.untyped_storage()
    return storage.data_ptr(), str(t.device)


def saved_tensor_bytes(module, inputs):
    """Bytes autograd keeps for the backward of ``module(*inputs)`` (the module docstring's rule).

    The sum of ``nbytes`` of the distinct storages of the saved tensors, leaving
    out the storages of ``inputs`` and of the module's parameters and buffers.

    Returns:
        tuple: ``(bytes, output)``; the output holds the graph.
    """
    exclude = {_storage_key(t) for t in (*inputs, *module.parameters(), *module.buffers())}
    kept = {}

    def pack(t):
        key = _storage_key(t)
        if key not in exclude:
            kept[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    return sum(kept.values()), out


def _loss(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(o.sum() for o in outs)


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _randomize_(module, seed):
    """Seeded random weights (``1/sqrt(fan_in)`` for >1-D, 0.5 otherwise) and BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        std = p[0].numel() ** -0.5 if p.dim() > 1 else 0.5
        p.copy_((torch.randn(p.shape, generator=gen) * std).to(p))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls and convolutions in full precision: CUDA's TF32 off (Ampere and later
    run fp32 convolutions in TF32 by default, ~1e-3 relative error)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_parity(ours, other, parity, inputs, seed=0):
    """Compare ``other`` with ``ours`` on copies with random weights mapped by ``parity``.

    Runs the first two images of ``inputs`` in eval mode, in fp32 with TF32 off.
    Returns a dict: ``max_abs_diff``, ``scale`` (max |output|), ``ok`` (within
    ``PARITY_TOL`` relative to ``max(1, scale)``) and ``note``.
    """
    ours, other = copy.deepcopy(ours).eval(), copy.deepcopy(other).eval()
    xs = [x[:2] for x in inputs]
    with torch.no_grad(), full_fp32():
        _randomize_(ours, seed)
        _randomize_(other, seed + 1)  # every weight the mapping misses stays different
        note, transform = parity(ours, other)
        a = _first_tensor(ours(*xs))
        b = _first_tensor(other(*xs))
        if transform is not None:
            b = transform(b, xs)
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    return dict(max_abs_diff=diff, scale=scale, ok=diff <= PARITY_TOL * max(1.0, scale),
                note=note)


def _error(err):
    text = f'{type(err).__name__}: {err}'.splitlines()[0]
    return text if len(text) <= 120 else text[:117] + '...'


def _autocast(device, dtype):
    """Autocast to ``dtype`` (None: fp32, no autocast)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _setup(candidate, inputs, grad_inputs, device, ours, dtype=None, compile_backend=None):
    """Build ``candidate`` and measure what does not need timing.

    Returns:
        tuple: ``(module, timed, row)``: the eager module (parity), what is timed
        (the module, or ``torch.compile`` of it) and a dict row.
    """
    row = dict(impl=candidate.impl, kind=candidate.kind, error=None, params=None, macs=None,
               saved_bytes=None, peak_bytes=None, parity=None)
    try:
        module = candidate.build().to(device).train()
        row['params'] = sum(p.numel() for p in module.parameters())
        row['macs'] = count_macs(module, lambda: module(*inputs))[0]

        def forward_backward():
            with _autocast(device, dtype):
                saved, out = saved_tensor_bytes(module, grad_inputs)
            _loss(out).backward()
            return saved

        row['saved_bytes'], row['peak_bytes'] = peak_bytes(forward_backward, device)
        if candidate.parity is not None and ours is not None:
            row['parity'] = check_parity(ours, module, candidate.parity, inputs)
        timed = module if compile_backend is None else torch.compile(module,
                                                                      backend=compile_backend)
    except Exception as err:  # a missing or failing implementation fails its row only
        row['error'] = _error(err)
        module = timed = None
    return module, timed, row


def measure_group(name, shapes, device, warmup, repeats, bar=None, seed=0, dtype=None,
                  compile_backend=None):
    """Build module ``name`` and its peers for inputs of ``shapes`` and measure them.

    Timing is round-robin: each of ``warmup + repeats`` rounds times the clone
    floor and every candidate once (forward, then forward+backward), in a
    shuffled order. ``dtype`` (e.g. ``torch.bfloat16``) times under autocast to
    it; ``compile_backend`` times ``torch.compile(module, backend=...)`` (the
    warm-up rounds compile).

    Returns:
        dict: ``clone_ms``, ``clone_samples_ms`` and ``rows`` (one dict per
        candidate: ``impl``, ``kind``, ``params``, ``macs``, ``saved_bytes``,
        ``peak_bytes`` (CUDA), ``fwd_ms``, ``fwd_bwd_ms``, their samples, the
        ratios ``fwd_per_clone``, ``fwd_vs_peer``, ``fwd_bwd_vs_peer``,
        ``parity`` and ``error``).
    """
    kind, _, candidates_of = MODULES[name]
    torch.manual_seed(seed)
    inputs = [torch.randn(s, device=device) for s in shapes]
    grad_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    candidates = candidates_of(shapes[0][1])
    built, rows = [], []
    ours = None
    for candidate in candidates:
        torch.manual_seed(seed)
        module, timed_module, row = _setup(candidate, inputs, grad_inputs, device, ours, dtype,
                                           compile_backend)
        if ours is None and module is not None and candidate.kind == 'ours':
            ours = module
        rows.append(row)
        built.append(timed_module)
    timed = timer(device)
    entries = [None] + [i for i, m in enumerate(built) if m is not None]  # None: clone floor

    def forward(module):
        with torch.no_grad(), _autocast(device, dtype):
            module(*inputs)

    def forward_backward(module):
        with _autocast(device, dtype):
            loss = _loss(module(*grad_inputs))
        loss.backward()

    def measure(entry):
        if entry is None:
            return timed(lambda: [x.clone() for x in inputs])
        module = built[entry]
        t_fwd = timed(lambda: forward(module))
        module.zero_grad(set_to_none=True)
        for x in grad_inputs:
            x.grad = None
        return t_fwd, timed(lambda: forward_backward(module))

    got = round_robin(entries, measure, warmup, repeats, shuffle=True,
                      on_round=None if bar is None else bar.update)
    clone_samples = got.pop(None)
    samples = {i: ([f for f, _ in s], [b for _, b in s]) for i, s in got.items()}
    clone_ms = statistics.median(clone_samples)
    for i, row in enumerate(rows):
        fwd, bwd = samples.get(i, (None, None))
        row['fwd_samples_ms'], row['fwd_bwd_samples_ms'] = fwd, bwd
        row['fwd_ms'] = statistics.median(fwd) if fwd else None
        row['fwd_bwd_ms'] = statistics.median(bwd) if bwd else None
        row['fwd_per_clone'] = None if fwd is None else row['fwd_ms'] / clone_ms
    peers = [r for r in rows if r['kind'] == 'peer' and r['fwd_ms'] is not None]
    for key, ratio in (('fwd_ms', 'fwd_vs_peer'), ('fwd_bwd_ms', 'fwd_bwd_vs_peer')):
        fastest = min((r[key] for r in peers), default=None)
        for row in rows:
            row[ratio] = (row[key] / fastest if fastest and row['kind'] != 'reference'
                          and row[key] is not None else None)
    return dict(clone_ms=clone_ms, clone_samples_ms=clone_samples, rows=rows)


def plan(names, stages=None, shape=None, batch=8, image=(224, 224), scale=1.0, width_div=1):
    """The groups to measure: a list of (module, stage or None, input shapes)."""
    image = tuple(max(1, round(s * scale)) for s in image)
    jobs = []
    for name in names:
        kind, default_stages, _ = MODULES[name]
        if shape is not None:
            jobs.append((name, None, input_shapes(kind, shape)))
            continue
        for stage in stages or default_stages:
            jobs.append((name, stage,
                         input_shapes(kind, stage_shape(stage, batch, image, width_div))))
    return jobs


def run(jobs, device, warmup, repeats, progress=True, dtype=None, compile_backend=None):
    """Measure every job of ``plan``; a list of group dicts (``measure_group`` plus labels)."""
    bar = progress_bar(len(jobs) * (warmup + repeats), 'benchmark') if progress else None
    groups = []
    try:
        for name, stage, shapes in jobs:
            kind = MODULES[name][0]
            if bar is not None:
                bar.set_description(f'{name} {stage or "custom"}')
            group = measure_group(name, shapes, device, warmup, repeats, bar, dtype=dtype,
                                  compile_backend=compile_backend)
            groups.append(dict(module=name, stage=stage, input=kind,
                               shapes=[list(s) for s in shapes],
                               shape=_shape_label(shapes, _where(kind, stage)), **group))
    finally:
        if bar is not None:
            bar.close()
    return groups


# ------------------------------------------------------------ output

#: --dtype choices: name -> autocast dtype (None: fp32 without autocast).
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _precision(meta):
    text = 'fp32' if meta.get('dtype', 'fp32') == 'fp32' else f'{meta["dtype"]} autocast'
    if meta.get('compile'):
        text += f', torch.compile(backend={meta["compile"]!r})'
    return text


def to_markdown(results):
    """The table, the parity checks and the footnotes."""
    meta, groups = results['meta'], results['groups']
    cuda = meta['device'].startswith('cuda')
    lines = [
        f'Device: {meta["device_name"]}, {meta["threads"]} threads; torch {meta["torch"]}. '
        f'Medians of {meta["repeats"]} interleaved repeats after {meta["warmup"]} warm-up; '
        f'{_precision(meta)}, train mode, {meta["date"]}.' + (' **Smoke run: not a benchmark.**'
                                                if meta['smoke'] else ''), '',
        '| module | shape | impl | params | MMACs | fwd ms | fwd+bwd ms | saved MiB '
        '| fwd / clone | fwd vs fastest peer | fwd+bwd vs fastest peer |'
        + (' peak MiB |' if cuda else ''),
        '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
        + (' ---: |' if cuda else '')]
    parity = []
    for g in groups:
        cells = [g['module'], g['shape'], '`x.clone()` floor', '-', '-', fmt(g['clone_ms']),
                 '-', '-', '1.00x', '', '']
        lines.append('| ' + ' | '.join(cells + (['-'] if cuda else [])) + ' |')
        for row in g['rows']:
            impl = row['impl'] + (' (ref.)' if row['kind'] == 'reference'
                                  and '(ref' not in row['impl']
                                  and 'replaced' not in row['impl'] else '')
            if row['error']:
                cells = [g['module'], g['shape'], impl, f'failed: {row["error"]}'] + [''] * 7
            else:
                cells = [g['module'], g['shape'], impl, f'{row["params"]:,}',
                         fmt(row['macs'] / 1e6), fmt(row['fwd_ms']), fmt(row['fwd_bwd_ms']),
                         fmt(row['saved_bytes'] / MIB), fmt_ratio(row['fwd_per_clone']),
                         fmt_ratio(row['fwd_vs_peer']), fmt_ratio(row['fwd_bwd_vs_peer'])]
            if cuda:
                cells.append('' if row['peak_bytes'] is None else fmt(row['peak_bytes'] / MIB))
            lines.append('| ' + ' | '.join(cells) + ' |')
            p = row['parity']
            if p is not None:
                parity.append(f'- {g["module"]} {g["shape"]}, {row["impl"]}: max |diff| '
                              f'{p["max_abs_diff"]:.2g} (max |out| {p["scale"]:.3g}; '
                              f'{"ok" if p["ok"] else "MISMATCH"}); {p["note"]}.')
    lines += ['', 'Parity with the peers (random weights mapped from ours, first two images, '
              f'eval mode; ok: max |diff| <= {PARITY_TOL:g} x max(1, max |out|)):', '']
    lines += parity or ['- none measured']
    lines += ['', 'Notes:', '',
              '1. fwd: forward under `torch.no_grad()`, train mode. fwd+bwd: forward and '
              '`out.sum().backward()`, input requiring grad. Candidates of a group are timed '
              'round-robin in one run, each round in its own (seeded) shuffled order; warm-up '
              'excluded.',
              '2. MMACs: one forward of the whole batch, FlopCounterMode FLOPs / 2 (conv, '
              'matmul, attention; elementwise, pooling, norms, `grid_sample` not counted); '
              "mmcv's deformable convs as their dense conv. Two implementations of one "
              'function can differ (a dot product as a matmul is counted, as multiply-and-sum '
              'it is not).',
              '3. saved MiB: distinct storages of the tensors autograd saves for backward '
              '(views and repeats once), without the input, parameters and buffers.',
              '4. `x.clone()` floor: one copy of the input(s), the memory-traffic floor of a '
              'module that reads its input and writes an output of the same size.',
              '5. vs fastest peer: over the fastest peer of the group (forward and '
              'forward+backward separately). "(replaced conv)"/"(reference)" rows are the '
              'plain op a conv replacement takes the place of, not peers.',
              '6. Shapes: ResNet-50 stage outputs (c2-c5) for '
              f'{meta["batch"]} images of {meta["image"][0]}x{meta["image"][1]}; conv '
              'replacements act on the stage\'s bottleneck conv2 (C/4 channels), strided ones '
              'at twice its resolution; ASFF on FPN P3-P5 (256 channels).'
              if meta['shape'] is None else
              f'6. Shape: {meta["shape"]} as the stage output (conv replacements: C/4).']
    if cuda:
        lines.append('7. peak MiB: CUDA peak allocated during one forward+backward, above what '
                     'was allocated before it.')
    return '\n'.join(lines) + '\n'
