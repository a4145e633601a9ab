# Faster R-CNN R50-FPN, COCO 1x, with one embedded-Gaussian non-local block right before
# the last residual block of res4 (c4), the paper's detection setting (arXiv 1711.07971,
# Sec. 6). mmdet's ResNet plugins go into every block of a stage, so this config uses
# PluggedBackbone to put the block after layer3.4 (blocks layer3.0-layer3.5) only. The
# inner ResNet is the base config's backbone (`_base_.model.backbone`): mmdet's, with its
# torchvision://resnet50 initialisation. The non-local block is the identity at init.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PluggedBackbone',
        backbone=_base_.model.backbone,  # the base config's ResNet-50
        plugins=[dict(cfg=dict(type='NonLocal'), after='layer3.4')]))
