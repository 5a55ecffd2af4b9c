"""tools/probe_schedule.py: the schedule that fits a time limit, read from a trainval_net.py log."""
import pytest

from lib.model.utils.train_utils import lr_decay_due


@pytest.fixture(scope='module')
def probe(load_tool):
    return load_tool('probe_schedule')


def fake_log(entries, costs):
    lines = [f'{entries} roidb entries']
    for step, cost in zip(range(0, 20 * len(costs), 20), costs):
        lines += [f'[session 9][epoch  1][iter {step:4d}/  80] loss: 1.0000, lr: 2.00e-02',
                  f'\t\t\tfg/bg=(32/96), time cost: {cost:f}']
    return '\n'.join(lines)


def test_speed_comes_from_the_last_interval_and_the_decay_covers_the_last_quarter(probe):
    # 8 images x 20 iterations in 2 s = 80 images/s; an epoch of 1512 images is 18.9 s + 3 s of epoch overhead;
    # (390 - 30) s / 21.9 s = 16 epochs
    ips, epochs, step = probe.probe_schedule(fake_log(1518, [9.0, 2.5, 2.0]), 390, bs=8)
    assert ips == pytest.approx(80.0)
    assert epochs == 16 and step == 12
    decays = [e for e in range(1, epochs + 1) if lr_decay_due(e, step)]
    assert decays == [13]  # one decay: epochs 13-16 (a quarter) at the lower lr


def test_twelve_epochs_get_the_gpu_jobs_default_decay(probe):
    # (304 - 30) s / 21.9 s = 12 epochs: decayed for epochs 10-12, as the default --epochs 12 --lr_decay_step 9
    assert probe.probe_schedule(fake_log(1518, [9.0, 2.0]), 304, bs=8)[1:] == (12, 9)


def test_flags_mode_prints_only_the_flags(probe, tmp_path, capsys):
    log = tmp_path / 'probe.log'
    log.write_text(fake_log(1518, [9.0, 2.5, 2.0]))
    probe.main(['--flags', str(log), '390', '--amp --bs 8'])
    assert capsys.readouterr().out == '--epochs 16 --lr_decay_step 12\n'


def test_a_slow_machine_still_gets_one_epoch(probe):
    assert probe.probe_schedule(fake_log(1518, [1.0, 500.0]), 390, bs=8)[1:] == (1, 1)


@pytest.mark.parametrize('log', ['1518 roidb entries\n\t\t\tfg/bg=(32/96), time cost: 2.0',
                                 fake_log(1518, [9.0, 2.0]).replace('1518 roidb entries', '')])
def test_a_log_without_timings_or_size_is_refused(probe, log):
    with pytest.raises(ValueError, match='roidb entries'):
        probe.probe_schedule(log, 390, bs=8)


def test_batch_size_is_read_from_the_train_args(probe):
    assert probe.batch_size('--amp --bs 8 --nw 8') == 8
    assert probe.batch_size('--amp --nw 8') == 1
