# Demo twin of yolov3_d53-asff_8xb8-ms-608-273e_coco.py on the embedded shapes set
# (data/coco_shapes, generated on first use): the same model, trained from scratch on CPU.
# The demo changes (from-scratch Darknet-53, 4 classes, 96-160 px images with scaled
# anchors, short AdamW schedule) and their reasons are in
# ../_base_/demo/yolov3_coco-shapes.py; below is the real config's model delta, unchanged.
_base_ = '../_base_/demo/yolov3_coco-shapes.py'

custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)

model = dict(neck=[
    dict(type='YOLOV3Neck', num_scales=3, in_channels=[1024, 512, 256],
         out_channels=[512, 256, 128]),
    dict(type='ASFF', in_channels=[512, 256, 128], strides=[32, 16, 8]),
])
