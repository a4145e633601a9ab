# What turns a Cityscapes mmseg config (DeepLabV3, FCN-HRNet, ...) into its demo twin on the
# embedded street-shapes set (data/cityscapes_shapes: the Cityscapes layout and 19 train
# ids, 256x128 images, generated on first use). One dict, `demo`, taken part by part by the
# twin (see faster-rcnn_coco-shapes.py for why):
#
#     _base_ = ['./deeplabv3_r50-d8-..._cityscapes-512x1024.py',
#               '../_base_/demo/segmentation_cityscapes-shapes.py']
#     model = _base_.demo.model
#     ...
#
# What changes, and why:
# - no download: model.pretrained=None, so the backbone trains from scratch;
# - whole 128x256 images instead of 512x1024 crops of rescaled 2048x1024 images;
# - a short schedule (AdamW, warm-up then poly decay) on one process: mmengine turns
#   SyncBN into BN when it is not distributed.
__data_root = 'data/cityscapes_shapes/'
__crop_size = (128, 256)
__train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
__test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
__val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=__data_root, pipeline=__test_pipeline))
__max_iters = 400

demo = dict(
    data_root=__data_root,
    crop_size=__crop_size,
    train_pipeline=__train_pipeline,
    test_pipeline=__test_pipeline,
    model=dict(pretrained=None, data_preprocessor=dict(size=__crop_size)),
    train_dataloader=dict(
        batch_size=4,
        num_workers=1,
        dataset=dict(data_root=__data_root, pipeline=__train_pipeline)),
    val_dataloader=__val_dataloader,
    test_dataloader=__val_dataloader,
    train_cfg=dict(type='IterBasedTrainLoop', max_iters=__max_iters, val_interval=__max_iters),
    param_scheduler=[
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
        dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=50, end=__max_iters, by_epoch=False),
    ],
    optim_wrapper=dict(
        optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.01, fused=True)),
    default_hooks=dict(
        logger=dict(interval=20),
        checkpoint=dict(by_epoch=False, interval=__max_iters, max_keep_ckpts=1)),
    randomness=dict(seed=0),
)
