"""Generate the synthetic shapes dataset in the PASCAL VOC layout (see lib/datasets/shapes.py and docs/DATA.md).

    python tools/make_shapes_voc.py                     # data/VOCdevkit_shapes/VOC2007, 800 trainval + 200 test
    python tools/make_shapes_voc.py --root /tmp/shapes/VOC2007 --num-train 100 --num-test 20 --seed 1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from lib.datasets.shapes import (DEFAULT_PARAMS, default_root, ensure_shapes_dataset,  # noqa: E402
                                 generate_shapes_dataset)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=None, help=f'output folder (default: {default_root()})')
    p.add_argument('--num-train', type=int, default=DEFAULT_PARAMS['num_train'], help='trainval images')
    p.add_argument('--num-test', type=int, default=DEFAULT_PARAMS['num_test'], help='test images')
    p.add_argument('--seed', type=int, default=DEFAULT_PARAMS['seed'], help='random seed (same seed, same files)')
    p.add_argument('--min-size', type=int, default=DEFAULT_PARAMS['min_size'], help='smallest image short side')
    p.add_argument('--max-size', type=int, default=DEFAULT_PARAMS['max_size'], help='largest image short side')
    p.add_argument('--workers', type=int, default=None, help='processes (default: number of CPUs, at most 8)')
    p.add_argument('--force', action='store_true', help='regenerate even if the folder holds these parameters')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    root = args.root or default_root()
    kw = dict(num_train=args.num_train, num_test=args.num_test, seed=args.seed, min_size=args.min_size,
              max_size=args.max_size, workers=args.workers)
    t0 = time.time()
    if args.force:
        generate_shapes_dataset(root, **kw)
    else:
        ensure_shapes_dataset(root, verbose=True, **kw)
    print(f'{root}: {args.num_train} trainval + {args.num_test} test images ({time.time() - t0:.1f} s)')


if __name__ == '__main__':
    main()
