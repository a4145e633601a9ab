"""mmplug: plug-and-play CNN modules for OpenMMLab.

Importing the package registers every module into mmengine's root ``MODELS``
registry; configs load it with::

    custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
"""
from .version import __version__
from .registry import MODELS
from . import plugins
from .plugins import SGE
from .utils import allow_mmengine_checkpoints

# mmengine 0.10.7 writes objects into checkpoints that torch >= 2.6's safe
# loading (weights_only=True) rejects, which breaks ``resume``. Allow exactly
# those classes; everything else stays refused.
allow_mmengine_checkpoints()

__all__ = ['__version__', 'MODELS', 'plugins', 'SGE', 'allow_mmengine_checkpoints']
