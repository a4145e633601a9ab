# DeepLabV3 R50-D8, Cityscapes 512x1024, 40k iterations, with Spatial Group-wise Enhance
# (arXiv 1905.09646) after conv3 of every bottleneck of stages c3-c5 of the dilated
# ResNetV1c. Everything else is mmseg's baseline, including open-mmlab://resnet50_v1c.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='SGE', groups=64), stages=(False, True, True, True),
             position='after_conv3')
    ]))
