# Demo twin of faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py on the embedded shapes set:
# the same model (R50-FPN + SGE in c3-c5) trained on 2 CPU cores in minutes.
# What changes, and why:
# - no ImageNet download: the backbone trains from scratch, so BN layers train
#   (norm_eval=False), nothing is frozen (frozen_stages=-1);
# - 4 classes, 192x192 images, fewer proposals and RoI samples (cheap on CPU);
# - a short schedule with warm-up.
_base_ = [
    './faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py',
    '../_base_/datasets/coco_shapes_detection.py',
]

model = dict(
    backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None),
    rpn_head=dict(anchor_generator=dict(scales=[4, 8])),
    roi_head=dict(bbox_head=dict(num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=50)))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
                     clip_grad=dict(max_norm=35, norm_type=2))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
auto_scale_lr = dict(enable=False, base_batch_size=8)
