# Demo twin of faster-rcnn_r50_fpn-coordconv_4conv1fc_1x_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU in
# minutes. The demo changes (from-scratch backbone, 4 classes, 128x128 images, fewer
# proposals, short AdamW schedule) and their reasons are in
# ../_base_/demo/faster-rcnn_coco-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/faster-rcnn_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    neck=dict(conv_cfg=dict(type='CoordConv2d')),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            conv_cfg=dict(type='CoordConv2d'),
            norm_cfg=dict(type='BN', requires_grad=True))))
