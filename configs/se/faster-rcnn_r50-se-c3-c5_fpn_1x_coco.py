# Faster R-CNN R50-FPN, COCO 1x, with Squeeze-and-Excitation after conv3 (before the
# residual sum) of every bottleneck of stages c3-c5, as in SE-ResNet-50 (arXiv 1709.01507,
# reduction 16). Not in c2: the baseline freezes stage 1 (frozen_stages=1), which would keep
# SE layers there at their random init (mmdet's own plugin configs, e.g. GCNet's, also plug
# c3-c5). Everything else is mmdet's baseline, including torchvision://resnet50
# initialisation (the SE layers start from their own init).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='SE'), stages=(False, True, True, True), position='after_conv3')
    ]))
