# Demo twin of faster-rcnn_r50_fpn-aspp_1x_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU in
# minutes. The demo changes (from-scratch backbone, 4 classes, 128x128 images, fewer
# proposals, short AdamW schedule) and their reasons are in
# ../_base_/demo/faster-rcnn_coco-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/faster-rcnn_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    dict(type='ASPP', in_channels=[256, 256, 256, 256, 256], channels=128, dilations=(1, 3, 6),
         norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
])
