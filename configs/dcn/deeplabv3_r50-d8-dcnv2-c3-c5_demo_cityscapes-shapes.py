# Demo twin of deeplabv3_r50-d8-dcnv2-c3-c5_4xb2-40k_cityscapes-512x1024.py on the embedded street-shapes set (data/cityscapes_shapes, Cityscapes
# layout, generated on first use): the same model, trained from scratch on CPU. The changes
# (no pretrained backbone, whole 128x256 images, short AdamW schedule) are explained in
# ../_base_/demo/segmentation_cityscapes-shapes.py.
_base_ = ['./deeplabv3_r50-d8-dcnv2-c3-c5_4xb2-40k_cityscapes-512x1024.py', '../_base_/demo/segmentation_cityscapes-shapes.py']

data_root = _base_.demo.data_root
crop_size = _base_.demo.crop_size
train_pipeline = _base_.demo.train_pipeline
test_pipeline = _base_.demo.test_pipeline
model = _base_.demo.model
train_dataloader = _base_.demo.train_dataloader
val_dataloader = _base_.demo.val_dataloader
test_dataloader = _base_.demo.test_dataloader
train_cfg = _base_.demo.train_cfg
param_scheduler = _base_.demo.param_scheduler
optim_wrapper = _base_.demo.optim_wrapper
default_hooks = _base_.demo.default_hooks
randomness = _base_.demo.randomness
