# Faster R-CNN R50-FPN, COCO 1x, with atrous spatial pyramid pooling (DeepLabv3,
# arXiv 1706.05587) on each of FPN's five outputs: neck=[FPN, ASPP] with rates (1, 3, 6), as
# DetectoRS's ASPP over FPN (FPN levels are 4-64x smaller than DeepLab's output-stride-8
# map; larger rates mostly read zero padding on P5/P6). GroupNorm, because BN over the
# image-pool branch's 1x1 maps with mmdet's 2 images per GPU reduces it to +-1 per channel.
# Everything else is mmdet's baseline.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    dict(type='ASPP', in_channels=[256, 256, 256, 256, 256], channels=128, dilations=(1, 3, 6),
         norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
])
