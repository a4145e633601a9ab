# Demo twin of fcn_hr18-sge_4xb2-40k_cityscapes-512x1024.py on the embedded street-shapes
# set (data/cityscapes_shapes, Cityscapes layout, generated on first use): the same model,
# trained from scratch on CPU. The demo changes (no pretrained backbone, whole 128x256
# images, short AdamW schedule) and their reasons are in
# ../_base_/demo/fcn-hr18_cityscapes-shapes.py; below is the real config's model delta but
# for the inner HRNet's init_cfg (None: no download; the real config moves the ImageNet
# weights there).
_base_ = '../_base_/demo/fcn-hr18_cityscapes-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PluggedBackbone',
        backbone=dict(_base_.model.backbone, init_cfg=None),
        plugins=[dict(cfg=dict(type='SGE', groups=6), after='stage[234].*.branches.*')]))
