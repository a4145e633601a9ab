# Faster R-CNN R50, COCO 1x, with modulated deformable convolution (DCNv2) in the 3x3
# conv of every bottleneck of stages c3-c5 and Adaptive Spatial Feature Fusion after FPN:
# every one of FPN's five outputs becomes a per-pixel softmax-weighted sum of all five
# levels resized to its scale (arXiv 1911.09516).
#
# DCNv2UnitMask is mmcv's DCNv2 with its modulation starting at 1 (mmcv's starts at 0.5),
# so the ImageNet-pretrained 3x3 convs compute exactly what they were trained to at step 0.
# Everything else is mmdet's baseline, including the torchvision://resnet50 initialisation
# (needs torchvision; tools/train.py says how to override it when it is missing).
# Demo twin on the embedded data: faster_rcnn_r50_dcn_asff_demo_coco-shapes.py (`make demo`).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2UnitMask', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)),
    neck=[
        dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
        dict(type='ASFF', in_channels=[256, 256, 256, 256, 256]),
    ])
