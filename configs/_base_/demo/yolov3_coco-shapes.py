# YOLOv3 Darknet-53 demo on the embedded shapes set (data/coco_shapes: COCO format,
# 4 classes, 128x128 images, generated on first use): mmdet's YOLOv3 COCO baseline with every
# change a CPU demo needs, as a complete config. A demo twin inherits it and adds exactly the
# module delta of its real config (see faster-rcnn_coco-shapes.py).
#
# What changes, and why (tests/test_configs.py lists the model changes):
# - no download: Darknet-53 trains from scratch (init_cfg=None);
# - 4 classes; 128x128 images (random resize 96-160 for training instead of 320-608), so the
#   anchors are the paper's COCO anchors scaled by 128/608 (rounded, at least 2 pixels);
# - a short schedule with warm-up, and AdamW instead of SGD (faster from scratch).
_base_ = 'mmdet::yolo/yolov3_d53_8xb8-ms-608-273e_coco.py'

data_root = 'data/coco_shapes/'
metainfo = dict(
    classes=('rectangle', 'ellipse', 'triangle', 'star'),
    palette=[(220, 20, 60), (0, 130, 230), (20, 180, 60), (250, 170, 30)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=[(96, 96), (160, 160)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
max_epochs = 6

model = dict(
    backbone=dict(init_cfg=None),
    bbox_head=dict(
        num_classes=4,
        anchor_generator=dict(base_sizes=[[(24, 19), (33, 42), (79, 69)],
                                          [(6, 13), (13, 9), (12, 25)],
                                          [(2, 3), (3, 6), (7, 5)]])))

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=8),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05, fused=True),
    clip_grad=dict(max_norm=35, norm_type=2))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
auto_scale_lr = dict(base_batch_size=8)
randomness = dict(seed=0)
