# Demo twin of faster-rcnn_r50-nonlocal-c4_fpn_1x_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU in
# minutes. The changes (from-scratch backbone, 4 classes, 128x128 images, short AdamW
# schedule) are explained in ../_base_/demo/faster-rcnn_coco-shapes.py; the backbone ones
# go to the inner ResNet here.
_base_ = ['./faster-rcnn_r50-nonlocal-c4_fpn_1x_coco.py', '../_base_/demo/faster-rcnn_coco-shapes.py']

data_root = _base_.demo.data_root
metainfo = _base_.demo.metainfo
train_pipeline = _base_.demo.train_pipeline
test_pipeline = _base_.demo.test_pipeline
max_epochs = _base_.demo.max_epochs
model = dict(
    backbone=dict(backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None)),
    roi_head=_base_.demo.model.roi_head,
    train_cfg=_base_.demo.model.train_cfg,
    test_cfg=_base_.demo.model.test_cfg)
train_dataloader = _base_.demo.train_dataloader
val_dataloader = _base_.demo.val_dataloader
test_dataloader = _base_.demo.test_dataloader
val_evaluator = _base_.demo.val_evaluator
test_evaluator = _base_.demo.test_evaluator
train_cfg = _base_.demo.train_cfg
param_scheduler = _base_.demo.param_scheduler
optim_wrapper = _base_.demo.optim_wrapper
default_hooks = _base_.demo.default_hooks
auto_scale_lr = _base_.demo.auto_scale_lr
randomness = _base_.demo.randomness
