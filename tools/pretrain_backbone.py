"""Pretrain a ResNet backbone by classifying the training set's object crops, where no ImageNet weights exist.

    python tools/pretrain_backbone.py --dataset shapes --net res18 --cfg cfgs/shapes_cpu.yml
    python trainval_net.py --dataset shapes --net res18 --cfg cfgs/shapes_cpu.yml \\
        --weights data/pretrained_model/resnet18_shapes.pth ...

Crops every gt box (and background squares) of the --dataset's training images at the detector's scale
(TRAIN.SCALES[0], TRAIN.MAX_SIZE), trains a torchvision-layout ResNet to classify them, and writes the backbone
as a torchvision state dict ('pytorch' format) that trainval_net.py --weights loads (see
lib/model/faster_rcnn/pretrain.py and docs/TRAINING.md). A JSON log of the run goes beside it (<output>.json).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from lib.model.faster_rcnn.pretrain import PRETRAIN_NETS  # noqa: E402
from lib.model.utils.script_utils import DATASETS, add_cfg_args  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', dest='dataset', default='shapes', choices=sorted(DATASETS),
                   help='dataset whose training images are cropped')
    p.add_argument('--data_path', dest='data_path', default=None, help='folder of a VOC-format set (--dataset custom)')
    p.add_argument('--net', dest='net', default='res18', choices=sorted(PRETRAIN_NETS), help='backbone')
    p.add_argument('--output', dest='output', default=None,
                   help='weights file (default <DATA_DIR>/pretrained_model/resnet<depth>_<dataset>.pth)')
    p.add_argument('--steps', dest='steps', default=1200, type=int, help='optimizer steps')
    p.add_argument('--bs', dest='batch_size', default=32, type=int, help='crops per step')
    p.add_argument('--lr', dest='lr', default=2e-3, type=float, help='AdamW peak learning rate')
    p.add_argument('--weight_decay', dest='weight_decay', default=1e-4, type=float, help='AdamW weight decay')
    p.add_argument('--warmup', dest='warmup', default=50, type=int, help='linear warm-up steps')
    p.add_argument('--crop_size', dest='crop_size', default=64, type=int, help='network input, pixels a side')
    p.add_argument('--min_side', dest='min_side', default=None, type=float,
                   help='least side of a crop square, pixels at the detector scale (default --crop_size: an object '
                        'smaller than that keeps its own size in its crop, none is enlarged)')
    p.add_argument('--bg_per_image', dest='bg_per_image', default=4, type=int,
                   help='background crops tried per image (kept when IoU <= 0.3 with every box)')
    p.add_argument('--val', dest='val', action='store_true',
                   help="report the crop accuracy on the dataset's test images at the end (not used to train)")
    p.add_argument('--seed', dest='seed', default=None, type=int, help='random seed (default cfg.RNG_SEED)')
    p.add_argument('--cuda', dest='cuda', action='store_true', help='train on the GPU')
    p.add_argument('--amp', dest='amp', action='store_true',
                   help="bf16 autocast, as trainval_net.py's --amp (on a CPU: fast where it has AVX512-BF16 or AMX)")
    add_cfg_args(p, with_ls=False)
    return p


def _roidb(imdb_names):
    from lib.roi_data_layer.roidb import combined_roidb
    imdb, roidb, _, _ = combined_roidb(imdb_names, training=False)
    return imdb, roidb


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from lib.datasets.object_crops import object_crops
    from lib.model.faster_rcnn import pretrain
    from lib.model.utils.checkpoint import save_checkpoint
    from lib.model.utils.config import cfg
    from lib.model.utils.script_utils import amp_autocast, select_device, setup_cfg, seed_everything

    setup_cfg(args.dataset, args.net, cfg_file=args.cfg_file, set_cfgs=args.set_cfgs, data_path=args.data_path)
    seed = cfg.RNG_SEED if args.seed is None else args.seed
    seed_everything(seed)
    device = select_device(args.cuda)
    settings = DATASETS[args.dataset]
    output = args.output or pretrain.default_output_path(cfg.DATA_DIR, args.net, args.dataset)
    scale, max_size = cfg.TRAIN.SCALES[0], cfg.TRAIN.MAX_SIZE
    crop_kw = dict(target_size=scale, max_size=max_size, crop_size=args.crop_size, bg_per_image=args.bg_per_image,
                   min_side=args.crop_size if args.min_side is None else args.min_side)

    t0 = time.time()
    imdb, roidb = _roidb(settings['imdb_name'])
    crops, labels = object_crops(roidb, seed=seed, progress=lambda it: tqdm(it, desc='cropping', unit='img'),
                                 **crop_kw)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(imdb.classes)}
    print(f'{len(crops)} crops from {len(roidb)} images of {settings["imdb_name"]} at short side {scale}: {counts}')

    model = pretrain.build_classifier(args.net, imdb.num_classes)
    means, stds = cfg.PYTORCH_PIXEL_MEANS, cfg.PYTORCH_PIXEL_STDS
    history = pretrain.pretrain_classifier(
        model, crops, labels, args.steps, means, stds, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, crop_size=args.crop_size, seed=seed, device=device,
        progress=lambda it: tqdm(it, desc=f'pretraining {args.net}', unit='step'),
        autocast=amp_autocast(device, args.amp)[0], channels_last=cfg.CHANNELS_LAST)
    train_s = time.time() - t0
    save_checkpoint(pretrain.backbone_state_dict(model), output)
    result = {'dataset': args.dataset, 'net': args.net, 'steps': args.steps, 'batch_size': args.batch_size,
              'lr': args.lr, 'amp': args.amp, 'channels_last': cfg.CHANNELS_LAST, 'crop_size': args.crop_size,
              'min_side': crop_kw['min_side'], 'seed': seed, 'train_crops': len(crops),
              'crops_and_training_s': round(train_s, 1), 'history': history}
    print(f'wrote {output} ({train_s:.0f} s; final loss {history[-1]["loss"]:.3f})')

    if args.val:
        _, val_roidb = _roidb(settings['imdbval_name'])
        vc, vl = object_crops(val_roidb, seed=seed + 1, **crop_kw)
        acc, fg_acc = pretrain.evaluate(model, vc, vl, args.crop_size, means, stds, device,
                                        channels_last=cfg.CHANNELS_LAST)
        result.update(val_crops=len(vc), val_accuracy=acc, val_object_accuracy=fg_acc)
        print(f'crop accuracy on {settings["imdbval_name"]}: {acc:.3f} ({len(vc)} crops), '
              f'{fg_acc:.3f} on the objects alone')
    with open(output + '.json', 'w') as f:
        json.dump(result, f, indent=1)
    return output


if __name__ == '__main__':
    main()
