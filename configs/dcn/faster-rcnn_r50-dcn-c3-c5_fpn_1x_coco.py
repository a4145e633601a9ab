# Faster R-CNN R50-FPN, COCO 1x, with mmcv's deformable convolution (DCNv1, arXiv 1703.06211)
# as the 3x3 conv of every bottleneck of stages c3-c5: the same model as mmdet's
# dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py, here as the reference for the DCNv2
# configs (../faster_rcnn_r50_dcn_asff.py). The offsets start at zero, so the
# torchvision://resnet50 convs compute what they were trained to at step 0. Everything else
# is mmdet's baseline. mmcv's DCN has no fast CPU path (see README.md).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
