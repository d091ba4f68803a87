"""mlof.adapt: the caller's model untouched, the loss falls on a real pair, parameter selection, the guard,
input forms and modes."""
from __future__ import annotations

import math

import pytest
import torch

import backbones
import mlof
from mlof.losses import LossOutput
from tests.meta_helpers import ToyFlowNet, shifted_pair, sintel_clip

# Small tensors: one intra-op thread is 10-30x faster than two on a loaded machine (see single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def small_raft():
    torch.manual_seed(0)
    return backbones.build("raft_small")


@pytest.fixture(scope="module")
def sintel_result(small_raft, flow_samples, single_thread_module):
    """raft_small (random init) adapted on alley_1 2->3 at 64x96: shared by several tests."""
    frames = sintel_clip(flow_samples, (64, 96), frames=(2, 3))
    model = small_raft
    model.train()  # the caller's mode must survive
    before = _state(model)
    # module-scoped: runs before the function-scoped single_thread fixture, hence single_thread_module
    result = mlof.adapt(model, frames, preset="release-optimizer", steps=2, iters=2, optimizer="adam", lr=3e-5,
                        schedule=None)
    return model, before, result


def test_loss_falls_on_sintel_pair(sintel_result):
    _, _, result = sintel_result
    totals = [h["total"] for h in result.history]
    assert len(totals) == 3 and all(math.isfinite(t) for t in totals)
    assert totals[-1] < totals[1] < 0.95 * totals[0]  # a clear, steady drop, not noise
    first = result.history[0]
    assert {"photo_l1", "photo_ssim", "smooth2", "keep_close", "lr", "grad_norm", "guard"} <= set(first)
    assert first["guard"] == "start" and first["keep_close"] == 0.0 and first["grad_norm"] > 0
    assert result.history[-1]["keep_close"] > 0  # the weights moved away from theta_fixed
    assert result.steps_taken == 2 and not result.rolled_back
    flow, before = result.flow, result.flows_before[0]
    assert flow.shape == before.shape == (1, 2, 64, 96)
    assert (flow - before).abs().max() > 1e-4


def test_input_model_untouched(sintel_result):
    model, before, result = sintel_result
    assert _same_state(before, model.state_dict())
    assert model.training  # mode preserved
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert result.model is not model
    assert result.model.training  # the copy mirrors the caller's mode
    assert not _same_state(before, result.model.state_dict())


def test_untouched_after_exception_inside_adapt():
    model = ToyFlowNet().train()
    model.encoder[0].weight.requires_grad_(False)
    before = _state(model)

    class Exploding(torch.nn.Module):
        calls = 0

        def forward(self, img1, img2, flow_fw, flow_bw=None, **extras):
            Exploding.calls += 1
            if Exploding.calls > 2:
                raise RuntimeError("boom inside the loss")
            total = (flow_fw - 2).abs().mean()
            return LossOutput(total, {"l1": total})

    with pytest.raises(RuntimeError, match="boom"):
        mlof.adapt(model, shifted_pair(), recipe=Exploding(), steps=3, keep_close_weight=0.0)
    assert Exploding.calls == 3
    assert _same_state(before, model.state_dict())
    assert model.training and not model.encoder[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_update_block_only_leaves_encoders_bit_identical(small_raft):
    img1, img2 = shifted_pair(64, 64, shift=3)
    result = mlof.adapt(small_raft, (img1, img2), params="update_block", steps=1, iters=2, optimizer="adam",
                        lr=1e-3, schedule=None, guard=False, keep="last", corr="ondemand")
    assert result.model.corr == "ondemand" != small_raft.corr  # the option reaches the copy only
    groups = backbones.param_groups(small_raft)
    orig, new = small_raft.state_dict(), result.model.state_dict()
    for name in groups["feature_encoder"] + groups["context_encoder"]:
        assert torch.equal(orig[name], new[name]), name
    assert any(not torch.equal(orig[n], new[n]) for n in groups["update_block"])


def test_guard_absurd_learning_rate_returns_unadapted_prediction(small_raft):
    img1, img2 = shifted_pair(64, 64, shift=3)
    result = mlof.adapt(small_raft, (img1, img2), steps=3, iters=2, lr=1e6, optimizer="sgd", schedule=None)
    assert result.rolled_back and result.steps_taken == 0
    assert any(a.startswith("rollback") for a in result.guard_actions)
    assert torch.isfinite(result.flow).all()
    assert torch.equal(result.flow, result.flows_before[0])
    assert _same_state(small_raft.state_dict(), result.model.state_dict())


def test_guard_skips_nan_gradient_injected_by_hook():
    model = ToyFlowNet()
    handle = model.update_block.register_full_backward_hook(
        lambda m, gin, gout: tuple(None if g is None else torch.full_like(g, float("nan")) for g in gin))
    try:
        result = mlof.adapt(model, shifted_pair(), steps=2, optimizer="adam", lr=1e-2, schedule=None)
    finally:
        handle.remove()
    skipped = [h for h in result.history if "skip:nonfinite-gradient" in str(h.get("guard"))]
    assert len(skipped) == 2 and all(math.isnan(h["grad_norm"]) for h in skipped)
    assert torch.isfinite(result.flow).all() and torch.equal(result.flow, result.flows_before[0])


def test_best_state_is_kept_by_default_and_guard_can_be_off():
    img1, img2 = shifted_pair()
    opts = dict(preset="release-optimizer", steps=4, optimizer="adam", lr=0.02, schedule=None)
    best = mlof.adapt(ToyFlowNet(), (img1, img2), **opts)
    totals = [h["total"] for h in best.history]
    assert best.steps_taken == min(range(len(totals)), key=totals.__getitem__) < 4  # step 4 was worse
    last = mlof.adapt(ToyFlowNet(), (img1, img2), keep="last", **opts)
    assert last.steps_taken == 4 and not torch.equal(last.flow, best.flow)
    # lr 0.05 diverges (objective x1.6 after one step): rolled back with the guard, kept without it.
    wild = dict(opts, lr=0.05)
    assert mlof.adapt(ToyFlowNet(), (img1, img2), **wild).rolled_back
    off = mlof.adapt(ToyFlowNet(), (img1, img2), guard=False, keep="last", **wild)
    assert not off.rolled_back and off.steps_taken == 4


def test_frame_forms_and_modes():
    torch.manual_seed(0)
    model = ToyFlowNet()
    frames = [shifted_pair(seed=s)[0] for s in range(3)]
    joint = mlof.adapt(model, frames, steps=1, optimizer="adam", lr=1e-2, schedule=None)
    assert len(joint.flows) == 2 and joint.mode == "joint"
    video = torch.cat(frames)[None].repeat(2, 1, 1, 1, 1)  # N x T x 3 x H x W
    batched = mlof.adapt(model, video, steps=1, optimizer="adam", lr=1e-2, schedule=None)
    assert [f.shape for f in batched.flows] == [(2, 2, 32, 48)] * 2
    pairwise = mlof.adapt(model, [f[0] for f in frames], mode="pairwise", steps=1, optimizer="adam", lr=1e-2,
                          schedule=None)
    assert [h["pair"] for h in pairwise.history] == [0, 0, 1, 1]
    numpy_pair = [f[0].permute(1, 2, 0).to(torch.uint8).numpy() for f in frames[:2]]
    assert mlof.adapt(model, numpy_pair, steps=0).flow.shape == (1, 2, 32, 48)


def test_working_size_rule():
    from mlof.meta.frames import working_size
    assert working_size((436, 1024), 256 * 512) == (236, 555)      # Sintel: one factor, aspect kept
    assert working_size((375, 1242), 256 * 512) == (199, 659)      # KITTI
    assert working_size((256, 512), 256 * 512) == (256, 512)       # at the limit: as given
    assert working_size((1080, 1920), None) == (1080, 1920)
    h, w = working_size((1080, 1920), 256 * 512)
    assert abs(h * w - 256 * 512) < 0.01 * 256 * 512 and abs(w / h - 1920 / 1080) < 0.01


class _ConstantFlowNet(ToyFlowNet):
    """ToyFlowNet that records its input sizes and predicts the flow (u, v) = (3, -2) px everywhere."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, image1, image2, iters=12, return_all=False):
        self.sizes.append(tuple(image1.shape[-2:]))
        out = super().forward(image1, image2, iters, return_all)
        flow = out.flow * 0 + torch.tensor([3.0, -2.0]).view(1, 2, 1, 1)
        return type(out)(flow=flow, flows=[flow])


def test_large_frames_adapt_and_predict_at_the_working_size():
    """Frames over max_pixels: every forward runs at the working size, the flows come back at the frames' size
    with the vectors rescaled to its grid; under it (or with max_pixels=None) nothing is resized."""
    torch.manual_seed(0)
    pair = shifted_pair(64, 128)
    net = _ConstantFlowNet()
    result = mlof.adapt(net, pair, steps=1, max_pixels=4096)
    work = (45, 91)                                    # 64 x 128 shrunk by sqrt(1/2), sides rounded
    assert result.model.sizes and set(result.model.sizes) == {work} and result.working_size == work
    for flow in (result.flow, result.flows_before[0]):
        assert flow.shape == (1, 2, 64, 128)
        torch.testing.assert_close(flow[0, :, 10, 20], torch.tensor([3.0 * 128 / 91, -2.0 * 64 / 45]))
    whole = mlof.adapt(_ConstantFlowNet(), pair, steps=1, max_pixels=None)
    assert set(whole.model.sizes) == {(64, 128)} and whole.working_size is None
    torch.testing.assert_close(whole.flow[0, :, 10, 20], torch.tensor([3.0, -2.0]))
    assert set(mlof.adapt(_ConstantFlowNet(), pair, steps=0).model.sizes) == {(64, 128)}   # under the default
    cropped = mlof.adapt(_ConstantFlowNet(), pair, steps=1, max_pixels=4096, crop=(32, 48))
    assert (32, 48) in cropped.model.sizes and (64, 128) in cropped.model.sizes and work not in cropped.model.sizes
    with pytest.raises(ValueError, match="max_pixels"):
        mlof.adapt(net, pair, max_pixels=100)


def test_resize_frame_averages_when_shrinking():
    from mlof.meta.frames import resize_frame
    img = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    small = resize_frame(img, (2, 2))
    torch.testing.assert_close(small[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert resize_frame(img, (4, 4)) is img
    assert resize_frame(img, (8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("frames, match", [
    ([torch.rand(3, 32, 32)], "at least 2"),
    ([torch.rand(3, 32, 32), torch.rand(3, 32, 40)], "same size"),
    ([torch.rand(4, 32, 32), torch.rand(4, 32, 32)], "3 x H x W"),
    ([torch.rand(3, 32, 32), torch.full((3, 32, 32), float("nan"))], "NaN"),
    ("frames.png", "pair"),
])
def test_bad_frames_raise_value_error(frames, match):
    with pytest.raises(ValueError, match=match):
        mlof.adapt(ToyFlowNet(), frames)


def test_bad_options_raise_value_error():
    pair = shifted_pair()
    with pytest.raises(ValueError, match="unknown adapt option"):
        mlof.adapt(ToyFlowNet(), pair, stpes=3)
    with pytest.raises(ValueError, match="optimizer"):
        mlof.adapt(ToyFlowNet(), pair, optimizer="lbfgs")
    with pytest.raises(ValueError, match="mode"):
        mlof.adapt(ToyFlowNet(), pair, mode="sometimes")
    with pytest.raises(ValueError, match="params"):
        mlof.adapt(ToyFlowNet(), pair, params="context_encoder")


def test_defaults_and_the_release_optimizer_preset():
    from mlof.meta.engine import adapt_optimizer
    from mlof.meta.settings import AdaptSettings, adapt_settings
    s = AdaptSettings()   # mlof's measured default (README "Adaptation")
    assert (s.steps, s.optimizer, s.resolved_lr(), s.resolved_weight_decay(), s.schedule, s.clip, s.recipe, s.iters,
            s.adapt_iters, s.bn, s.max_pixels) == (32, "adam", 1e-4, 0.0, "constant", 1.0, "smurf", 12, 1, "eval",
                                                   256 * 512)
    opt, sched = adapt_optimizer([torch.nn.Parameter(torch.zeros(1))], s)
    assert isinstance(opt, torch.optim.Adam) and sched is None
    old = adapt_settings(preset="release-optimizer")   # mlof 0.1's default: the release's optimizer, full frames
    assert (old.steps, old.optimizer, old.resolved_lr(), old.clip, old.recipe, old.iters, old.adapt_iters,
            old.bn, old.max_pixels) == (3, "adamw", 1e-5, 1.0, "mlof", 12, None, "eval", None)
    assert adapt_settings(preset="release").max_pixels is None   # the release adapts on its crops as given
    full = adapt_settings(preset="full-resolution")                # the previous default
    assert (full.steps, full.max_pixels, full.recipe, full.lr) == (8, None, "smurf", 1e-4)
    opt, sched = adapt_optimizer([torch.nn.Parameter(torch.zeros(1))], old)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 1e-5
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)


@pytest.mark.slow
@pytest.mark.parametrize("name", backbones.available())
def test_every_backbone_adapts_one_step(name):
    torch.manual_seed(0)
    model = backbones.build(name)
    img1, img2 = shifted_pair(64, 64, shift=2)
    result = mlof.adapt(model, (img1, img2), steps=1, iters=2, optimizer="adam", lr=1e-5, schedule=None)
    assert result.flow.shape == (1, 2, 64, 64) and torch.isfinite(result.flow).all()
    assert len(result.history) == 2 and math.isfinite(result.history[0]["total"])
    assert result.history[0]["grad_norm"] > 0


# ------------------------------------------------------------------------------------- the release protocol
def test_release_preset_adapts_on_seeded_crops_in_train_mode_and_predicts_in_eval(flow_samples):
    frames = sintel_clip(flow_samples, (96, 128), frames=(2, 3))
    torch.manual_seed(0)
    model = backbones.build("raft").eval()   # batch norm in its context encoder, unlike raft_small
    before = _state(model)
    opts = dict(preset="release", crop=(64, 96), iters=1, lr=1e-4)
    res = mlof.adapt(model, frames, **opts)
    assert _same_state(before, _state(model)) and not model.training          # caller untouched
    crops = [h for h in res.history if h.get("guard") == "crop"]
    assert len(crops) == 3 and all(h["crop"] == (64, 96) for h in crops)
    assert res.settings.bn == "train" and res.settings.bn_predict == "eval" and not res.settings.guard
    # batch norm ran in train mode while adapting: the copy's running statistics moved (the release's side
    # effect), the returned flow is the adapted copy's eval-mode prediction on the full frame
    key = "cnet.norm1.running_mean"
    assert not torch.equal(res.model.state_dict()[key], before[key])
    with torch.no_grad():
        a, b = (f if f.dim() == 4 else f[None] for f in frames)
        again = res.model.eval()(a, b, iters=1).flow
    assert torch.allclose(again, res.flow, atol=1e-5)
    assert not torch.equal(res.flow, res.flows_before[0])
    # seeded: the same seed gives the same result, another seed other crops
    assert torch.equal(mlof.adapt(model, frames, **opts).flow, res.flow)
    other = mlof.adapt(model, frames, **opts, seed=5)
    assert not torch.equal(other.flow, res.flow)


def test_presets_are_validated_and_overridable():
    from mlof.meta.settings import PRESETS, AdaptSettings, adapt_settings
    s = adapt_settings({"preset": "release-kitti", "steps": 5})
    assert s.steps == 5 and s.augment == "mlof-release-kitti" and s.on_crops
    assert adapt_settings({"preset": "mlof"}) == AdaptSettings() == adapt_settings()
    assert adapt_settings({"preset": "release"}, steps=2) == adapt_settings(preset="release", steps=2)
    assert {"mlof", "release", "release-sintel", "release-kitti"} <= set(PRESETS)
    with pytest.raises(ValueError, match="preset must be one of"):
        adapt_settings({"preset": "paper"})
    with pytest.raises(ValueError, match="crop"):
        AdaptSettings(crop=(0, 5))
    with pytest.raises(ValueError, match="preset"):
        AdaptSettings(augment="nope")


def test_bn_predict_scores_before_and_after_in_the_predict_mode(flow_samples):
    # Full frames, BN in train mode while adapting, eval mode for the returned flows: before and after must both
    # be the eval-mode predictions (of the start and of the adapted weights).
    frames = sintel_clip(flow_samples, (96, 128), frames=(2, 3))
    torch.manual_seed(0)
    model = backbones.build("raft").eval()
    res = mlof.adapt(model, frames, steps=1, iters=1, bn="train", bn_predict="eval", lr=1e-4, guard=False)
    a, b = (f if f.dim() == 4 else f[None] for f in frames)
    with torch.no_grad():
        start = model(a, b, iters=1).flow
        adapted = res.model.eval()(a, b, iters=1).flow
    assert torch.allclose(res.flows_before[0], start, atol=1e-5)
    assert torch.allclose(res.flow, adapted, atol=1e-5)
