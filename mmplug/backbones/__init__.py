"""Backbone wrappers: plugins where mmdet's and mmseg's backbones take none, with the
wrapped backbone's checkpoint keys unchanged.
"""
from .plugged_backbone import PluggedBackbone

__all__ = ['PluggedBackbone']
