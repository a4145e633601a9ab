# DeepLabV3 R50-D8, Cityscapes 512x1024, 40k iterations, with modulated deformable
# convolution (DCNv2, arXiv 1811.11168) as the 3x3 conv of every bottleneck of stages c3-c5
# (dilated as the plain convs are: 2 in c4, 4 in c5). DCNv2UnitMask starts with modulation 1,
# so the pretrained open-mmlab://resnet50_v1c convs compute exactly what they were trained to
# at step 0 (mmcv's DCNv2 halves them). Everything else is mmseg's baseline.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2UnitMask', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
