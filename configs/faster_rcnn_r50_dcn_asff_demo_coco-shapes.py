# Demo twin of faster_rcnn_r50_dcn_asff.py on the embedded shapes set (data/coco_shapes,
# generated on first use): the same model (R50 + DCNv2 in c3-c5 + FPN + ASFF), trained from
# scratch on CPU in minutes. This is what `make demo` trains and evaluates. The demo changes
# (from-scratch backbone, 4 classes, 128x128 images, fewer proposals, short AdamW schedule)
# and their reasons are in ./_base_/demo/faster-rcnn_coco-shapes.py; below is the real
# config's model delta, unchanged.
_base_ = './_base_/demo/faster-rcnn_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2UnitMask', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)),
    neck=[
        dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
        dict(type='ASFF', in_channels=[256, 256, 256, 256, 256]),
    ])
