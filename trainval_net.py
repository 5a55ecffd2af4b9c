"""Train a Faster R-CNN (the original's trainval_net.py flags; the loop lives in lib/model/utils/train_utils.py).

Examples:
  python trainval_net.py --dataset pascal_voc --net res101 --bs 1 --nw 4 --lr 1e-3 --lr_decay_step 5 --cuda
  python trainval_net.py --dataset shapes --net res18 --cfg cfgs/shapes_cpu.yml --weights none
  torchrun --nproc_per_node 4 trainval_net.py --dataset coco --net res101 --bs 4 --cuda --ls
"""
import argparse
import sys

from lib.model.utils.script_utils import DATASETS, NETS, add_cfg_args, str2bool


def build_parser():
    p = argparse.ArgumentParser(description='Train a Faster R-CNN network')
    p.add_argument('--dataset', dest='dataset', default='pascal_voc', choices=sorted(DATASETS),
                   help='training dataset (custom: a VOC-format folder given by --data_path)')
    p.add_argument('--net', dest='net', default='vgg16', choices=NETS, help='backbone')
    p.add_argument('--start_epoch', dest='start_epoch', default=1, type=int, help='starting epoch')
    p.add_argument('--epochs', dest='max_epochs', default=20, type=int, help='number of epochs to train')
    p.add_argument('--disp_interval', dest='disp_interval', default=100, type=int,
                   help='number of iterations between log lines')
    p.add_argument('--checkpoint_interval', dest='checkpoint_interval', default=10000, type=int,
                   help='save a checkpoint every N iterations within an epoch (and always at its end); '
                        '0: epoch ends only')
    p.add_argument('--save_dir', dest='save_dir', default='models', type=str,
                   help='directory to save models (in <save_dir>/<net>/<dataset>)')
    p.add_argument('--nw', dest='num_workers', default=0, type=int, help='number of workers to load data')
    p.add_argument('--cuda', dest='cuda', action='store_true', help='use CUDA')
    p.add_argument('--mGPUs', dest='mGPUs', action='store_true',
                   help='use all visible GPUs with DataParallel (for DistributedDataParallel launch with torchrun)')
    p.add_argument('--bs', dest='batch_size', default=1, type=int, help='images per batch (per process)')
    p.add_argument('--cag', dest='class_agnostic', action='store_true', help='class-agnostic bbox regression')
    p.add_argument('--o', dest='optimizer', default='sgd', choices=('sgd', 'adam'), help='training optimizer')
    p.add_argument('--lr', dest='lr', default=0.001, type=float, help='starting learning rate')
    p.add_argument('--lr_decay_step', dest='lr_decay_step', default=5, type=int,
                   help='lr x gamma at the start of every epoch divisible by lr_decay_step + 1')
    p.add_argument('--lr_decay_gamma', dest='lr_decay_gamma', default=0.1, type=float, help='learning rate decay ratio')
    p.add_argument('--warmup', dest='warmup', default=0, type=int,
                   help='iterations of a linear lr warm-up from epoch 1 (lr / N at the first, lr at the N-th); '
                        '0: none, as the original')
    p.add_argument('--s', dest='session', default=1, type=int, help='training session')
    p.add_argument('--r', dest='resume', default=False, type=str2bool, nargs='?', const=True,
                   help='resume from <save_dir>/<net>/<dataset>/faster_rcnn_<checksession>_<checkepoch>_'
                        '<checkpoint>.pth (--r, or --r true/false)')
    p.add_argument('--checksession', dest='checksession', default=1, type=int, help='checksession to load model')
    p.add_argument('--checkepoch', dest='checkepoch', default=1, type=int, help='checkepoch to load model')
    p.add_argument('--checkpoint', dest='checkpoint', default=0, type=int, help='checkpoint (iteration) to load model')
    p.add_argument('--use_tfb', dest='use_tfboard', action='store_true', help='write tensorboard summaries')
    add_cfg_args(p)
    p.add_argument('--amp', dest='amp', action='store_true',
                   help='mixed precision: bf16 autocast (fp16 + GradScaler with --amp_dtype fp16, CUDA only); on a '
                        'CPU bf16, fast where it has AVX512-BF16 or AMX, warned about elsewhere')
    p.add_argument('--amp_dtype', dest='amp_dtype', default='bf16', choices=('bf16', 'fp16'))
    p.add_argument('--seed', dest='seed', default=None, type=int, help='random seed (default cfg.RNG_SEED)')
    p.add_argument('--deterministic', dest='deterministic', action='store_true',
                   help='deterministic kernels where torch has them (reproducible runs and resumes)')
    p.add_argument('--data_path', dest='data_path', default=None, type=str,
                   help='folder of a VOC-format dataset for --dataset custom')
    p.add_argument('--weights', dest='weights', default=None, type=str,
                   help="pretrained backbone weights (default data/pretrained_model/vgg16_caffe.pth or "
                        "resnet<N>_caffe.pth, as the original); 'none' trains from scratch")
    p.add_argument('--max_iters', dest='max_iters', default=None, type=int,
                   help='cap on iterations per epoch (quick runs)')
    p.add_argument('--time_budget', dest='time_budget', default=None, type=float,
                   help='seconds of training: after each epoch, the run is set to end with the last epoch that '
                        'fits (at most --epochs) and to decay the lr once for its last quarter of epochs (this '
                        'replaces --lr_decay_step); past the budget it saves and stops mid-epoch')
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    from lib.model.utils.train_utils import NonFiniteLossError, run_training
    args = parse_args(argv)
    try:
        run_training(args)
    except NonFiniteLossError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # a missing file or folder, a flag or cfg that does not fit
        print(f'ERROR: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
