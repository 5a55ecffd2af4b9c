"""The --set list of the scripts' tiny training runs (test_trainval, test_test_net, test_demo), layered over
cfgs/shapes_cpu.yml: small images, few anchors and rois. The runs start from scratch (--weights none), so
BatchNorm trains and no block is fixed, whatever the yml says for its pretrained main job."""
TINY_SET = ['TRAIN.BN_TRAIN', 'True', 'RESNET.FIXED_BLOCKS', '0',
            'TRAIN.SCALES', '[96]', 'TRAIN.MAX_SIZE', '160', 'TEST.SCALES', '[96]', 'TEST.MAX_SIZE', '160',
            'TRAIN.BATCH_SIZE', '16', 'TRAIN.RPN_BATCHSIZE', '32', 'TRAIN.RPN_PRE_NMS_TOP_N', '300',
            'TRAIN.RPN_POST_NMS_TOP_N', '40', 'TEST.RPN_PRE_NMS_TOP_N', '300', 'TEST.RPN_POST_NMS_TOP_N', '30',
            'POOLING_SIZE', '4']
