"""The training schedule that fits a time limit, from the log of a short probe run of trainval_net.py.

tools/gpu_checks.sh's probe stage runs a few dozen iterations with --disp_interval 20 and passes the log here:

    python tools/probe_schedule.py LOG SECONDS "TRAIN_ARGS"          # a line for people
    python tools/probe_schedule.py --flags LOG SECONDS "TRAIN_ARGS"  # only "--epochs E --lr_decay_step D"

gives the images/s of the last display interval (past cuDNN's autotuning) and the --epochs / --lr_decay_step
that fill SECONDS, with the lr decayed for the last quarter of the epochs.
"""
import re
import sys

DISP_INTERVAL = 20  # the probe's --disp_interval: iterations per logged "time cost"
STARTUP_SECONDS = 30  # model build, data and loader start (guessed, not measured on the GPU)
EPOCH_SECONDS = 3  # per epoch: loader workers restarted, checkpoint written, loss plot drawn (guessed likewise)


def batch_size(train_args):
    """--bs in a TRAIN_ARGS string (trainval_net.py's default: 1)."""
    args = train_args.split()
    return int(args[args.index('--bs') + 1]) if '--bs' in args else 1


def probe_schedule(log, seconds, bs, disp_interval=DISP_INTERVAL):
    """(images/s, epochs, lr_decay_step) from a trainval_net.py log.

    Reads the '<N> roidb entries' line and the 'time cost: <s>' of every display. The original's rule decays
    the lr at the start of every epoch divisible by lr_decay_step + 1; lr_decay_step = epochs - round(epochs / 4)
    decays it once, for the last round(epochs / 4) epochs (epochs 10-12 of 12, as the GPU job's default).
    """
    costs = [float(x) for x in re.findall(r'time cost: ([0-9.]+)', log)]
    entries = re.search(r'^(\d+) roidb entries', log, re.MULTILINE)
    if len(costs) < 2 or entries is None:
        raise ValueError('the probe log has no "roidb entries" line or fewer than two displays '
                         '(did trainval_net.py run --disp_interval 20 for 40 iterations or more?)')
    ips = bs * disp_interval / costs[-1]  # the first display is iteration 0 alone; the last is a full interval
    images_per_epoch = int(entries.group(1)) // bs * bs
    epochs = max(1, int((seconds - STARTUP_SECONDS) // (images_per_epoch / ips + EPOCH_SECONDS)))
    return ips, epochs, max(1, epochs - round(epochs / 4))


def main(argv):
    flags_only = argv[:1] == ['--flags']
    if flags_only:
        argv = argv[1:]
    if len(argv) != 3:
        sys.exit(__doc__)
    path, seconds, train_args = argv[0], float(argv[1]), argv[2]
    bs = batch_size(train_args)
    with open(path) as f:
        try:
            ips, epochs, step = probe_schedule(f.read(), seconds, bs)
        except ValueError as e:
            sys.exit(f'probe: {path}: {e}')
    if flags_only:
        print(f'--epochs {epochs} --lr_decay_step {step}')
    else:
        print(f'probe: {ips:.1f} images/s at --bs {bs}; for TRAIN_SECONDS={seconds:.0f}: '
              f'--epochs {epochs} --lr_decay_step {step}')


if __name__ == '__main__':
    main(sys.argv[1:])
