# DeepLabV3 R50-D8 demo on the embedded street-shapes set (data/cityscapes_shapes: the
# Cityscapes layout and 19 train ids, 256x128 images, generated on first use): mmseg's
# Cityscapes 40k baseline with every change a CPU demo needs, as a complete config. A demo
# twin inherits it and adds exactly the module delta of its real config:
#
#     _base_ = '../_base_/demo/deeplabv3_cityscapes-shapes.py'
#     custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
#     model = dict(backbone=dict(plugins=[...]))  # as in deeplabv3_r50-d8-..._cityscapes-...py
#
# What changes, and why (tests/test_configs.py lists the model changes):
# - no download: model.pretrained=None, so the backbone trains from scratch;
# - whole 128x256 images instead of 512x1024 crops of rescaled 2048x1024 images;
# - a short schedule (AdamW, warm-up then poly decay) on one process: mmengine turns
#   SyncBN into BN when it is not distributed.
# fcn-hr18_cityscapes-shapes.py makes the same changes to mmseg's FCN-HRNet baseline.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'

data_root = 'data/cityscapes_shapes/'
crop_size = (128, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
__max_iters = 400  # a helper, not a config key (mmengine drops `__` names)

model = dict(pretrained=None, data_preprocessor=dict(size=crop_size))

train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=__max_iters, val_interval=__max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=50, end=__max_iters, by_epoch=False),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.01, fused=True))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=__max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
