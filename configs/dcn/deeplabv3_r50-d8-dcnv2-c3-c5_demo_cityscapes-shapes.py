# Demo twin of deeplabv3_r50-d8-dcnv2-c3-c5_4xb2-40k_cityscapes-512x1024.py on the embedded
# street-shapes set (data/cityscapes_shapes, Cityscapes layout, generated on first use): the
# same model, trained from scratch on CPU. The demo changes (no pretrained backbone, whole
# 128x256 images, short AdamW schedule) and their reasons are in
# ../_base_/demo/deeplabv3_cityscapes-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/deeplabv3_cityscapes-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2UnitMask', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
