"""Necks.

Contract: take the tuple of multi-level features a backbone or another neck
returns and give a tuple back, so they can be used alone or chained after FPN /
YOLOV3Neck with ``neck=[...]``. (ASFF, RFB, ASPP, MPM.)
"""
from .asff import ASFF
from .aspp import ASPP, ASPPBlock
from .mixed_pooling import MPM, MPMBlock
from .per_level import PerLevelNeck
from .rfb import RFB, RFBBlock

__all__ = ['ASFF', 'ASPP', 'ASPPBlock', 'MPM', 'MPMBlock', 'PerLevelNeck', 'RFB', 'RFBBlock']
