"""Backbone wrappers.

Contract: wrap any registered backbone config and insert plugins where mmdet's
and mmseg's backbones take none (BasicBlock ResNets, Darknet, CSPDarknet, HRNet),
without changing the wrapped backbone's checkpoint keys.
"""
from .plugged_backbone import PluggedBackbone

__all__ = ['PluggedBackbone']
