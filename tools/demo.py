"""Detect objects in a folder of images (or webcam frames) with a trained checkpoint and write <name>_det.jpg.

Examples:
  python tools/demo.py --net res101 --checksession 1 --checkepoch 7 --checkpoint 10021 --cuda --load_dir models
  python tools/demo.py --dataset shapes --net res18 --load_dir models --checkepoch 6 --checkpoint 399
Classes, anchors and pooling mode come from the checkpoint (the original's 21 VOC classes for its old files).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from lib.model.utils.script_utils import DATASETS, NETS, add_cfg_args, add_checkpoint_args  # noqa: E402

DEFAULT_IMAGE_DIR = 'images'


def build_parser():
    p = argparse.ArgumentParser(description='Faster R-CNN demo: detect objects in images')
    p.add_argument('--dataset', dest='dataset', default='pascal_voc', choices=sorted(DATASETS),
                   help='dataset the model was trained on (only used to find <load_dir>/<net>/<dataset>/)')
    p.add_argument('--net', dest='net', default='res101', choices=NETS,
                   help='backbone (a checkpoint that names its net overrides this)')
    p.add_argument('--load_dir', dest='load_dir', default='models', help='directory to load models from')
    p.add_argument('--image_dir', dest='image_dir', default=None,
                   help=f'directory of images (default {DEFAULT_IMAGE_DIR}/; filled with 4 shapes test images '
                        f'when it has none)')
    p.add_argument('--output_dir', dest='output_dir', default=None,
                   help='where <name>_det.jpg go (default: the image directory, as the original)')
    add_checkpoint_args(p, mgpus_help='accepted for compatibility; one device is used')
    p.add_argument('--vis', dest='vis', action='store_true',
                   help='accepted for compatibility; result images are always written (the original forced it too)')
    p.add_argument('--thresh', dest='thresh', default=0.5, type=float, help='score above which boxes are drawn')
    p.add_argument('--webcam_num', dest='webcam_num', default=-1, type=int,
                   help='webcam ID number (>= 0 reads frames from that camera)')
    add_cfg_args(p, with_ls=False)
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.image_dir_is_default = args.image_dir is None
    if args.image_dir is None:
        args.image_dir = DEFAULT_IMAGE_DIR
    return args


def main(argv=None):
    from lib.model.utils.test_utils import run_demo
    args = parse_args(argv)
    try:
        run_demo(args)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f'ERROR: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
