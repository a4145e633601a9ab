# Faster R-CNN R50-FPN, COCO 1x, with anti-aliased downsampling (arXiv 1904.11486): every
# strided conv of the ResNet-50 backbone is a BlurConv2d (the conv at stride 1, then a 3x3
# binomial blur subsampling by 2); stride-1 convs are unchanged. The weights are those of the
# plain conv, so torchvision://resnet50 loads as usual.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(backbone=dict(conv_cfg=dict(type='BlurConv2d', filt_size=3)))
