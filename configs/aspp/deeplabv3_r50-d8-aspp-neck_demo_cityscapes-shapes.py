# Demo twin of deeplabv3_r50-d8-aspp-neck_4xb2-40k_cityscapes-512x1024.py on the embedded
# street-shapes set (data/cityscapes_shapes, Cityscapes layout, generated on first use): the
# same model, trained from scratch on CPU. The demo changes (no pretrained backbone, whole
# 128x256 images, short AdamW schedule) and their reasons are in
# ../_base_/demo/deeplabv3_cityscapes-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/deeplabv3_cityscapes-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    neck=dict(type='ASPP', in_channels=[256, 512, 1024, 2048], levels=[3], out_channels=512,
              channels=512, dilations=(1, 12, 24, 36), proj_kernel_size=3,
              norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(
        _delete_=True,
        type='FCNHead',
        in_channels=512,
        in_index=3,
        channels=512,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
