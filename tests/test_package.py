"""The package contract: registry, import hygiene, no name clashes with OpenMMLab."""
import subprocess
import sys

import pytest
from mmengine.registry import MODELS as ROOT_MODELS

import mmplug
from mmplug import MODELS

#: Every type mmplug registers; extend when a module is added.
MMPLUG_TYPES = [
    'CBAM', 'CoordConvPlugin', 'NonLocal', 'SE', 'SGE', 'SK', 'STN', 'StripPooling',
    'BlurConv2d', 'BlurPool2d', 'CoordConv2d', 'DCNv2UnitMask', 'GhostConv2d',
    'ASFF', 'ASPP', 'ASPPBlock', 'MPM', 'MPMBlock', 'PerLevelNeck', 'RFB', 'RFBBlock',
    'PluggedBackbone',
]

#: What ``import mmplug.engine`` (the tools' runtime) registers in mmengine's root.
MMPLUG_OTHER_TYPES = {
    'MODELS': ['CPUSyncBN'],  # mmplug.engine.CPUSyncBatchNorm, a norm layer for CPU/gloo runs
    'HOOKS': ['AtomicCheckpointHook'],
    'MODEL_WRAPPERS': ['CPUDistributedDataParallel'],
}


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


def test_registry_is_mmengine_root():
    assert MODELS is ROOT_MODELS
    assert MODELS.scope == 'mmengine' and MODELS.parent is None


@pytest.mark.parametrize('name', MMPLUG_TYPES)
def test_types_are_registered_in_root(name):
    cls = ROOT_MODELS.get(name)
    assert cls is not None and cls.__module__.startswith('mmplug.')
    assert getattr(mmplug, name) is cls


def test_no_name_clash_with_mmcv_mmdet_mmseg():
    # Import OpenMMLab's modules first, then mmplug (a clash raises KeyError at import),
    # and check that no child registry defines one of our names either.
    proc = _run(
        'import mmcv.cnn, mmcv.ops\n'
        'from mmdet.utils import register_all_modules as det\n'
        'from mmseg.utils import register_all_modules as seg\n'
        'det(init_default_scope=False); seg(init_default_scope=False)\n'
        'from mmdet.registry import MODELS as D\n'
        'from mmseg.registry import MODELS as S\n'
        'from mmengine.registry import MODELS as R\n'
        'before = set(R.module_dict)\n'
        'import mmplug\n'
        f'names = {MMPLUG_TYPES!r}\n'
        'assert not before & set(names), before & set(names)\n'
        'assert not set(D.module_dict) & set(names), set(D.module_dict) & set(names)\n'
        'assert not set(S.module_dict) & set(names), set(S.module_dict) & set(names)\n'
        'print("ok")\n')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr


def test_other_registered_types_do_not_clash():
    proc = _run(
        'import mmcv.cnn, mmcv.ops\n'
        'from mmdet.utils import register_all_modules as det\n'
        'from mmseg.utils import register_all_modules as seg\n'
        'det(init_default_scope=False); seg(init_default_scope=False)\n'
        'import mmengine.registry as root, mmdet.registry as d, mmseg.registry as s\n'
        f'types = {MMPLUG_OTHER_TYPES!r}\n'
        'before = {k: set(getattr(root, k).module_dict) for k in types}\n'
        'import mmplug.engine\n'
        'for k, names in types.items():\n'
        '    assert not before[k] & set(names), (k, before[k] & set(names))\n'
        '    for reg in (getattr(d, k), getattr(s, k)):\n'
        '        assert not set(reg.module_dict) & set(names), (k, reg.scope)\n'
        '    for n in names:\n'
        '        assert getattr(root, k).get(n).__module__.startswith("mmplug."), n\n'
        'print("ok")\n')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr


def test_import_registers_modules_only():
    """``import mmplug`` registers its modules and allow-lists mmengine's checkpoint
    objects; no hook, model wrapper, norm layer or file backend (``mmplug.engine`` does)."""
    proc = _run(
        'import mmcv.cnn, mmcv.ops, mmengine.model, mmengine.runner  # their own registrations\n'
        'import mmengine.registry as root\n'
        'from mmengine.fileio.backends.registry_utils import backends\n'
        'regs = [n for n in dir(root) if isinstance(getattr(root, n), root.Registry)]\n'
        'before = {n: set(getattr(root, n).module_dict) for n in regs}\n'
        'files = set(backends)\n'
        'import mmplug\n'
        'new = {n: sorted(set(getattr(root, n).module_dict) - before[n]) for n in regs}\n'
        'print({n: v for n, v in new.items() if v}, sorted(set(backends) - files))\n'
        'import mmplug.engine\n'
        'print(sorted(set(backends) - files), "AtomicCheckpointHook" in root.HOOKS.module_dict)\n')
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first == f"{{'MODELS': {sorted(MMPLUG_TYPES)!r}}} []", first
    assert second == "['atomic_local'] True", second


@pytest.mark.parametrize('missing', ['mmdet', 'mmseg'])
def test_imports_without_mmdet_or_mmseg(missing):
    # sys.modules[name] = None makes `import name` fail as if it were not installed.
    proc = _run(f'import sys; sys.modules[{missing!r}] = None\n'
                'import mmplug, mmplug.data\n'
                'from mmplug import SGE\n'
                'loaded = [m.split(".")[0] for m in sys.modules if sys.modules[m]]\n'
                f'assert {missing!r} not in loaded\n'
                'print("ok")\n')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr


def test_import_does_not_pull_mmdet_or_mmseg():
    proc = _run('import sys, mmplug\n'
                'print(sorted({m.split(".")[0] for m in sys.modules} & {"mmdet", "mmseg"}))\n')
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stderr


def test_mmcv_without_ops_still_imports_and_names_the_fix():
    # An mmcv without compiled ops (mmcv-lite, or a build-isolated source build):
    # every other module still works; asking for the DCN layer says how to fix it.
    proc = _run("import sys; sys.modules['mmcv.ops'] = None\n"
                'import mmplug\n'
                'from mmplug import MODELS\n'
                "MODELS.build(dict(type='SE', in_channels=16))\n"
                'try:\n'
                "    MODELS.build(dict(type='DCNv2UnitMask', in_channels=4, out_channels=4,"
                ' kernel_size=3))\n'
                'except ImportError as e:\n'
                '    print(e)\n')
    assert proc.returncode == 0, proc.stderr
    assert 'DCNv2UnitMask needs mmcv built with its ops' in proc.stdout
    assert 'MMCV_WITH_OPS=1' in proc.stdout
