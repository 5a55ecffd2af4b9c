"""Where a detector's mAP goes by object size: found / right class / right, per size bin of the test objects.

Reads the detections test_net.py saved (its log says where: "detections saved to .../detections.npz") and the
test set's annotations, and prints one row per size bin (the longer side of the box in the image's own
pixels) and one for all objects (lib/datasets/size_breakdown.py says what each column counts):

  python tools/analyze_detections.py output/shapes_res18/shapes_test/faster_rcnn_1_3_999/detections.npz \
      --dataset shapes
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from lib.datasets.size_breakdown import SIZE_EDGES, format_breakdown, size_breakdown  # noqa: E402
from lib.model.utils.script_utils import DATASETS, dataset_settings  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description='Detection quality by object size (found / class / right per size bin)')
    p.add_argument('detections', help='detections.npz written by test_net.py (with its .json beside it)')
    p.add_argument('--dataset', default='pascal_voc', choices=sorted(DATASETS),
                   help='the dataset test_net evaluated (its test split is read)')
    p.add_argument('--data_path', default=None, help='folder of a VOC-format dataset for --dataset custom')
    p.add_argument('--edges', type=float, nargs='+', default=list(SIZE_EDGES),
                   help='bin edges in pixels (default: %(default)s)')
    p.add_argument('--iou', type=float, default=0.5, help='IoU for a detection to cover an object')
    p.add_argument('--found_thresh', type=float, default=0.3, help='score for "found" (any class)')
    p.add_argument('--right_thresh', type=float, default=0.5, help='score for "right" (the object\'s class)')
    p.add_argument('--json', default=None, help='also write the rows to this json file')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from lib.datasets.factory import get_imdb, set_custom_root
    from lib.model.utils.test_utils import load_detections
    if sorted(args.edges) != args.edges or len(set(args.edges)) != len(args.edges):
        print(f'ERROR: --edges must increase, got {args.edges}', file=sys.stderr)
        return 2
    if not os.path.isfile(args.detections):
        print(f'ERROR: {args.detections}: no such file', file=sys.stderr)
        return 1
    if args.dataset == 'custom':
        if not args.data_path:
            print('ERROR: --dataset custom needs --data_path', file=sys.stderr)
            return 2
        set_custom_root(args.data_path)
    all_boxes, classes, image_index = load_detections(args.detections)
    imdb = get_imdb(dataset_settings(args.dataset)['imdbval_name'])
    if [str(c) for c in classes] != [str(c) for c in imdb.classes]:
        print(f'ERROR: {args.detections} holds classes {classes}, {imdb.name} has {list(imdb.classes)}',
              file=sys.stderr)
        return 1
    if [str(x) for x in image_index] != [str(x) for x in imdb.image_index]:
        print(f'ERROR: {args.detections} covers other images than {imdb.name} ({len(image_index)} against '
              f'{imdb.num_images})', file=sys.stderr)
        return 1
    rows = size_breakdown(all_boxes, imdb.gt_roidb(), args.edges, args.iou, args.found_thresh, args.right_thresh)
    print(f'{imdb.name}, {args.detections}')
    print(format_breakdown(rows, args.found_thresh, args.right_thresh, args.iou))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'detections': args.detections, 'imdb': imdb.name, 'iou': args.iou,
                       'found_thresh': args.found_thresh, 'right_thresh': args.right_thresh, 'rows': rows}, f,
                      indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
