# Faster R-CNN R50-FPN, COCO 1x, with a strip pooling module (SPM) after conv2 of every
# bottleneck of c5 (arXiv 2003.13328; SPNet puts them after conv2 in the last stage).
# identity_init=True: the gate starts at exactly 1, so the torchvision://resnet50 weights
# compute what they were trained to at step 0 (the paper's init gates every feature by
# ~0.5 on a pretrained backbone). Everything else is mmdet's baseline.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='StripPooling', identity_init=True),
             stages=(False, False, False, True), position='after_conv2')
    ]))
