# DeepLabV3 R50-D8, Cityscapes 512x1024, 40k iterations, with ASPP as a neck: mmplug's ASPP
# on the c5 features (level 3) followed by a plain FCN classifier. With proj_kernel_size=3,
# channels=512 and dilations (1, 12, 24, 36) the neck computes what mmseg's ASPPHead computes
# before its classifier (image pool + 1x1 + three atrous 3x3 branches + 3x3 bottleneck), so
# this is DeepLabV3 with the ASPP part movable into any pipeline's neck. FCNHead with
# num_convs=0 is then dropout + the 1x1 classifier, as in ASPPHead.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'

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
