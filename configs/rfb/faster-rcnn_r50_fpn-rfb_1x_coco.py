# Faster R-CNN R50-FPN, COCO 1x, with a Receptive Field Block (arXiv 1711.07767) on each of
# FPN's five outputs: neck=[FPN, RFB]. Everything else is mmdet's baseline
# (torchvision://resnet50 init).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    dict(type='RFB', in_channels=[256, 256, 256, 256, 256]),
])
