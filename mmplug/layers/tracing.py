"""Whether the code runs under a tracer rather than eagerly."""
import torch

__all__ = ['is_tracing']


def is_tracing():
    """True under ``torch.jit`` (trace or script), ``torch.compile`` and ``torch.export``
    (dynamo, which the ONNX exporter uses too): Python-side bookkeeping that a tracer
    cannot record must be skipped there."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    is_compiling = getattr(torch.compiler, 'is_compiling', None)  # torch >= 2.3
    if is_compiling is None:
        from torch._dynamo import is_compiling
    return is_compiling()
