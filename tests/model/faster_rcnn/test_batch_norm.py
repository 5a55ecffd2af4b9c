"""lib/model/faster_rcnn/batch_norm.py: a frozen BatchNorm computes what nn.BatchNorm2d computes, keeps no copy of
its input for the backward, and follows changes of its parameters and statistics."""
import pytest
import torch
from torch import nn

from lib.model.faster_rcnn.batch_norm import BatchNorm2d


def random_bn(cls, channels=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = cls(channels).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g, dtype=dtype) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g, dtype=dtype))
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=dtype))
        bn.running_var.copy_(torch.rand(channels, generator=g, dtype=dtype) * 3 + 0.1)
    return bn


def freeze(bn):
    bn.eval()
    for p in bn.parameters():
        p.requires_grad = False
    return bn


def saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for the backward of fn()."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def test_frozen_forward_and_input_gradient_equal_batch_norms():
    ours, ref = freeze(random_bn(BatchNorm2d)), freeze(random_bn(nn.BatchNorm2d))
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    y_ours, = torch.autograd.grad(ours(x), x, grad)
    y_ref, = torch.autograd.grad(ref(x), x, grad)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-12, atol=1e-12)


def test_frozen_forward_keeps_no_copy_of_its_input():
    x = torch.randn(2, 6, 32, 32, dtype=torch.float64, requires_grad=True)
    ours, _ = saved_bytes(lambda: freeze(random_bn(BatchNorm2d))(x))
    ref, _ = saved_bytes(lambda: freeze(random_bn(nn.BatchNorm2d))(x))
    assert ref >= x.numel() * 8  # nn.BatchNorm2d keeps its input
    assert ours == 6 * 8  # the [C] scale alone


def test_the_cached_affine_follows_new_statistics_devices_and_dtypes():
    bn = freeze(random_bn(BatchNorm2d))
    x = torch.randn(1, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bn(x)
    other = random_bn(nn.BatchNorm2d, seed=1)
    bn.load_state_dict(other.state_dict())  # in-place copies
    torch.testing.assert_close(bn(x), freeze(other)(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        bn.running_var.mul_(4)
        other.running_var.mul_(4)
    torch.testing.assert_close(bn(x), other(x), rtol=1e-12, atol=1e-12)
    bn.float()
    x32 = x.detach().float().requires_grad_()
    y = bn(x32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, other.float()(x32), rtol=1e-6, atol=1e-6)
    y16 = bn(x32.detach().bfloat16().requires_grad_())  # autocast's dtype stays
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('case', ['training', 'trainable affine', 'no grad', 'input without grad'])
def test_every_other_case_is_batch_norm_itself(case):
    ours, ref = random_bn(BatchNorm2d, dtype=torch.float32), random_bn(nn.BatchNorm2d, dtype=torch.float32)
    for bn in (ours, ref):
        if case != 'training':
            bn.eval()
        if case not in ('training', 'trainable affine'):
            for p in bn.parameters():
                p.requires_grad = False
    x = torch.randn(4, 6, 5, 5, requires_grad=case != 'input without grad')
    with torch.set_grad_enabled(case != 'no grad'):
        assert torch.equal(ours(x), ref(x))  # the same kernel: bit for bit
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=0)  # training updates both
    assert list(ours.state_dict()) == list(ref.state_dict())
