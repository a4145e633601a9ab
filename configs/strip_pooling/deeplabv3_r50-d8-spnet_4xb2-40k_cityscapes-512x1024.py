# DeepLabV3 R50-D8, Cityscapes 512x1024, 40k iterations, with SPNet's two modules
# (arXiv 2003.13328): a strip pooling module (SPM) after conv2 of every bottleneck of the
# last stage, and a mixed pooling module (MPM: pyramid pooling for short-range plus strip
# pooling for long-range context) on the c5 features, between the backbone and DeepLabV3's
# ASPP head (neck=MPM on level 3, the head's in_index; two stacked MPMs as in SPNet). SPNet
# also puts an SPM into the last block of stages 1-3; mmseg's ResNet plugins are chosen per
# stage (every block of it), so this config keeps to the last stage. identity_init=True keeps
# the pretrained open-mmlab://resnet50_v1c features undisturbed at step 0. Everything else is
# mmseg's baseline.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='StripPooling', identity_init=True),
             stages=(False, False, False, True), position='after_conv2')
    ]),
    neck=dict(type='MPM', in_channels=[256, 512, 1024, 2048], levels=[3], num_blocks=2,
              norm_cfg=dict(type='SyncBN', requires_grad=True)))
