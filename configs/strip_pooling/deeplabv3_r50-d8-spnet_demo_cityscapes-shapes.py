# Demo twin of deeplabv3_r50-d8-spnet_4xb2-40k_cityscapes-512x1024.py on the embedded
# street-shapes set (data/cityscapes_shapes, Cityscapes layout, generated on first use): the
# same model, trained from scratch on CPU. The demo changes (no pretrained backbone, whole
# 128x256 images, short AdamW schedule) and their reasons are in
# ../_base_/demo/deeplabv3_cityscapes-shapes.py; below is the real config's model delta,
# unchanged.
_base_ = '../_base_/demo/deeplabv3_cityscapes-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='StripPooling', identity_init=True),
             stages=(False, False, False, True), position='after_conv2')
    ]),
    neck=dict(type='MPM', in_channels=[256, 512, 1024, 2048], levels=[3], num_blocks=2,
              norm_cfg=dict(type='SyncBN', requires_grad=True)))
