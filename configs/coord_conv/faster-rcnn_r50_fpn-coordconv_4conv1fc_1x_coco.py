# Faster R-CNN R50-FPN, COCO 1x, with CoordConv (arXiv 1807.03247) in the neck and in the
# box head: FPN's lateral and output convs and the four convs of a 4conv1fc box head see
# two extra normalised coordinate channels. mmdet's 2fc box head has no convs, so the box
# head here is Shared4Conv1FCBBoxHead (mmdet's 4conv1fc head, BN as in mmdet's GN/BN
# variants); compare against the same head with plain convs (conv_cfg=None).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    neck=dict(conv_cfg=dict(type='CoordConv2d')),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            conv_cfg=dict(type='CoordConv2d'),
            norm_cfg=dict(type='BN', requires_grad=True))))
