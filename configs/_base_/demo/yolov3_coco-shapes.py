# What turns a COCO YOLOv3 config into its demo twin on the embedded shapes set
# (data/coco_shapes: COCO format, 4 classes, 128x128 images, generated on first use).
# One dict, `demo`, taken part by part by the twin (see faster-rcnn_coco-shapes.py for why):
#
#     _base_ = ['./yolov3_d53-..._coco.py', '../_base_/demo/yolov3_coco-shapes.py']
#     model = _base_.demo.model
#     ...
#
# What changes, and why:
# - no download: Darknet-53 trains from scratch (init_cfg=None);
# - 4 classes; 128x128 images (random resize 96-160 for training instead of 320-608), so the
#   anchors are the paper's COCO anchors scaled by 128/608 (rounded, at least 2 pixels);
# - a short schedule with warm-up, and AdamW instead of SGD (faster from scratch).
__data_root = 'data/coco_shapes/'
__metainfo = dict(
    classes=('rectangle', 'ellipse', 'triangle', 'star'),
    palette=[(220, 20, 60), (0, 130, 230), (20, 180, 60), (250, 170, 30)])
__train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=[(96, 96), (160, 160)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
__test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
__val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=__data_root, metainfo=__metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=__test_pipeline))
__val_evaluator = dict(ann_file=__data_root + 'annotations/instances_val.json')
__max_epochs = 6

demo = dict(
    data_root=__data_root,
    metainfo=__metainfo,
    train_pipeline=__train_pipeline,
    test_pipeline=__test_pipeline,
    max_epochs=__max_epochs,
    model=dict(
        backbone=dict(init_cfg=None),
        bbox_head=dict(
            num_classes=4,
            anchor_generator=dict(base_sizes=[[(24, 19), (33, 42), (79, 69)],
                                              [(6, 13), (13, 9), (12, 25)],
                                              [(2, 3), (3, 6), (7, 5)]]))),
    train_dataloader=dict(
        batch_size=8,
        num_workers=1,
        dataset=dict(data_root=__data_root, metainfo=__metainfo,
                     ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                     filter_cfg=dict(filter_empty_gt=True, min_size=8),
                     pipeline=__train_pipeline)),
    val_dataloader=__val_dataloader,
    test_dataloader=__val_dataloader,
    val_evaluator=__val_evaluator,
    test_evaluator=__val_evaluator,
    train_cfg=dict(max_epochs=__max_epochs, val_interval=__max_epochs),
    param_scheduler=[
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
        dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=__max_epochs,
             eta_min_ratio=0.01, convert_to_iter_based=True),
    ],
    optim_wrapper=dict(
        optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05, fused=True),
        clip_grad=dict(max_norm=35, norm_type=2)),
    default_hooks=dict(
        logger=dict(interval=10),
        checkpoint=dict(interval=__max_epochs, max_keep_ckpts=1)),
    auto_scale_lr=dict(base_batch_size=8),
    randomness=dict(seed=0),
)
