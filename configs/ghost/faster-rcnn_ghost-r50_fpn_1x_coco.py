# Faster R-CNN with Ghost-ResNet-50 + FPN, COCO 1x: every conv of the ResNet-50 backbone
# is a Ghost module (arXiv 1911.11907, ratio s=2, 3x3 cheap depthwise ops), about half the
# backbone's parameters and FLOPs. As in the paper's Ghost-ResNet-50, all convs are replaced,
# the 7x7 stem included (mmdet builds it with conv_cfg too).
#
# No ImageNet weights exist for this exact backbone: torchvision://resnet50's conv shapes
# do not fit Ghost modules, so the backbone starts from random init. Train it with its own
# ImageNet checkpoint (init_cfg=dict(type='Pretrained', checkpoint=...)) or, from scratch,
# with BN in train mode and nothing frozen, as here, and a longer schedule.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        conv_cfg=dict(type='GhostConv2d', ratio=2, dw_size=3),
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None))
