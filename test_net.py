"""Evaluate a trained Faster R-CNN on a test set (the original's test_net.py flags; the work is in
lib/model/utils/test_utils.py).

Example:
  python test_net.py --dataset pascal_voc --net res101 --checksession 1 --checkepoch 7 --checkpoint 10021 --cuda
Classes, anchors, pooling mode and class-agnostic regression are read from the checkpoint.
"""
import argparse
import sys

from lib.model.utils.script_utils import DATASETS, NETS, add_cfg_args, add_checkpoint_args


def build_parser():
    p = argparse.ArgumentParser(description='Test a Faster R-CNN network')
    p.add_argument('--dataset', dest='dataset', default='pascal_voc', choices=sorted(DATASETS),
                   help='dataset the model was trained on (its test split is evaluated)')
    p.add_argument('--net', dest='net', default='res101', choices=NETS,
                   help='backbone (a checkpoint that names its net overrides this)')
    p.add_argument('--load_dir', dest='load_dir', default='models', type=str,
                   help='directory to load models from (<load_dir>/<net>/<dataset>/)')
    add_checkpoint_args(p, mgpus_help='use all visible GPUs (DataParallel)')
    p.add_argument('--vis', dest='vis', action='store_true',
                   help='write images with the detections drawn into <output dir>/vis')
    p.add_argument('--thresh', dest='thresh', default=None, type=float,
                   help='score threshold (default 0.0, or 0.05 with --vis, as the original)')
    p.add_argument('--max_per_image', dest='max_per_image', default=100, type=int,
                   help='detections kept per image over all classes (0: all)')
    p.add_argument('--nw', dest='num_workers', default=0, type=int, help='number of workers to load data')
    p.add_argument('--seed', dest='seed', default=None, type=int, help='random seed (default cfg.RNG_SEED)')
    p.add_argument('--amp', dest='amp', action='store_true',
                   help='bf16 autocast (on a CPU: fast where it has AVX512-BF16 or AMX, warned about elsewhere)')
    p.add_argument('--data_path', dest='data_path', default=None, type=str,
                   help='folder of a VOC-format dataset for --dataset custom')
    add_cfg_args(p)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    from lib.model.utils.test_utils import run_test
    args = parse_args(argv)
    try:
        run_test(args)
    except (FileNotFoundError, ValueError) as e:  # a missing checkpoint or dataset, a model that does not fit
        print(f'ERROR: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
