# Faster R-CNN R50-FPN, COCO 1x, with CBAM (channel then spatial attention) after conv3 of
# every bottleneck of stages c3-c5, as the paper's ResNet-50 + CBAM (arXiv 1807.06521,
# reduction 16, 7x7 spatial kernel). Not in c2: the baseline freezes stage 1
# (frozen_stages=1), which would keep CBAM modules there at their random init (mmdet's own
# plugin configs, e.g. GCNet's, also plug c3-c5). Everything else is mmdet's baseline
# (torchvision://resnet50 init).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='CBAM'), stages=(False, True, True, True), position='after_conv3')
    ]))
