"""OpenMMLab's own tools on our configs, as a user runs them."""
import os.path as osp
from functools import partial

import torch
from mmengine.config import Config

from _harness import ROOT, build_model_in_scope

MAIN = osp.join(ROOT, 'configs/faster_rcnn_r50_dcn_asff.py')


def test_get_flops_counts_the_main_config():
    """What mmdet's ``tools/analysis_tools/get_flops.py`` runs: mmengine's jit-traced
    complexity counter on the model, with the data samples bound to ``forward``."""
    from mmdet.testing import demo_mm_inputs
    from mmengine.analysis import get_model_complexity_info
    cfg = Config.fromfile(MAIN)
    cfg.model.backbone.init_cfg = None  # no ImageNet download in a test
    model = build_model_in_scope(cfg.model, 'mmdet').eval()
    data = model.data_preprocessor(demo_mm_inputs(1, image_shapes=[(3, 96, 128)]), False)
    model.forward = partial(model.forward, data_samples=data['data_samples'])
    with torch.no_grad():
        out = get_model_complexity_info(model, None, inputs=data['inputs'], show_table=False,
                                        show_arch=False)
    # R50 alone is 4.1 GFLOPs at 224x224; this image is 0.24 of that area, plus FPN, ASFF,
    # the RPN and the RoI head.
    assert 1e9 < out['flops'] < 2e10, out['flops']
    assert out['params'] == sum(p.numel() for p in model.parameters())
