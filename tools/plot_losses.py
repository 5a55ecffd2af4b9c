"""Plot the loss curve of a training session from its loss_history_<session>.json or from a checkpoint.

  python tools/plot_losses.py models/res18/shapes/loss_history_1.json -o loss.png
  python tools/plot_losses.py models/res18/shapes/faster_rcnn_1_6_399.pth
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from lib.model.utils.train_utils import plot_loss_history  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description='Plot training losses (total and the four components)')
    p.add_argument('source', help='loss_history_<session>.json written beside the checkpoints, or a checkpoint .pth')
    p.add_argument('-o', '--output', default=None, help='PNG to write (default: <source without extension>.png)')
    args = p.parse_args(argv)
    if args.source.endswith('.pth'):
        from lib.model.utils.checkpoint import load_checkpoint
        history = load_checkpoint(args.source).get('history', [])
    else:
        with open(args.source) as f:
            history = json.load(f)
    if not history:
        print(f'ERROR: {args.source} holds no loss history', file=sys.stderr)
        return 1
    out = args.output or os.path.splitext(args.source)[0] + '.png'
    plot_loss_history(history, out, title=os.path.basename(args.source))
    print(f'{len(history)} points -> {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
