# Faster R-CNN R50-FPN, COCO 1x, with a Selective Kernel unit after conv2 of every
# bottleneck of stages c3-c5 (arXiv 1903.06586; the paper's setting: M=2 paths, a 3x3 and a
# dilated 3x3, grouped convs G=32, reduction 16). The paper replaces the 3x3 conv with the SK
# unit; as a plugin it is added after it, so the torchvision://resnet50 weights stay usable.
# Not in c2: the baseline freezes stage 1 (frozen_stages=1), which would keep SK units there
# at their random init (mmdet's own plugin configs, e.g. GCNet's, also plug c3-c5).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='SK', dilations=(1, 2), groups=32), stages=(False, True, True, True),
             position='after_conv2')
    ]))
