"""A plugin's own BatchNorms train while the plugin trains, whatever the host's ``norm_eval``.

mmdet's and mmseg's ResNets put every ``_BatchNorm`` below them, a plugin's too, in
eval mode after ``train()`` when ``norm_eval=True``. A plugin's fresh BN (mean 0,
variance 1) then never normalises: an SK unit inside ResNet-50 starts at 0.10-0.13x
its input's scale instead of ~0.7x. Plugins call :func:`follow_module_mode` first in
``forward``, so their BNs take the plugin's own mode, which the host's
``train()``/``eval()`` sets. In a ``frozen_stages`` stage the plugins are in eval mode
with frozen parameters, so they stay at their initialisation. A plugin whose
``norm_eval`` attribute is true (``PluggedBackbone(plugin_norm_eval=True)`` sets it)
keeps its BNs in eval mode.
"""
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['follow_module_mode']


def follow_module_mode(module):
    """Put every BatchNorm below ``module`` in ``module``'s own train/eval mode (eval when
    ``module.norm_eval`` is true)."""
    training = module.training and not getattr(module, 'norm_eval', False)
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.training != training:
            m.train(training)
