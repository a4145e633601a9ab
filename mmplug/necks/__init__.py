"""Necks.

Contract: take the tuple of multi-level features a backbone or another neck
returns and give a tuple back, so they can be used alone or chained after FPN /
YOLOV3Neck with ``neck=[...]``. (ASFF, RFB, ASPP, MPM.)
"""
__all__ = []
