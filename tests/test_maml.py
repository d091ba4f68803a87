"""MAML / Meta-SGD core: exact meta-gradients against finite differences, first-order theory, parameter
selection, buffer isolation, no mutation of the wrapped model."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlof.meta.maml import MAML, MetaSGD
from mlof.meta.params import select_parameters

pytestmark = pytest.mark.usefixtures("single_thread")

LR = 0.3


def _net() -> nn.Module:
    # Small conv + MLP net with smooth non-linearities so second derivatives are informative.
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def _data():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(5, 2, generator=g, dtype=torch.float64)
    xq = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    yq = torch.randn(6, 2, generator=g, dtype=torch.float64)
    return xs, ys, xq, yq


def _meta_loss(maml, data, steps=2, inner=None):
    xs, ys, xq, yq = data
    learner = maml.clone()
    fwd = inner or (lambda l, x: l(x))
    for _ in range(steps):
        learner.adapt(((fwd(learner, xs) - ys) ** 2).mean())
    return ((learner(xq) - yq) ** 2).mean(), learner


def _finite_difference(maml, tensors, data, eps=1e-6):
    """Central differences of the meta-loss w.r.t. every element of ``tensors`` (float64)."""
    out = []
    for t in tensors:
        g = torch.zeros_like(t)
        flat = t.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = _meta_loss(maml, data)[0].item()
            flat[i] = old - eps
            minus = _meta_loss(maml, data)[0].item()
            flat[i] = old
            g.view(-1)[i] = (plus - minus) / (2 * eps)
        out.append(g)
    return out


def _rel(a, b):
    a = torch.cat([x.reshape(-1) for x in a])
    b = torch.cat([x.reshape(-1) for x in b])
    return ((a - b).norm() / b.norm()).item()


def test_second_order_matches_finite_differences():
    net, data = _net(), _data()
    maml = MAML(net, lr=LR, first_order=False)
    loss, _ = _meta_loss(maml, data)
    analytic = torch.autograd.grad(loss, list(net.parameters()))
    numeric = _finite_difference(maml, list(net.parameters()), data)
    assert _rel(analytic, numeric) < 1e-6


def test_first_order_is_gradient_at_adapted_point_and_differs_from_exact():
    net, data = _net(), _data()
    xs, ys, xq, yq = data
    exact = torch.autograd.grad(_meta_loss(MAML(net, LR), data)[0], list(net.parameters()))
    fo_loss, learner = _meta_loss(MAML(net, LR, first_order=True), data)
    fo = torch.autograd.grad(fo_loss, list(net.parameters()))
    # Closed form of FOMAML: the query-loss gradient evaluated at the adapted weights, Jacobian ignored.
    adapted = learner.to_module()
    closed = torch.autograd.grad(((adapted(xq) - yq) ** 2).mean(), list(adapted.parameters()))
    assert _rel(fo, closed) < 1e-12
    assert _rel(fo, exact) > 1e-2  # the dropped second-order term is significant here


def test_first_order_inner_forward_is_exact_and_frees_frozen_paths():
    net, data = _net(), _data()
    maml = MAML(net, LR, first_order=True, params=["5.weight", "5.bias"])
    plain = torch.autograd.grad(_meta_loss(maml, data)[0], list(net.parameters()))
    detached = torch.autograd.grad(_meta_loss(maml, data, inner=lambda l, x: l.inner_forward(x))[0],
                                   list(net.parameters()))
    assert _rel(detached, plain) < 1e-12


def test_meta_sgd_learning_rate_gradients_match_finite_differences():
    net, data = _net(), _data()
    msgd = MetaSGD(net, lr=LR, first_order=False)
    loss, _ = _meta_loss(msgd, data)
    analytic = torch.autograd.grad(loss, list(msgd.lrs))
    numeric = _finite_difference(msgd, list(msgd.lrs), data)
    assert _rel(analytic, numeric) < 1e-6
    # First order: the learning rates still get a gradient.
    fo = MetaSGD(net, lr=LR, first_order=True)
    _meta_loss(fo, data)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fo.lrs)


def test_params_selection_frozen_parts_do_not_adapt():
    net, data = _net(), _data()
    maml = MAML(net, LR, params=lambda n, p: n.startswith("5."))
    assert maml.adapted_names == ["5.weight", "5.bias"]
    loss, learner = _meta_loss(maml, data)
    named = dict(net.named_parameters())
    for n, t in learner.named_parameters():
        if n.startswith("5."):
            assert not torch.equal(t, named[n])
        else:
            assert t is named[n]  # untouched: no inner update at all
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())  # the outer gradient still reaches them
    net[0].weight.requires_grad_(False)
    assert "0.weight" not in MAML(net, LR).adapted_names


def test_select_parameters_errors_and_forms():
    net = _net()
    assert select_parameters(net, "all") == [n for n, _ in net.named_parameters()]
    assert select_parameters(net, ["3.bias", "0.weight"]) == ["0.weight", "3.bias"]
    with pytest.raises(ValueError, match="not a parameter group"):
        select_parameters(net, "update_block")
    with pytest.raises(ValueError, match="unknown"):
        select_parameters(net, ["nope"])
    with pytest.raises(ValueError, match="selects no parameter"):
        select_parameters(net, lambda n, p: False)


def test_wrapped_model_is_never_mutated():
    net, data = _net(), _data()
    before = copy.deepcopy(net.state_dict())
    maml = MAML(net, LR)
    loss, _ = _meta_loss(maml, data, steps=3)
    loss.backward()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _bn_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))


def test_buffers_copy_policy_never_leaks_between_tasks():
    net = _bn_net().train()
    mean0 = net[1].running_mean.clone()
    maml = MAML(net, 0.1)
    x = torch.randn(8, 3) * 3 + 2
    a = maml.clone()
    a.adapt(a(x).pow(2).mean())
    a(x)
    assert not torch.equal(a.buffers["1.running_mean"], mean0)      # the task updated its own copy
    assert int(a.buffers["1.num_batches_tracked"]) == 2
    assert torch.equal(net[1].running_mean, mean0)                   # ... not the model's
    b = maml.clone()
    assert torch.equal(b.buffers["1.running_mean"], mean0)           # ... nor the next task's
    assert a.state_dict()["1.running_mean"].equal(a.buffers["1.running_mean"])


def test_buffers_shared_policy_reproduces_release_side_effect():
    net = _bn_net().train()
    mean0 = net[1].running_mean.clone()
    learner = MAML(net, 0.1, buffers="shared").clone()
    learner(torch.randn(8, 3) + 2)
    assert not torch.equal(net[1].running_mean, mean0)


def test_call_other_method_uses_fast_weights():
    class Net(nn.Linear):
        def double_out(self, x):
            return 2 * self(x)

    net = Net(2, 1)
    learner = MAML(net, 1.0).clone()
    x = torch.ones(1, 2)
    learner.adapt(learner(x).sum())
    assert torch.allclose(learner.call("double_out", x), 2 * learner(x))
    assert not torch.allclose(learner(x), net(x))
    with pytest.raises(ValueError, match="no method"):
        learner.call("nope", x)


def test_bad_arguments():
    net = _net()
    with pytest.raises(ValueError, match="lr"):
        MAML(net, float("nan"))
    with pytest.raises(ValueError, match="buffers"):
        MAML(net, 0.1, buffers="weird")
    learner = MAML(net, 0.1).clone()
    with pytest.raises(ValueError, match="scalar"):
        learner.adapt(torch.ones(2, requires_grad=True))


def test_higher_backend_matches_func_backend():
    pytest.importorskip("higher")
    net, data = _net(), _data()
    ref = torch.autograd.grad(_meta_loss(MAML(net, LR), data)[0], list(net.parameters()))
    got = torch.autograd.grad(_meta_loss(MAML(net, LR, backend="higher"), data)[0], list(net.parameters()))
    assert _rel(got, ref) < 1e-10
    fo_ref = torch.autograd.grad(_meta_loss(MAML(net, LR, first_order=True), data)[0], list(net.parameters()))
    fo = torch.autograd.grad(_meta_loss(MAML(net, LR, first_order=True, backend="higher"), data)[0],
                             list(net.parameters()))
    assert _rel(fo, fo_ref) < 1e-10


def test_from_learn2learn_reads_the_wrapper():
    from mlof.meta import from_learn2learn

    class FakeL2LMetaSGD(nn.Module):  # the attributes learn2learn's MetaSGD holds
        def __init__(self, module):
            super().__init__()
            self.module, self.first_order = module, True
            self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, 0.5)) for p in module.parameters()])

        lr = 0.5

    net = _net()
    ours = from_learn2learn(FakeL2LMetaSGD(net))
    assert isinstance(ours, MetaSGD) and ours.module is net and ours.first_order
    assert ours.buffer_policy == "shared" and all(torch.all(p == 0.5) for p in ours.lrs)
    plain = from_learn2learn(type("W", (), {"module": net, "lr": 0.1, "first_order": False})())
    assert type(plain) is MAML and plain.lr == 0.1 and not plain.first_order
    with pytest.raises(ValueError, match="not a learn2learn"):
        from_learn2learn(object())


# ---------------------------------------------------------------------------------------------- tied parameters
class _TiedBlock(nn.Module):
    """Like the official RAFT/GMA residual block: ``norm`` is also ``down.1`` (one module, two names), and
    ``head`` shares its weight tensor with ``tail`` (a parameter tied across two modules)."""

    def __init__(self, tied: bool):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)
        if tied:
            self.down = nn.Sequential(self.conv, self.norm)   # registered after `norm`: canonical name is norm.*
            self.tail = nn.Linear(3, 3, bias=False)
            self.tail.weight = self.head.weight
        self.tied = tied

    def forward(self, x):
        y = self.down(x) if self.tied else self.norm(self.conv(x))
        z = torch.tanh(self.head(y.mean((2, 3))))
        w = self.tail(z) if self.tied else nn.functional.linear(z, self.head.weight)
        return self.out(torch.tanh(w))


def _tied_meta_grads(net: nn.Module, maml_cls, backend: str = "func", first_order: bool = False):
    g = torch.Generator().manual_seed(4)
    xs, xq = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    kwargs = {} if maml_cls is MetaSGD else {"backend": backend}
    maml = maml_cls(net.train(), 0.1, first_order=first_order, **kwargs)
    learner = maml.clone()
    for _ in range(2):
        learner.adapt((learner(xs) ** 2).mean())
    (learner(xq) ** 2).mean().backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()}


@pytest.mark.parametrize("maml_cls,backend,first_order", [(MAML, "func", False), (MAML, "func", True),
                                                          (MetaSGD, "func", False), (MAML, "higher", False)])
def test_tied_parameters_adapt_and_get_meta_gradients(maml_cls, backend, first_order):
    if backend == "higher":
        pytest.importorskip("higher")
    tied, plain = _TiedBlock(True), _TiedBlock(False)
    assert sorted(n for n, _ in tied.named_parameters()) == sorted(n for n, _ in plain.named_parameters())
    got = _tied_meta_grads(tied, maml_cls, backend, first_order)
    want = _tied_meta_grads(plain, maml_cls, backend, first_order)
    for name, g in want.items():
        assert got[name] is not None, f"{name} got no meta-gradient"
        assert torch.allclose(got[name], g, rtol=1e-5, atol=1e-7), name
    # The wrapped network still holds its own leaf parameters under both names afterwards.
    assert isinstance(tied.norm.weight, nn.Parameter) and tied.down[1].weight is tied.norm.weight
    assert isinstance(tied.tail.weight, nn.Parameter) and tied.tail.weight is tied.head.weight
