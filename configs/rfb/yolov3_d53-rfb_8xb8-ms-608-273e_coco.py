# YOLOv3 Darknet-53, COCO, 273 epochs, multi-scale 320-608, with a Receptive Field Block
# (arXiv 1711.07767) on each of the YOLOv3 neck's three outputs ([512, 256, 128] channels,
# strides 32, 16, 8); channels are kept, so YOLOV3Head is unchanged. Darknet-53 starts from
# open-mmlab://darknet53 as in mmdet's baseline.
_base_ = 'mmdet::yolo/yolov3_d53_8xb8-ms-608-273e_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='YOLOV3Neck', num_scales=3, in_channels=[1024, 512, 256],
         out_channels=[512, 256, 128]),
    dict(type='RFB', in_channels=[512, 256, 128]),
])
