# YOLOv3 Darknet-53, COCO, 273 epochs, multi-scale 320-608, with Spatial Group-wise Enhance
# (arXiv 1905.09646) after every residual block of the last three Darknet stages (the ones
# whose outputs feed the neck: strides 8, 16, 32). Darknet takes no plugins in mmdet, so
# PluggedBackbone runs them after the named submodules 'conv_res_block{3,4,5}.res*'. The
# inner Darknet-53 is the base config's backbone (`_base_.model.backbone`): mmdet's, with its
# open-mmlab://darknet53 initialisation (a plain Darknet checkpoint reports only the SGE keys
# as missing).
_base_ = 'mmdet::yolo/yolov3_d53_8xb8-ms-608-273e_coco.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PluggedBackbone',
        backbone=_base_.model.backbone,  # the base config's Darknet-53
        plugins=[dict(cfg=dict(type='SGE', groups=32), after='conv_res_block[345].res*')]))
