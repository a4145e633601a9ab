# FCN HRNetV2-W18, Cityscapes 512x1024, 40k iterations, with Spatial Group-wise Enhance
# (arXiv 1905.09646, 6 groups: HRNet-W18's branches have 18/36/72/144 channels) after every
# branch of every HRModule of stages 2-4, at every resolution. HRNet takes no plugins in
# mmseg, so PluggedBackbone runs them after the named submodules 'stage[234].*.branches.*'.
# The inner HRNet is the base config's backbone (`_base_.model.backbone`, mmseg's fcn_hr18);
# its ImageNet weights (open-mmlab://msra/hrnetv2_w18) move from model.pretrained (which
# mmseg would pass to the wrapper) into the inner backbone's init_cfg. Everything else is
# mmseg's baseline.
_base_ = 'mmseg::hrnet/fcn_hr18_4xb2-40k_cityscapes-512x1024.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PluggedBackbone',
        backbone=dict(_base_.model.backbone,
                      init_cfg=dict(type='Pretrained', checkpoint=_base_.model.pretrained)),
        plugins=[dict(cfg=dict(type='SGE', groups=6), after='stage[234].*.branches.*')]))
