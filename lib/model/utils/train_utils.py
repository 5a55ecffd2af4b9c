"""The training loop behind trainval_net.py: optimizer, lr schedule, loss tracking with the non-finite guard,
checkpoints with exact resume, DataParallel / DistributedDataParallel, AMP, logging.
"""
import json
import os
import signal
import sys
import threading
import time

import torch
from torch import nn
from tqdm import tqdm

from lib.model.utils.checkpoint import checkpoint_name, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from lib.model.utils.config import cfg, cfg_to_dict
from lib.model.utils.net_utils import (AutocastForward, adjust_learning_rate, clip_gradient, fused_optimizer_ok,
                                       match_state_layouts, scaled_learning_rate)
from lib.model.utils.script_utils import (amp_autocast, build_detector, cfg_differences, dataset_settings,
                                          load_model_weights, print_cfg, save_cfg, seed_everything, select_device,
                                          setup_cfg, stored_model_cfg)

LOSS_NAMES = ('rpn_cls', 'rpn_box', 'rcnn_cls', 'rcnn_box')


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------------------
# optimizer and schedule
# ----------------------------------------------------------------------------------------------------------------
def build_param_groups(model, lr, weight_decay, double_bias, bias_decay):
    """One parameter group per trainable parameter, as the original: biases get lr x (double_bias + 1) and weight
    decay only when bias_decay; every other parameter gets lr and weight_decay. Frozen parameters are left out.
    """
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if 'bias' in name:
            groups.append({'params': [p], 'lr': lr * (int(double_bias) + 1),
                           'weight_decay': weight_decay if bias_decay else 0.0})
        else:
            groups.append({'params': [p], 'lr': lr, 'weight_decay': weight_decay})
    if not groups:
        raise ValueError('the model has no trainable parameters')
    return groups


def build_optimizer(model, name, lr):
    """'sgd' (momentum cfg.TRAIN.MOMENTUM) or 'adam', both with the given lr and the cfg's weight decay rules.

    The update runs as PyTorch's fused kernel where every parameter is a floating-point CPU or CUDA tensor: with the
    original's one group per parameter, the default implementation launches several ops per parameter (a ResNet-18
    step: 23 ms on 2 CPU cores, 10 ms fused). The arithmetic is the same.
    """
    groups = build_param_groups(model, lr, cfg.TRAIN.WEIGHT_DECAY, cfg.TRAIN.DOUBLE_BIAS, cfg.TRAIN.BIAS_DECAY)
    fused = fused_optimizer_ok(p for g in groups for p in g['params'])
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.TRAIN.MOMENTUM, fused=fused or None)
    if name == 'adam':
        return torch.optim.Adam(groups, lr=lr, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")


def lr_decay_due(epoch, lr_decay_step):
    """The original's rule: decay at the start of every epoch divisible by lr_decay_step + 1 (epochs count from 1)."""
    return epoch % (lr_decay_step + 1) == 0


def warmup_factor(iteration, warmup):
    """--warmup's lr multiplier at ``iteration`` (from 0 at the first iteration of epoch 1, as the history's 'iter'):
    a linear ramp from 1 / warmup at iteration 0 to 1 at iteration warmup - 1, then 1; always 1 with warmup 0
    (the original, which has no warm-up)."""
    return 1.0 if iteration >= warmup else (iteration + 1) / warmup


def fit_schedule(epoch, seconds_left, epoch_seconds, last_epoch, decayed):
    """--time_budget's schedule after ``epoch`` ended: (last epoch, lr_decay_step or None to keep the current one).

    The run ends with the last epoch that fits in ``seconds_left`` when an epoch takes ``epoch_seconds`` (never
    past ``last_epoch``: the --epochs bound before the decay, the current plan after it), and the lr decays once,
    at the start of its last quarter of epochs (rounded half up: 12 epochs decay at 10, as --epochs 12
    --lr_decay_step 9 does; 2 to 5 epochs decay for the last one). Once the lr has ``decayed``, no decay is placed.
    """
    last = min(last_epoch, epoch + int(max(seconds_left, 0.0) // max(epoch_seconds, 1e-9)))
    if decayed or last <= epoch:
        return last, None
    tail = min(max(1, (last + 2) // 4), last - epoch)  # the decayed epochs, all still to come
    return last, last - tail  # lr_decay_due(last - tail + 1, last - tail); the next multiple is past last


# ----------------------------------------------------------------------------------------------------------------
# loss tracking and the non-finite guard
# ----------------------------------------------------------------------------------------------------------------
class LossMeter:
    """Accumulates the losses on their device; reading them is the only host synchronisation.

    ``add`` runs every step without a sync: the losses are summed and the first step whose losses are not all finite
    is recorded in a device tensor. ``check_finite`` (before each checkpoint) and ``read`` (at display time) sync
    once and raise NonFiniteLossError naming the epoch, the iteration and the images of the bad batch.
    """

    def __init__(self, device, describe_batch=None):
        self.device = device
        self.describe_batch = describe_batch or (lambda ids: [str(i) for i in ids])
        self.reset()

    def reset(self):
        self.sums = torch.zeros(5, device=self.device)
        self.last = torch.zeros(7, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.steps = []

    def add(self, epoch, step, losses, rois_label, ids):
        """losses: [4] (rpn_cls, rpn_box, rcnn_cls, rcnn_box); rois_label: [B, R] labels; ids: dataset indices."""
        losses = losses.detach().float()
        values = torch.cat([losses.sum().view(1), losses])
        finite = torch.isfinite(values).all()
        index = len(self.steps)
        self.first_bad = torch.where(~finite & (self.first_bad < 0), torch.full_like(self.first_bad, index),
                                     self.first_bad)
        self.sums += values
        if rois_label is not None:
            fg = (rois_label != 0).sum().view(1).float()
            bg = torch.full_like(fg, rois_label.numel()) - fg
        else:
            fg = bg = torch.zeros(1, device=values.device)
        self.last = torch.cat([values, fg, bg])
        self.steps.append((epoch, step, ids))

    def _raise_if_bad(self, first_bad, any_bad_elsewhere=False):
        if first_bad < 0:
            if any_bad_elsewhere:
                raise NonFiniteLossError('another process of this distributed run hit a non-finite loss; stopping')
            return
        epoch, step, ids = self.steps[first_bad]
        images = self.describe_batch(ids)
        raise NonFiniteLossError(
            f'non-finite loss (NaN or inf) at epoch {epoch}, iteration {step}; images of that batch: '
            f'{", ".join(images)}. Training stopped; no checkpoint was written after this iteration. Try a lower '
            f'--lr, check these images\' annotations, or run without --amp.')

    def _sync_bad(self):
        bad = self.first_bad.clone()
        elsewhere = False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = (bad >= 0).long()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            elsewhere = bool(flag.item())
        return int(bad.item()), elsewhere

    def check_finite(self):
        """Raise NonFiniteLossError if any step since the last reset had a non-finite loss (in any process)."""
        self._raise_if_bad(*self._sync_bad())

    def check_finite_here(self):
        """``check_finite`` for this process alone, with no collective: for an error path, which the other
        processes of a distributed run do not take (an all_reduce there would pair with their gradient all_reduce
        and hang until the timeout, hiding the error)."""
        self._raise_if_bad(int(self.first_bad.item()))

    def read(self):
        """Check, then return {'loss': mean total since reset, the 4 losses of the last step (what the original
        printed), 'mean_<name>': their means since reset, 'fg', 'bg' (last step), 'count'}."""
        self.check_finite()
        count = max(len(self.steps), 1)
        sums = self.sums.tolist()
        last = self.last.tolist()
        out = {'loss': sums[0] / count, 'count': len(self.steps), 'fg': int(last[5]), 'bg': int(last[6])}
        out.update(zip(LOSS_NAMES, last[1:5]))
        out.update((f'mean_{k}', v / count) for k, v in zip(LOSS_NAMES, sums[1:5]))
        return out


# ----------------------------------------------------------------------------------------------------------------
# distributed setup
# ----------------------------------------------------------------------------------------------------------------
def distributed_env():
    """(rank, world_size, local_rank) when launched by torchrun (RANK/WORLD_SIZE set), else None."""
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        return (int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), int(os.environ.get('LOCAL_RANK', 0)))
    return None


def init_distributed(use_cuda):
    """Join the process group torchrun set up: nccl on CUDA, gloo on CPU. Returns (rank, world, local_rank)."""
    env = distributed_env()
    if env is None:
        return 0, 1, None
    rank, world, local_rank = env
    if not torch.distributed.is_initialized():
        backend = 'nccl' if use_cuda else 'gloo'
        if use_cuda:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return rank, world, local_rank


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
class _WithIndex(torch.utils.data.Dataset):
    """Appends the dataset index to every item, so a bad batch can be traced back to its images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], index)


def _init_worker(worker_id):
    # numpy, which the data layer uses for scales and crops, from the worker's own torch seed (base seed + worker
    # id), so that the draws follow the loader's generator (recent torch also seeds numpy itself).
    import numpy as np
    np.random.seed(torch.initial_seed() % 2 ** 32)
    # Ctrl-C and `timeout` signal the whole process group, workers included, while the trainer finishes its
    # iteration and checkpoint (StopRequest). A worker killed by a signal makes torch raise in the trainer, even
    # during that checkpoint write; one that exits with status 0 does not. So a worker ignores SIGINT and leaves
    # quietly on SIGTERM (which is also how the loader and multiprocessing end their workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum, frame):
    os._exit(0)


def describe_images(roidb, ratio_index):
    """A function mapping loader indices to image descriptions ('path' or 'path (flipped)')."""
    def describe(ids):
        out = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            entry = roidb[int(ratio_index[int(i)])]
            out.append(entry.get('image', f'#{i}') + (' (flipped)' if entry.get('flipped') else ''))
        return out
    return describe


# ----------------------------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------------------------
def plot_loss_history(history, path, title=None):
    """Save a PNG of the total and the four component losses (means between displays) against the global
    iteration (matplotlib Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if not history:
        return None
    x = [h['iter'] for h in history]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [h['loss'] for h in history], label='loss', linewidth=2)
    for name in LOSS_NAMES:
        ax.plot(x, [h.get(f'mean_{name}', h[name]) for h in history], label=name, linewidth=1, alpha=0.8)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _format_time(seconds):
    d, rem = divmod(int(seconds), 24 * 3600)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f'{d}:{h}:{m}:{s}'


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------
def _autocast(device, args):
    """The autocast context for --amp (bf16, or fp16 with --amp_dtype fp16 on CUDA), and its dtype
    (script_utils.amp_autocast); (nullcontext, None) without --amp."""
    return amp_autocast(device, args.amp, args.amp_dtype)


def data_parallel(core, amp_dtype=None):
    """--mGPUs: ``nn.DataParallel(core)``; under --amp the replicas run in ``AutocastForward``, since
    DataParallel's worker threads would otherwise autocast to float16 whatever dtype --amp asked for."""
    return nn.DataParallel(core if amp_dtype is None else AutocastForward(core, amp_dtype))


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's preemption, timeout) only set ``signal`` to
    the signal's name; the training loop then saves a checkpoint after the current iteration and stops. The first
    signal restores the previous handlers, so a second one acts at once. Inactive when disabled or off the main
    thread (Python delivers signals to the main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled=True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self._restore()

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self):
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def _make_sampler(train_size, batch_size, rank, world, seed):
    from lib.roi_data_layer.sampler import sampler
    return sampler(train_size, batch_size, rank=rank, world_size=world, seed=seed)


_clock = time.time  # the run's clock: start, epoch times and --time_budget (tests put a fake one here)


def run_training(args, log=None):
    """Train as trainval_net.py does, from parsed arguments. Returns a dict with output_dir, checkpoints (paths
    written, in order), history (one record per display: iter, epoch, step, loss, the 4 losses, lr), session and
    stopped_by (the name of the signal that stopped the run early, see StopRequest, 'time_budget' when
    --time_budget did, or None).
    """
    start_time = _clock()
    rank, world, local_rank = init_distributed(args.cuda)
    is_main = rank == 0
    log = log or (lambda msg: tqdm.write(msg, file=sys.stdout))
    say = log if is_main else (lambda msg: None)
    # one process: SIGINT / SIGTERM save a checkpoint after the current iteration and stop. Under DDP every rank
    # would have to agree on the iteration, so there the signals keep their usual effect.
    try:
        with StopRequest(enabled=world == 1) as stop:
            return _train(args, rank, world, local_rank, is_main, say, start_time, stop)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(args, rank, world, local_rank, is_main, say, start_time, stop):
    from lib.roi_data_layer.roibatchLoader import roibatchLoader
    from lib.roi_data_layer.roidb import combined_roidb

    say(f'Called with args:\n{args}')
    settings = dataset_settings(args.dataset)
    output_dir = os.path.join(args.save_dir, args.net, args.dataset)
    ck, load_name = None, None
    if args.resume:
        load_name = checkpoint_name(output_dir, args.checksession, args.checkepoch, args.checkpoint)
        say(f'loading checkpoint {load_name}')
        ck = load_checkpoint(load_name)
    # a resumed run builds the model the checkpoint was trained with: its model keys (anchors, pooling, input
    # format, BatchNorm ...) come after the yml, and only --set still overrides them, as in test_net
    cfg_used = setup_cfg(args.dataset, args.net, args.large_scale, args.cfg_file, args.set_cfgs,
                         stored_cfg=stored_model_cfg(ck) if ck else None, data_path=args.data_path)
    changed = cfg_differences(ck.get('cfg')) if ck else []
    if changed:
        say(f'NOTE: this run\'s cfg differs from {load_name}\'s in ' + '; '.join(changed[:8])
            + (f' ... ({len(changed)} keys)' if len(changed) > 8 else ''))
    if ck is not None and 'class_agnostic' in ck and bool(ck['class_agnostic']) != bool(args.class_agnostic):
        say(f'{load_name} was trained with{"" if ck["class_agnostic"] else "out"} --cag; continuing so')
        args.class_agnostic = bool(ck['class_agnostic'])
    device = select_device(args.cuda, local_rank)
    cfg.CUDA = device.type == 'cuda'
    cfg.USE_GPU_NMS = device.type == 'cuda'
    seed = args.seed if args.seed is not None else cfg.RNG_SEED
    seed_everything(seed + rank, args.deterministic)

    imdb, roidb, ratio_list, ratio_index = combined_roidb(settings['imdb_name'])
    train_size = len(roidb)
    say(f'{train_size:d} roidb entries')

    if is_main:
        os.makedirs(output_dir, exist_ok=True)

    bs = args.batch_size
    # as the original, int(train_size / bs) batches; with several processes each runs its share of the blocks
    # (the partial block, when bs does not divide the size, is never reached)
    iters_per_epoch = train_size // (bs * world)
    if args.max_iters is not None:
        iters_per_epoch = min(iters_per_epoch, args.max_iters)
    if iters_per_epoch < 1:
        raise ValueError(f'{train_size} images are too few for batch size {bs} on {world} process(es)')

    # the model is built before the data loader: loading pretrained weights sets cfg.INPUT_FORMAT, which the
    # loader's image normalisation follows
    if ck is None:
        # no --weights: the original's data/pretrained_model/<net>_caffe.pth; 'none': from scratch
        pretrained = args.weights is None or str(args.weights).lower() != 'none'
        core = build_detector(args.net, imdb.classes, pretrained=pretrained, class_agnostic=args.class_agnostic,
                              weights=args.weights if pretrained else None)
    else:  # the checkpoint replaces every weight; its stem is frozen as it was (the original's always was)
        core = build_detector(args.net, imdb.classes, class_agnostic=args.class_agnostic,
                              freeze_stem=ck.get('freeze_stem', True))
    core.to(device)

    train_sampler = _make_sampler(train_size, bs, rank, world, seed)
    dataset = roibatchLoader(roidb, ratio_list, ratio_index, bs, imdb.num_classes, training=True)
    loader_gen = torch.Generator()
    dataloader = torch.utils.data.DataLoader(_WithIndex(dataset), batch_size=bs, sampler=train_sampler,
                                             num_workers=args.num_workers, worker_init_fn=_init_worker,
                                             generator=loader_gen, pin_memory=device.type == 'cuda')

    optimizer = build_optimizer(core, args.optimizer, args.lr)
    autocast, amp_dtype = _autocast(device, args)
    use_scaler = amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    resumed = _resume(args, ck, load_name, core, optimizer, scaler if use_scaler else None, imdb.classes,
                      iters_per_epoch, world, say)
    session, lr, history = resumed['session'], resumed['lr'], resumed['history']
    start_epoch, start_step, rng_state = resumed['start_epoch'], resumed['start_step'], resumed['rng']
    checkpoints = []

    model = core
    if world > 1:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[local_rank] if device.type == 'cuda' else None)
    elif args.mGPUs:
        if device.type != 'cuda':
            raise ValueError('--mGPUs needs --cuda')
        model = data_parallel(core, amp_dtype)

    if is_main:
        print_cfg()
        save_cfg(output_dir, f'cfg_{session}')
        say(f'config file: {cfg_used}; effective config saved to {os.path.join(output_dir, f"cfg_{session}.yml")}')

    writer = None
    if args.use_tfboard and is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(output_dir, f'logs_s_{session}'))

    meter = LossMeter(device, describe_images(roidb, ratio_index))
    clip = args.net == 'vgg16'
    imgs_per_iter = bs * world

    def save(epoch, step):
        meter.check_finite()
        if not is_main:
            return
        state = _checkpoint_state(args, core, optimizer, scaler if use_scaler else None, imdb.classes, session,
                                  epoch, step, iters_per_epoch, lr, train_sampler, history)
        name = save_checkpoint(state, checkpoint_name(output_dir, session, epoch, step))
        checkpoints.append(name)
        say(f'save model: {name}')

    stopping = False  # a signal was seen at the end of an iteration (StopRequest), or the time budget ran out
    budget = getattr(args, 'time_budget', None)
    if budget is not None and not budget > 0:
        raise ValueError(f'--time_budget must be a positive number of seconds, got {budget}')
    warmup = getattr(args, 'warmup', 0)
    if warmup < 0:
        raise ValueError(f'--warmup must be a number of iterations >= 0, got {warmup}')
    last_epoch, lr_decay_step = args.max_epochs, args.lr_decay_step
    decayed = lr < args.lr * (1 - 1e-6)  # a resumed run past its decay (--time_budget decays once)
    if budget is not None:
        lr_decay_step = last_epoch  # no decay (lr_decay_due(last_epoch + 1, ...)) until fit_schedule places one
        say(f'time budget: {budget:.0f} s of training from the start of this run; the epochs (at most '
            f'{last_epoch}) and the lr decay follow from the time an epoch takes')
    epoch = start_epoch
    while epoch <= last_epoch:
        epoch_start = _clock()
        model.train()
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0 and lr_decay_due(epoch, lr_decay_step):
            adjust_learning_rate(optimizer, args.lr_decay_gamma)
            lr *= args.lr_decay_gamma
            decayed = True
        train_sampler.load_state_dict({'epoch': epoch, 'position': first_step})
        dataset.set_epoch(epoch)  # before iter(): workers copy the dataset then (the block scales vary by epoch)
        # A per-epoch generator for the loader's base seed: creating the iterator then draws nothing from the
        # global RNG, so a resumed run consumes random numbers exactly as the uninterrupted one did.
        loader_gen.manual_seed(seed * 1000003 + epoch)
        data_iter = iter(dataloader)
        if rng_state is not None:
            set_rng_state(rng_state)
            rng_state = None
        meter.reset()
        tic = time.time()
        bar = tqdm(total=iters_per_epoch * imgs_per_iter, initial=first_step * imgs_per_iter,
                   desc=f'epoch {epoch}/{last_epoch}', unit='img', disable=not is_main,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        for step in range(first_step, iters_per_epoch):
            iteration = (epoch - 1) * iters_per_epoch + step  # counted from epoch 1, as the history's 'iter'
            # the lr this step runs at: the schedule's, ramped up over the first --warmup iterations
            warm = warmup_factor(iteration, warmup)
            step_lr = lr * warm
            im_data, im_info, gt_boxes, num_boxes, ids = next(data_iter)
            im_data = im_data.to(device, non_blocking=True)
            im_info = im_info.to(device, non_blocking=True)
            gt_boxes = gt_boxes.to(device, non_blocking=True)
            num_boxes = num_boxes.to(device, non_blocking=True)
            try:
                with autocast():
                    out = model(im_data, im_info, gt_boxes, num_boxes)
                rpn_loss_cls, rpn_loss_box, rcnn_loss_cls, rcnn_loss_bbox, rois_label = (
                    out[3], out[4], out[5], out[6], out[7])
                # mean(): under DataParallel each loss comes back as one value per GPU
                losses = torch.stack([rpn_loss_cls.float().mean(), rpn_loss_box.float().mean(),
                                      rcnn_loss_cls.float().mean(), rcnn_loss_bbox.float().mean()])
                loss = losses.sum()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(optimizer)
                    clip_gradient(core, 10.)
                with scaled_learning_rate(optimizer, warm):
                    scaler.step(optimizer)
                scaler.update()
                meter.add(epoch, step, losses, rois_label, ids)
            except NonFiniteLossError:
                raise
            except Exception:
                # a NaN earlier in this display window can crash later layers (e.g. NaN boxes); report the NaN
                meter.check_finite_here()
                raise
            bar.update(imgs_per_iter)

            if step % args.disp_interval == 0 or step == iters_per_epoch - 1:
                stats = meter.read()
                record = {'iter': iteration, 'epoch': epoch, 'step': step,
                          'loss': stats['loss'], 'lr': step_lr, **{k: stats[k] for k in LOSS_NAMES},
                          **{f'mean_{k}': stats[f'mean_{k}'] for k in LOSS_NAMES}}
                history.append(record)
                if step % args.disp_interval == 0:
                    _log_display(say, session, epoch, step, iters_per_epoch, stats, step_lr, time.time() - tic)
                bar.set_postfix(loss=f'{stats["loss"]:.3f}', lr=f'{step_lr:.1e}')
                if writer is not None:
                    _write_tensorboard(writer, record['iter'], stats, step_lr)
                meter.reset()
                tic = time.time()

            last = step == iters_per_epoch - 1
            # read once: a signal arriving between the save and the break would stop without its checkpoint
            # past the time budget (several processes agree at display steps only: it costs each a sync)
            stopping = stop.signal is not None or (
                budget is not None and not last and (world == 1 or step % args.disp_interval == 0)
                and _agree(_clock() - start_time > budget, device, world))
            if last or (args.checkpoint_interval > 0 and (step + 1) % args.checkpoint_interval == 0) or stopping:
                save(epoch, step)
            if stopping:
                why = stop.signal or f'the {budget:.0f} s time budget'
                say(f'stopped by {why} after epoch {epoch} iteration {step}; to continue: --r true '
                    f'--checksession {session} --checkepoch {epoch} --checkpoint {step}')
                break
        del data_iter  # shuts the loader workers down now, not at interpreter exit
        bar.close()
        if is_main:
            plot_loss_history(history, os.path.join(output_dir, f'loss_{session}.png'),
                              title=f'{args.net} {args.dataset} session {session}')
            with open(os.path.join(output_dir, f'loss_history_{session}.json'), 'w') as f:
                json.dump(history, f)
        if stopping:
            break
        if budget is not None:
            now = _clock()
            seconds_left = budget - (now - start_time)
            # a resumed epoch ran part of its iterations: its time scaled to a whole epoch
            epoch_seconds = (now - epoch_start) * iters_per_epoch / (iters_per_epoch - first_step)
            # before the decay the plan follows the pace up to --epochs (a first epoch slowed by start-up costs,
            # such as cudnn.benchmark's search for every new input shape, must not cap the run); after it, the
            # plan can only end sooner
            bound = last_epoch if decayed else args.max_epochs
            fit_last, step_now = fit_schedule(epoch, seconds_left, epoch_seconds, bound, decayed)
            before = (last_epoch, lr_decay_step)
            last_epoch = _agree(fit_last, device, world)  # every rank runs rank 0's schedule
            if step_now is not None:
                lr_decay_step = _agree(step_now, device, world)
            if (last_epoch, lr_decay_step) != before or epoch == start_epoch:
                decay = '' if decayed or last_epoch <= epoch else \
                    f', lr x {args.lr_decay_gamma:g} from epoch {lr_decay_step + 1}'
                say(f'time budget: {seconds_left:.0f} s left, {epoch_seconds:.1f} s per epoch: '
                    f'training to epoch {last_epoch}{decay}')
        epoch += 1

    if writer is not None:
        writer.close()
    total = _clock() - start_time
    say(f'TOTAL RUNTIME WAS {total:.1f} seconds .. or d:h:m:s -> {_format_time(total)}')
    return {'output_dir': output_dir, 'checkpoints': checkpoints, 'history': history, 'session': session,
            'stopped_by': (stop.signal or 'time_budget') if stopping else None}


def _agree(value, device, world):
    """``value`` (an int or bool) as rank 0 has it, on every rank of a distributed run; itself in one process."""
    if world == 1:
        return value
    t = torch.tensor([int(value)], device=device if device.type == 'cuda' else 'cpu')
    torch.distributed.broadcast(t, 0)
    return type(value)(t.item())


def _resume(args, ck, load_name, core, optimizer, scaler, classes, iters_per_epoch, world, say):
    """Load the --r checkpoint ``ck`` (read from ``load_name``) into core / optimizer / scaler. Returns session,
    lr, history, start_epoch, start_step and rng (the RNG state to restore at the start of the first epoch, or
    None); without a checkpoint, the command line's values. The original's checkpoints (model, optimizer,
    'epoch' = the next epoch, no step) resume at the start of that epoch with the optimizer's lr, as it did."""
    out = {'session': args.session, 'lr': args.lr, 'history': [], 'start_epoch': args.start_epoch,
           'start_step': 0, 'rng': None}
    if ck is None:
        return out
    if list(ck.get('classes', classes)) != list(classes):
        raise ValueError(f'{load_name} was trained on classes {ck["classes"]}, but --dataset {args.dataset} has '
                         f'{list(classes)}')
    load_model_weights(core, ck['model'], args.net, load_name)
    try:
        optimizer.load_state_dict(ck['optimizer'])
    except ValueError as e:
        raise ValueError(f'{load_name}: its optimizer state does not fit this model\'s trainable parameters '
                         f'({e}); was it trained with another RESNET.FIXED_BLOCKS or --o?') from None
    match_state_layouts(optimizer)
    if ck.get('scaler') and scaler is not None:
        scaler.load_state_dict(ck['scaler'])
    if 'step' in ck:
        start_epoch, start_step = ck['epoch'], ck['step'] + 1
        if start_step >= ck.get('iters_per_epoch', iters_per_epoch):
            start_epoch, start_step = start_epoch + 1, 0
    else:  # the original's format
        start_epoch, start_step = ck['epoch'], 0
    if ck.get('iters_per_epoch', iters_per_epoch) != iters_per_epoch:
        say(f'WARNING: the checkpoint ran {ck["iters_per_epoch"]} iterations per epoch, this run {iters_per_epoch}')
    lr = ck['lr'] if 'lr' in ck else optimizer.param_groups[0]['lr']
    out.update(session=ck.get('session', args.session), lr=lr, history=list(ck.get('history', [])),
               start_epoch=start_epoch, start_step=start_step, rng=ck['rng'] if world == 1 and 'rng' in ck else None)
    say(f'loaded checkpoint {load_name}; continuing at epoch {start_epoch}, iteration {start_step}')
    return out


def _checkpoint_state(args, core, optimizer, scaler, classes, session, epoch, step, iters_per_epoch, lr,
                      train_sampler, history):
    """Everything a checkpoint holds: the model and how it was built, and the full state to resume exactly."""
    return {
        'session': session, 'epoch': epoch, 'step': step, 'iters_per_epoch': iters_per_epoch,
        'model': core.state_dict(), 'optimizer': optimizer.state_dict(), 'lr': lr,
        'pooling_mode': core.pooling_mode, 'class_agnostic': bool(args.class_agnostic),
        'classes': [str(c) for c in classes], 'anchor_scales': list(cfg.ANCHOR_SCALES),
        'anchor_ratios': list(cfg.ANCHOR_RATIOS), 'cfg': cfg_to_dict(), 'net': args.net,
        'dataset': args.dataset, 'batch_size': args.batch_size,
        'freeze_stem': bool(core.freeze_stem),
        'sampler': train_sampler.state_dict(position=step + 1),
        'rng': get_rng_state(), 'scaler': scaler.state_dict() if scaler is not None else None,
        'history': history, 'format_version': 1,
    }


def _log_display(say, session, epoch, step, iters_per_epoch, stats, lr, seconds):
    """The original's three display lines."""
    say('[session %d][epoch %2d][iter %4d/%4d] loss: %.4f, lr: %.2e'
        % (session, epoch, step, iters_per_epoch, stats['loss'], lr))
    say('\t\t\tfg/bg=(%d/%d), time cost: %f' % (stats['fg'], stats['bg'], seconds))
    say('\t\t\trpn_cls: %.4f, rpn_box: %.4f, rcnn_cls: %.4f, rcnn_box %.4f' % tuple(stats[k] for k in LOSS_NAMES))


def _write_tensorboard(writer, it, stats, lr):
    writer.add_scalar('losses/loss', stats['loss'], it)
    for k in LOSS_NAMES:
        writer.add_scalar(f'losses/{k}', stats[k], it)
    writer.add_scalar('lr', lr, it)
