"""Classification pretraining of a ResNet backbone on object crops, for datasets with no ImageNet weights at hand.

The original fine-tunes a detector from ImageNet classification weights. Where none can be had (the synthetic
shapes set; a machine without downloads), tools/pretrain_backbone.py plays ImageNet's part on the training set
itself: a torchvision-layout ResNet learns to tell the crops of lib/datasets/object_crops.py apart (the classes
plus background), and its weights are saved as a torchvision state dict marked '__format__': 'pytorch', which
``trainval_net.py --weights <file>`` loads like any pretrained file (weights.py).

Recipe (measured on the shapes set, docs/TRAINING.md): AdamW, a linear warm-up then a cosine decay to 0, batches
of random ``crop_size`` windows of the stored crops, half of them mirrored.
"""
import contextlib
import math
import os

import numpy as np
import torch
from torch import nn

from lib.model.utils.blob import normalize_image
from lib.model.utils.net_utils import fused_optimizer_ok
from .resnet import RESNET_LAYERS, build_resnet
from .small_map_conv import use_small_map_convs
from .weights import FORMAT_KEY

PRETRAIN_NETS = {f'res{depth}': depth for depth in RESNET_LAYERS}   # --net name -> depth


def build_classifier(net, num_classes):
    """A torchvision-layout ResNet for ``net`` ('res18'..'res152') whose fc predicts ``num_classes``.

    layer4 runs as the detector's head runs it (small_map_conv.py): on 64 px crops its maps are 2x2, where a
    512->512 convolution of 32 crops took 23 ms forward + backward through oneDNN and 14 ms as unfold + matmul
    (float32, 2-core Ice Lake CPU). The parameters and state dict are a plain ResNet's.
    """
    if net not in PRETRAIN_NETS:
        raise ValueError(f'pretraining supports the ResNets ({", ".join(PRETRAIN_NETS)}), not {net!r}')
    model = build_resnet(PRETRAIN_NETS[net], caffe=False)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    use_small_map_convs(model.layer4)
    return model


def normalize_crops(crops, pixel_means, pixel_stds, channels_last=False):
    """BGR uint8 [B, S, S, 3] -> float32 [B, 3, S, S], normalised as the detector's 'pytorch' input format;
    in channels_last memory layout if asked (cfg.CHANNELS_LAST), else contiguous."""
    b, s = crops.shape[:2]
    x = normalize_image(crops.reshape(b * s, s, 3), 'pytorch', pixel_means, pixel_stds)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.from_numpy(x.reshape(b, s, s, 3)).permute(0, 3, 1, 2).contiguous(memory_format=layout)


def lr_at(step, steps, base_lr, warmup):
    """Learning rate of 0-based ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def sample_batch(rng, crops, labels, batch_size, crop_size):
    """Random crops (with replacement), each a random ``crop_size`` window, mirrored with probability 1/2."""
    idx = rng.integers(0, len(crops), batch_size)
    room = crops.shape[1] - crop_size
    offsets = rng.integers(0, room + 1, (batch_size, 2))
    flips = rng.random(batch_size) < 0.5
    out = np.empty((batch_size, crop_size, crop_size, 3), np.uint8)
    for j, (i, (oy, ox), flip) in enumerate(zip(idx, offsets, flips)):
        window = crops[i, oy:oy + crop_size, ox:ox + crop_size]
        out[j] = window[:, ::-1] if flip else window
    return out, labels[idx]


def centre_windows(crops, crop_size):
    """The centred ``crop_size`` window of every crop."""
    o = (crops.shape[1] - crop_size) // 2
    return crops[:, o:o + crop_size, o:o + crop_size]


@torch.no_grad()
def evaluate(model, crops, labels, crop_size, pixel_means, pixel_stds, device, batch_size=256, channels_last=False):
    """(accuracy, accuracy on object crops) of ``model`` in eval mode on the centred windows."""
    if len(crops) == 0:
        return float('nan'), float('nan')
    was_training = model.training
    model.eval()
    windows = centre_windows(crops, crop_size)
    preds = []
    for i in range(0, len(windows), batch_size):
        x = normalize_crops(windows[i:i + batch_size], pixel_means, pixel_stds, channels_last).to(device)
        preds.append(model(x).argmax(1).cpu())
    model.train(was_training)
    pred = torch.cat(preds).numpy()
    fg = labels > 0
    acc = float((pred == labels).mean())
    fg_acc = float((pred[fg] == labels[fg]).mean()) if fg.any() else float('nan')
    return acc, fg_acc


def pretrain_classifier(model, crops, labels, steps, pixel_means, pixel_stds, batch_size=64, lr=2e-3,
                        weight_decay=1e-4, warmup=50, crop_size=64, seed=0, device='cpu', log_every=100,
                        log=print, progress=None, autocast=contextlib.nullcontext, channels_last=False):
    """Train ``model`` (from build_classifier) on (crops, labels) for ``steps`` AdamW steps.

    Args:
        crops, labels: from lib.datasets.object_crops.object_crops.
        progress: optional callable wrapping range(steps) (e.g. tqdm); its ``set_postfix`` is fed when present.
        autocast: a factory of the context the forward runs in (script_utils.amp_autocast for --amp).
        channels_last: the batches in channels_last memory layout (cfg.CHANNELS_LAST).
    Returns:
        history: [{'step', 'loss', 'lr'}] every ``log_every`` steps (losses averaged since the previous entry).
    """
    if len(crops) == 0:
        raise ValueError('no crops to pretrain on (a dataset without images or boxes?)')
    if crops.shape[1] < crop_size:
        raise ValueError(f'stored crops are {crops.shape[1]} px, smaller than crop_size {crop_size}')
    n_classes = model.fc.out_features
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f'labels must lie in 0..{n_classes - 1} (the classifier has {n_classes} outputs), '
                         f'got {labels.min()}..{labels.max()}')
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    # the fused AdamW where it applies (the update of a ResNet-18: 46 ms on a 2-core Ice Lake CPU, 9 ms fused)
    fused = fused_optimizer_ok(model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)
    history, running, count = [], 0.0, 0
    steps_iter = progress(range(steps)) if progress is not None else range(steps)
    for step in steps_iter:
        step_lr = lr_at(step, steps, lr, warmup)
        for g in opt.param_groups:
            g['lr'] = step_lr
        xb, yb = sample_batch(rng, crops, labels, batch_size, crop_size)
        x = normalize_crops(xb, pixel_means, pixel_stds, channels_last).to(device, non_blocking=True)
        y = torch.from_numpy(yb).to(device, non_blocking=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.detach()
        count += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean_loss = float(running) / count
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f'pretraining loss is {mean_loss} at step {step + 1}; try a lower --lr')
            history.append({'step': step + 1, 'loss': mean_loss, 'lr': step_lr})
            if hasattr(steps_iter, 'set_postfix'):
                steps_iter.set_postfix(loss=f'{mean_loss:.3f}', lr=f'{step_lr:.1e}')
            else:
                log(f'[pretrain] step {step + 1}/{steps} loss {mean_loss:.4f} lr {step_lr:.2e}')
            running, count = 0.0, 0
    return history


def backbone_state_dict(model):
    """The model's tensors without the crop classifier (fc.*), on the CPU, marked as the 'pytorch' format."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith('fc.')}
    sd[FORMAT_KEY] = 'pytorch'
    return sd


def default_output_path(data_dir, net, dataset):
    """<data_dir>/pretrained_model/resnet<depth>_<dataset>.pth (no 'caffe' in the name: the format is 'pytorch')."""
    return os.path.join(data_dir, 'pretrained_model', f'resnet{PRETRAIN_NETS[net]}_{dataset}.pth')
