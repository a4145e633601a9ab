"""ONNX export and ``torch.compile`` of every mmplug module (``tests/_module_zoo.py``).

ONNX: each module, in eval mode, is exported with ``torch.onnx.export(...,
dynamo=True)`` (the ``torch.export``-based exporter, torch's default since 2.9;
the TorchScript-based ``dynamo=False`` path is deprecated and warns) with a
dynamic batch dimension, and run in onnxruntime on the CPU at the exported
batch size and at two others. Outputs must match PyTorch within ``1e-4``
absolute at unit scale: the zoo's weights are random N(0, 1), so outputs reach
~1e3; the bound is ``1e-4 * max(1, max|output|)``.

``torch.compile``: each module compiled with ``fullgraph=True`` (no graph break
allowed) gives eager's outputs in eval mode, and in train mode its outputs,
parameter and input gradients and updated buffers (BatchNorm statistics), on
``aot_eager`` for all modules and on ``inductor`` for the custom-autograd ones
(see ``COMPILE_BACKEND``).
Only mmcv's compiled deformable-conv op graph-breaks (it is opaque to dynamo):
``DCNv2UnitMask`` compiles on its plain-PyTorch path (``impl='torch'``, what
``'auto'`` picks on CPU); its ``impl='mmcv'`` breaks are checked to be in mmcv.
"""
import contextlib
import copy
import io
import logging
import os
import shutil
import warnings

import pytest
import torch

from _harness import needs_is_exporting, needs_onnx_dynamo
from _module_zoo import ZOO, make, run

#: Backend of the full compile sweep. ``aot_eager`` runs dynamo (where graph breaks
#: arise) and AOTAutograd (functionalisation, the joint forward/backward trace) but no code
#: generation: inductor's C++ compiles cost 5-20 s per module and mode on one core, over
#: this file's budget for 20 modules. ``MMPLUG_COMPILE_BACKEND=inductor`` runs the sweep on
#: inductor; by default inductor runs on ``INDUCTOR_NAMES`` in train mode.
COMPILE_BACKEND = os.environ.get('MMPLUG_COMPILE_BACKEND', 'aot_eager')
INDUCTOR_NAMES = ['SE', 'SGE', 'CBAM', 'NonLocal', 'DCNv2UnitMask']

DCN = 'DCNv2UnitMask'
NAMES = list(ZOO)


def _args(name, inputs):
    """Positional arguments of ``module(...)``: a neck takes one list of levels."""
    return (list(inputs), ) if ZOO[name].kind == 'neck' else tuple(inputs)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints, logs and warnings (pytest shows them on
    failure only anyway, but they flood ``-s`` runs and the warnings summary)."""
    loggers = [logging.getLogger(n) for n in ('torch.onnx', 'torch.export', 'onnxscript')]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _onnx_runtime():
    """onnxruntime, after importing onnxscript (the exporter's) without its import-time
    deprecation warnings; skips where either is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        pytest.importorskip('onnxscript')
        return pytest.importorskip('onnxruntime')


def _build(name, n=2, h=8, w=8, seed=0, impl='torch'):
    module, inputs = make(name, n=n, h=h, w=w, seed=seed)
    if name == DCN:
        module.impl = impl
    return module, inputs


# ---- ONNX ----

def _export_onnx(name, module, inputs):
    """``torch.onnx.export`` (dynamo) with the batch dimension of every input dynamic."""
    batch = torch.export.Dim('batch')
    shapes = [{0: batch} for _ in inputs]
    dynamic_shapes = (shapes, ) if ZOO[name].kind == 'neck' else tuple(shapes)
    with _quiet():
        program = torch.onnx.export(module, _args(name, inputs), dynamo=True, opset_version=18,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
    return program.model_proto.SerializeToString()


def _assert_onnx_matches(name, module, batch_sizes=(2, 3, 1)):
    """Export ``module`` (eval mode) at batch 2 and run it at ``batch_sizes`` in onnxruntime."""
    ort = _onnx_runtime()
    module.eval()
    _, inputs = _build(name, n=2, seed=1)
    session = ort.InferenceSession(_export_onnx(name, module, inputs),
                                   providers=['CPUExecutionProvider'])
    feeds = [i.name for i in session.get_inputs()]
    assert len(feeds) == len(inputs)
    diffs = []
    for n in batch_sizes:
        _, inputs = _build(name, n=n, seed=n)
        with torch.no_grad():
            expected = run(name, module, inputs)
        got = session.run(None, {k: x.numpy() for k, x in zip(feeds, inputs)})
        assert len(got) == len(expected)
        for out, ref in zip(got, expected):
            assert tuple(out.shape) == tuple(ref.shape)
            assert torch.isfinite(ref).all() and ref.abs().max() > 0
            diff = (torch.from_numpy(out) - ref).abs().max().item()
            scale = max(1.0, ref.abs().max().item())
            assert diff <= 1e-4 * scale, f'{name} batch {n}: max abs diff {diff} at scale {scale}'
            diffs.append(diff)
    return max(diffs)


@needs_onnx_dynamo
@pytest.mark.parametrize('name', [n for n in NAMES if n != DCN])
def test_onnx_export_matches_pytorch_with_dynamic_batch(name):
    module, _ = _build(name)
    _assert_onnx_matches(name, module)


@needs_onnx_dynamo
@pytest.mark.parametrize('impl', ['torch', 'auto'])
def test_dcn_onnx_export_on_plain_pytorch_path(impl):
    # 'auto' takes the plain-PyTorch path under torch.export on any device.
    module, _ = _build(DCN, impl=impl)
    _assert_onnx_matches(DCN, module)


def _error_chain(err):
    text = []
    while err is not None:
        text.append(str(err))
        err = err.__cause__ or err.__context__
    return '\n'.join(text)


@needs_is_exporting
@needs_onnx_dynamo
def test_dcn_mmcv_path_refuses_export_with_the_fix():
    module, inputs = _build(DCN, impl='mmcv')
    module.eval()
    with pytest.raises(RuntimeError, match=r"impl='torch'"):
        torch.export.export(module, tuple(inputs))
    _onnx_runtime()
    with pytest.raises(Exception) as err:
        with _quiet():
            torch.onnx.export(module, tuple(inputs), dynamo=True, opset_version=18)
    assert "impl='torch'" in _error_chain(err.value)


@needs_onnx_dynamo
def test_dcn_modulated_deform_conv2d_function_exports():
    """The plain-PyTorch function on its own (``mmplug.conv.modulated_deform_conv``)."""
    ort = _onnx_runtime()
    from mmplug.conv.modulated_deform_conv import modulated_deform_conv2d

    class Fn(torch.nn.Module):

        def forward(self, x, offset, mask, weight, bias):
            return modulated_deform_conv2d(x, offset, mask, weight, bias, 2, 1, 1, 2, 2)

    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 4, 7, 6, generator=g), 2 * torch.randn(2, 36, 4, 3, generator=g),
            torch.rand(2, 18, 4, 3, generator=g), torch.randn(6, 2, 3, 3, generator=g),
            torch.randn(6, generator=g))
    with _quiet():
        program = torch.onnx.export(Fn(), args, dynamo=True, opset_version=18)
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    expected = Fn()(*args)
    assert (torch.from_numpy(got) - expected).abs().max() <= 1e-4 * expected.abs().max()


# ---- torch.compile ----

def _compile_inputs(name, n=2):
    # Tiny maps; necks keep 8x8 so that their coarsest level is 2x2 (BN in train mode).
    size = 8 if ZOO[name].kind == 'neck' else 4
    return dict(n=n, h=size, w=size)


def _rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()


def _check_compile_eval(name, backend):
    torch._dynamo.reset()
    module, inputs = _build(name, **_compile_inputs(name))
    module.eval()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    with torch.no_grad():
        expected = run(name, module, inputs)
        got = run(name, compiled, inputs)
    assert len(got) == len(expected)
    for out, ref in zip(got, expected):
        assert _rel_diff(out, ref) <= 1e-5, name
    torch._dynamo.reset()


def _check_compile_train(name, backend):
    """Train mode: outputs, gradients and BN running statistics as eager autograd (which
    runs SE/SGE/CBAM/NonLocal's custom autograd functions; compiled code takes plain ops)."""
    torch._dynamo.reset()
    module, inputs = _build(name, **_compile_inputs(name))
    eager = copy.deepcopy(module)
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    x_eager = [x.clone().requires_grad_() for x in inputs]
    x_comp = [x.clone().requires_grad_() for x in inputs]
    expected = run(name, eager, x_eager)
    got = run(name, compiled, x_comp)
    weights = [torch.randn_like(ref) for ref in expected]
    sum((ref * wt).sum() for ref, wt in zip(expected, weights)).backward()
    sum((out * wt).sum() for out, wt in zip(got, weights)).backward()
    for out, ref in zip(got, expected):
        assert _rel_diff(out, ref) <= 1e-5, name
    # Relative to the largest parameter gradient: some gradients are exactly 0 in exact
    # arithmetic and rounding noise in both (NonLocal's phi bias shifts every key's logit
    # of a query equally, which the softmax ignores).
    floor = max([1.0] + [q.grad.abs().max().item() for q in eager.parameters()
                         if q.grad is not None])
    for (key, p), (_, q) in zip(module.named_parameters(), eager.named_parameters()):
        assert (p.grad is None) == (q.grad is None), key
        if q.grad is not None:
            assert (p.grad - q.grad).abs().max() <= 1e-5 * floor, key
    for a, b in zip(x_comp, x_eager):
        assert _rel_diff(a.grad, b.grad) <= 1e-5, 'input'
    for (key, a), (_, b) in zip(module.named_buffers(), eager.named_buffers()):
        assert torch.equal(a, b) if not a.is_floating_point() else _rel_diff(a, b) <= 1e-5, key
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_compile_fullgraph_matches_eager_in_eval_mode(name):
    _check_compile_eval(name, COMPILE_BACKEND)


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_compile_fullgraph_matches_eager_in_train_mode_with_gradients(name):
    _check_compile_train(name, COMPILE_BACKEND)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit, imported by inductor
@pytest.mark.parametrize('name', INDUCTOR_NAMES)
def test_compile_inductor_matches_eager_in_train_mode_with_gradients(name):
    """Inductor's generated C++ forward and backward, for the modules whose eager training
    path is hand-written (custom autograd functions) and the deformable conv."""
    if COMPILE_BACKEND == 'inductor':
        pytest.skip('the full sweep above already runs on inductor')
    if not any(shutil.which(cxx) for cxx in ('g++', 'c++', 'clang++')):
        pytest.skip('inductor on CPU needs a C++ compiler')
    _check_compile_train(name, 'inductor')


@pytest.mark.slow
def test_compile_dcn_mmcv_path_breaks_only_in_mmcv():
    torch._dynamo.reset()
    module, inputs = _build(DCN, impl='mmcv', **_compile_inputs(DCN))
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # dynamo's warning about mmcv's pybind11 function
        explanation = torch._dynamo.explain(module)(*inputs)
    assert explanation.graph_break_count >= 1
    for reason in explanation.break_reasons:
        # in mmcv's code, or (torch 2.1's dynamo) at our call of mmcv's autograd Function
        assert 'mmcv' in str(reason.reason) or any(
            'mmcv' in frame.filename or 'mmcv' in (frame.line or '')
            for frame in reason.user_stack), str(reason.reason)
    torch._dynamo.reset()
