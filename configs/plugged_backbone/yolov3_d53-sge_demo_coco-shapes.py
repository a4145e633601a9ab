# Demo twin of yolov3_d53-sge_8xb8-ms-608-273e_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU.
# The demo changes (from-scratch Darknet-53, 4 classes, 96-160 px images with scaled
# anchors, short AdamW schedule) and their reasons are in
# ../_base_/demo/yolov3_coco-shapes.py; below is the real config's model delta: the inner
# Darknet-53 is the base's backbone, so the demo's backbone changes reach it.
_base_ = '../_base_/demo/yolov3_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PluggedBackbone',
        backbone=_base_.model.backbone,  # the base config's Darknet-53
        plugins=[dict(cfg=dict(type='SGE', groups=32), after='conv_res_block[345].res*')]))
