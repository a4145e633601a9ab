# YOLOv3 Darknet-53, COCO, 273 epochs, multi-scale 320-608, with Adaptive Spatial Feature
# Fusion after the YOLOv3 neck: the paper's setting (arXiv 1911.09516; the paper's
# "bag of freebies" training is not part of this config). YOLOV3Neck outputs three levels,
# deepest first: [512, 256, 128] channels at strides 32, 16, 8; ASFF fuses all three at each
# level and keeps the channels, so YOLOV3Head is unchanged. Darknet-53 starts from
# open-mmlab://darknet53 as in mmdet's baseline.
_base_ = 'mmdet::yolo/yolov3_d53_8xb8-ms-608-273e_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='YOLOV3Neck', num_scales=3, in_channels=[1024, 512, 256],
         out_channels=[512, 256, 128]),
    dict(type='ASFF', in_channels=[512, 256, 128], strides=[32, 16, 8]),
])
