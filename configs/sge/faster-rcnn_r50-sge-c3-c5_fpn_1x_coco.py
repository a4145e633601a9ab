# Faster R-CNN R50-FPN, COCO 1x, with Spatial Group-wise Enhance after conv3 of every
# bottleneck in stages c3-c5 (arXiv 1905.09646). Everything else is mmdet's baseline,
# including the ImageNet-pretrained torchvision://resnet50 initialisation.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='SGE', groups=64), stages=(False, True, True, True),
             position='after_conv3')
    ]))
