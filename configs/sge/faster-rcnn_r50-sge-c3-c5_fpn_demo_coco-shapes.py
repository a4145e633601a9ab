# Demo twin of faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU in
# minutes. The demo changes (from-scratch backbone, 4 classes, 128x128 images, fewer
# proposals, short AdamW schedule) and their reasons are in
# ../_base_/demo/faster-rcnn_coco-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/faster-rcnn_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='SGE', groups=64), stages=(False, True, True, True),
             position='after_conv3')
    ]))
