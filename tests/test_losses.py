"""Unit tests of mlof.losses: exact values on constructed inputs, gradchecks, edge cases, frozen constants."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlof import losses as L
from mlof.losses import LossInputError

RECIPE_NAMES = ("mlof", "arflow", "uflow", "smurf", "upflow")
D64 = torch.float64


# Tiny tensors: one intra-op thread avoids OpenMP hand-off costs that dominate on a busy machine.
pytestmark = pytest.mark.usefixtures("single_thread_module")


def _smooth_images(n: int = 1, h: int = 12, w: int = 14, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Smooth random 0..255 images (blurred noise), so bilinear warps have well-defined gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h + 4, w + 4, generator=g, dtype=dtype)
    x = F.avg_pool2d(x, 3, 1)[..., 1:h + 1, 1:w + 1]
    return (x - x.min()) / (x.max() - x.min()) * 255.0


def _rand_flow(n: int, h: int, w: int, scale: float = 1.5, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, h, w, generator=g, dtype=dtype) * 2 - 1) * scale + 0.37  # away from integers


# ------------------------------------------------------------------------------------------------- warp
def test_warp_zero_flow_is_identity_and_integer_shift_is_a_roll():
    img = _smooth_images(2, 10, 12)
    out, mask = L.warp(img, torch.zeros(2, 2, 10, 12))
    assert torch.allclose(out, img, atol=1e-4) and bool((mask == 1).all())
    flow = torch.zeros(2, 2, 10, 12)
    flow[:, 0] = 3.0  # sample 3 px to the right
    out, mask = L.warp(img, flow)
    assert torch.allclose(out[..., :, :-3], img[..., :, 3:], atol=1e-4)
    assert bool((mask[..., :, :-3] == 1).all()) and bool((mask[..., :, -3:] == 0).all())
    # border padding replicates the last column, zeros padding gives zeros
    assert torch.allclose(out[..., :, -1], img[..., :, -1], atol=1e-4)
    assert float(L.warp(img, flow, padding="zeros")[0][..., :, -1].abs().max()) == 0.0


def test_warp_gradcheck_and_double_backward():
    x = _smooth_images(1, 5, 6, dtype=D64).requires_grad_()
    flow = _rand_flow(1, 5, 6, 0.8, dtype=D64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: L.warp(a, b)[0], (x, flow))
    assert torch.autograd.gradgradcheck(lambda a, b: L.warp(a, b)[0], (x, flow))


def test_warp_rejects_bad_input():
    with pytest.raises(ValueError, match="flow"):
        L.warp(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        L.warp(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8), padding="wrap")
    assert issubclass(LossInputError, ValueError)


def test_warp_huge_flow_is_finite():
    x = _smooth_images(1, 6, 7).requires_grad_()
    flow = torch.full((1, 2, 6, 7), 1e12, requires_grad=True)
    out, mask = L.warp(x, flow)
    out.sum().backward()
    assert torch.isfinite(out).all() and float(mask.sum()) == 0
    assert torch.isfinite(x.grad).all() and torch.isfinite(flow.grad).all()


# ------------------------------------------------------------------------------------------- occlusion
def _naive_range_map(flow: torch.Tensor) -> torch.Tensor:
    """Pixel loop: each source pixel deposits bilinear weights on the 4 integer neighbours of its target."""
    n, _, h, w = flow.shape
    out = torch.zeros(n, 1, h, w, dtype=flow.dtype)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                tx, ty = x + float(flow[b, 0, y, x]), y + float(flow[b, 1, y, x])
                x0, y0 = math.floor(tx), math.floor(ty)
                for xi, wx in ((x0, 1 - (tx - x0)), (x0 + 1, tx - x0)):
                    for yi, wy in ((y0, 1 - (ty - y0)), (y0 + 1, ty - y0)):
                        if 0 <= xi < w and 0 <= yi < h:
                            out[b, 0, yi, xi] += wx * wy
    return out


def test_range_map_matches_pixel_loop_and_zero_flow_gives_ones():
    flow = _rand_flow(2, 6, 7, 2.0, dtype=D64)
    assert torch.allclose(L.range_map(flow), _naive_range_map(flow), atol=1e-12)
    assert torch.allclose(L.range_map(torch.zeros(1, 2, 5, 6)), torch.ones(1, 1, 5, 6))


def test_range_map_occlusion_of_a_translation_and_soft_gradcheck():
    bw = torch.zeros(1, 2, 6, 8)
    bw[:, 0] = -2.0  # frame-2 pixels come from 2 px to the left: the last 2 columns of frame 1 are not reached
    occ = L.occlusion_range_map(bw, threshold=0.2)
    assert bool((occ[..., :, -2:] == 1).all()) and bool((occ[..., :, :-2] == 0).all())
    flow = _rand_flow(1, 4, 5, 0.7, dtype=D64).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: L.occlusion_range_map(f, soft=True), (flow,))
    out_of_frame = torch.full((1, 2, 5, 6), 50.0)
    assert bool((L.occlusion_range_map(out_of_frame) == 1).all())


def test_occlusion_fb_constants_and_behaviour():
    fw = torch.zeros(1, 2, 8, 10)
    fw[:, 0] = 2.0
    bw = -fw
    occ = L.occlusion_fb(fw, bw)
    assert float(occ[..., :, :-2].sum()) == 0  # consistent where the target is inside
    assert bool((occ[..., :, -2:] == 1).all())  # target leaves the frame: zero-padded bw -> inconsistent
    bad = L.occlusion_fb(fw, torch.zeros_like(bw))  # |f+b|^2 = 4 > 0.01 * 4 + 0.5
    assert bool((bad == 1).all())
    # exactly at the UnFlow threshold boundary: |d|^2 = 0.6 vs 0.01*(|f|^2+|b|^2)+0.5
    f = torch.zeros(1, 2, 3, 3)
    b = torch.zeros(1, 2, 3, 3)
    b[:, 0] = math.sqrt(0.6)  # |f+b|^2 = 0.6, threshold 0.01 * 0.6 + 0.5 = 0.506
    assert bool((L.occlusion_fb(f, b, bw_is_warped=True) == 1).all())
    assert bool((L.occlusion_fb(f, b, bw_is_warped=True, alpha2=0.7) == 0).all())
    assert bool((L.occlusion_fb(f, b, bw_is_warped=True, norm="length", alpha1=0.1, alpha2=0.5) == 1).all())


def test_reverse_flow_of_translation():
    fw = torch.zeros(1, 2, 7, 9)
    fw[:, 1] = 1.0
    bw, filled = L.reverse_flow(fw)
    assert bool((filled[..., 1:, :] == 1).all()) and bool((filled[..., 0, :] == 0).all())
    assert torch.allclose(bw[:, 1, 1:], torch.full((1, 6, 9), -1.0))


# ----------------------------------------------------------------------------------------- photometric
def _release_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook E[x^2] - E[x]^2 form with count_include_pad average pooling (ARFlow's formula)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    pool = lambda t: F.avg_pool2d(t, 3, 1, 1)  # noqa: E731
    mx, my = pool(x), pool(y)
    sx, sy, sxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2))
    return ((1 - s) / 2).clamp(0, 1)


def test_ssim_matches_textbook_formula_and_is_zero_on_identical_images():
    x = _smooth_images(2, 9, 11, dtype=D64) / 255
    y = _smooth_images(2, 9, 11, dtype=D64, seed=3) / 255
    assert torch.allclose(L.ssim_3x3(x, y), _release_ssim(x, y), atol=1e-10)
    assert float(L.ssim_3x3(x, x).abs().max()) < 1e-12
    # 0..255 in float32: the release's own arithmetic (bit for bit); precision="float64" is the corrected one
    x255, y255 = (x * 255), (y * 255)
    assert torch.equal(L.ssim_3x3(x255.float(), y255.float()), _release_ssim(x255.float(), y255.float()))
    ref = _release_ssim(x255, y255)
    assert torch.allclose(L.ssim_3x3(x255.float(), y255.float(), precision="float64").double(), ref, atol=1e-6)
    assert L.ssim_3x3(x255.float(), y255.float(), precision="float64").dtype == torch.float32


def test_ssim_is_exactly_zero_where_a_mask_zeroed_the_whole_window():
    # The release multiplies both images by the non-occluded mask before SSIM: fully masked windows must give 0
    # in float32 (a mean-shifted variance would leave ~0.1 there at 0..255).
    x = _smooth_images(1, 16, 16) * 255
    y = _smooth_images(1, 16, 16, seed=2) * 255
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    d = L.ssim_3x3(x * mask, y * mask)
    assert float(d[..., 5:11, 5:11].abs().max()) == 0.0
    assert float(d[..., :2, :2].min()) > 0.0


def test_photometric_gradchecks():
    x = (_smooth_images(1, 6, 7, dtype=D64) / 255).requires_grad_()
    y = (_smooth_images(1, 6, 7, dtype=D64, seed=5) / 255).requires_grad_()
    assert torch.autograd.gradcheck(L.ssim_3x3, (x, y))
    assert torch.autograd.gradcheck(lambda a, b: L.census(a, b, patch=3, max_value=1.0), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: L.census(a, b, patch=7, max_value=1.0), (x, y))
    assert torch.autograd.gradcheck(lambda a: L.charbonnier(a - 0.3), (x,))
    assert torch.autograd.gradcheck(lambda a: L.charbonnier(a * 0.0), (x,))  # smooth at exactly 0


def test_charbonnier_census_constants():
    z = torch.zeros(3)
    assert torch.allclose(L.charbonnier(z), torch.full((3,), (1e-3 ** 2) ** 0.45))
    assert torch.allclose(L.charbonnier(torch.tensor([2.0])), torch.tensor([(4 + 1e-6) ** 0.45]))
    img = _smooth_images(1, 12, 12)
    err = L.census(img, img)
    border = L.census_border_mask(img, 7)
    assert torch.allclose(err, border * 0.01 ** 0.4)  # (0 + 0.01)^0.4 inside, 0 on the 3-px border
    assert float(border.sum()) == 6 * 6 and float(border[..., :3, :].sum()) == 0
    assert math.isclose(float(L.census(img, img, mask=torch.ones(1, 1, 12, 12))), 0.01 ** 0.4, rel_tol=1e-4)
    other = _smooth_images(1, 12, 12, seed=4)
    assert float(L.census(img, other, mask=torch.ones(1, 1, 12, 12))) > 3 * 0.01 ** 0.4
    assert float(L.l1(img, other, mask=torch.zeros(1, 1, 12, 12))) == 0.0  # empty mask -> 0, not NaN
    assert torch.allclose(L.ssim_3x3(img, other, mask=torch.ones(1, 1, 12, 12)), L.ssim_3x3(img, other).mean(),
                          rtol=1e-5)
    t = L.census_transform(img, patch=3)
    assert t.shape == (1, 9, 12, 12) and float(t[:, 4].abs().max()) == 0  # centre minus itself
    d = torch.tensor([1.0])
    assert torch.allclose(L.soft_hamming(d.view(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)), torch.tensor(1 / 1.1))


# ----------------------------------------------------------------------------------------- smoothness
@pytest.mark.parametrize("variant", ["arflow", "uflow", "upflow"])
def test_second_order_smoothness_is_zero_on_affine_flow(variant):
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(9.0), indexing="ij")
    flow = torch.stack([0.3 * xs + 0.1 * ys, -0.2 * ys])[None]
    img = _smooth_images(1, 8, 9) / 255
    val = L.edge_aware_smoothness(flow, img, order=2, edge_constant=1.0, variant=variant)
    floor = 1e-3 if variant == "uflow" else 1e-6  # robust_l1 has a floor of 1e-3 at 0
    assert 0 <= float(val) <= floor + 1e-6
    assert float(L.edge_aware_smoothness(flow, img, order=1, edge_constant=1.0, variant=variant)) > 0.01


def test_smoothness_values_on_constant_image():
    # constant image -> weights 1; flow u = x^2 / 2 has dxx = 1 everywhere, dyy = 0
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    flow = torch.stack([xs ** 2 / 2, torch.zeros_like(xs)])[None]
    img = torch.full((1, 3, 6, 7), 100.0)
    arflow = L.edge_aware_smoothness(flow, img, order=2, edge_constant=10.0, variant="arflow")
    # mean over (2 channels, x term): channel u gives 1, v gives 0 -> 0.5, / 2 -> 0.25; y term 0
    assert math.isclose(float(arflow), 0.25, rel_tol=1e-6)
    upflow = L.edge_aware_smoothness(flow, img, order=2, edge_constant=1.0, variant="upflow")
    assert math.isclose(float(upflow), 0.5, rel_tol=1e-6)


@pytest.mark.parametrize("variant,order", [("arflow", 1), ("arflow", 2), ("uflow", 1), ("uflow", 2), ("upflow", 2)])
def test_smoothness_gradcheck(variant, order):
    flow = _rand_flow(1, 6, 7, dtype=D64).requires_grad_()
    img = (_smooth_images(1, 6, 7, dtype=D64) / 255).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, i: L.edge_aware_smoothness(f, i, order=order, edge_constant=5.0, variant=variant), (flow, img))


# -------------------------------------------------------------------------------------------- recipes
EXPECTED_CONSTANTS = {
    "mlof": dict(photo_l1=0.15, photo_ssim=0.85, smooth2=75.0, photo_scale=4.0, image_scale=255.0,
                 occlusion="range_map", occ_threshold=0.2, edge_constant=10.0, smooth_variant="arflow",
                 smooth_flow_norm="none", warp_padding="border", bidirectional="mean", keep_close_weight=10.0,
                 ssim_masked_inputs=True, mask_in_frame=False, smooth_level=0),
    "arflow": dict(photo_l1=0.15, photo_ssim=0.85, smooth2=75.0, ar=0.01, photo_scale=1.0, image_scale=1.0,
                   occlusion="range_map", occ_threshold=0.2, edge_constant=10.0, smooth_flow_norm="min_hw",
                   warp_padding="border", pyramid_photo_weights=(1.0, 1.0, 1.0, 0.0), keep_close_weight=0.0),
    "uflow": dict(photo_census=1.0, smooth2=2.0, census_patch=7, edge_constant=150.0, edge_weighting="exponential",
                  occlusion="range_map_soft", smooth_level=2, smooth_variant="uflow", image_scale=1.0,
                  mask_in_frame=True, warp_padding="zeros", robust_q=0.4, robust_eps=0.01),
    "smurf": dict(photo_census=1.0, smooth2=2.0, selfsup=0.3, edge_constant=150.0, occlusion="range_map_soft",
                  smooth_level=0, fb_sigma_teacher=0.003, fb_sigma_student=0.03, image_scale=1.0),
    "upflow": dict(photo_abs_robust=1.0, photo_census=1.0, smooth1=1.0, distill=1.0, occlusion="fb_length",
                   fb_alpha1=0.1, fb_alpha2=0.5, bidirectional="sum", edge_constant=1.0, smooth_variant="upflow",
                   robust_q=0.4, robust_eps=0.01),
}


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_constants_are_frozen(name):
    constants = L.build_loss(name).constants()
    for key, value in EXPECTED_CONSTANTS[name].items():
        assert constants[key] == value, f"{name}.{key} changed: {constants[key]!r} != {value!r}"
    weights = {k: v for k, v in constants.items() if k in L.TERMS}
    expected_weights = {k: v for k, v in EXPECTED_CONSTANTS[name].items() if k in L.TERMS}
    assert weights == expected_weights, f"{name}: term set changed"
    assert constants["charbonnier_alpha"] == 0.45 and constants["charbonnier_eps"] == 1e-3
    assert constants["fb_alpha1"] == (0.1 if name == "upflow" else 0.01) and constants["fb_alpha2"] == 0.5


def test_mlof_total_is_4_photo_plus_75_smooth_and_keep_close_weight():
    loss = L.build_loss("mlof")
    assert loss.keep_close_weight == 10.0
    img1, img2 = _smooth_images(1, 10, 12), _smooth_images(1, 10, 12, seed=7)
    fw, bw = _rand_flow(1, 10, 12), _rand_flow(1, 10, 12, seed=2)
    out = loss(img1, img2, fw, bw)
    # recompute by hand with the building blocks
    photo, smooth = 0.0, 0.0
    for ref, oth, flow, back in ((img1, img2, fw, bw), (img2, img1, bw, fw)):
        noc = 1 - L.occlusion_range_map(back, 0.2)
        rec = L.warp(oth, flow)[0]
        photo += (0.15 * ((ref - rec).abs() * noc).mean() + 0.85 * L.ssim_3x3(rec * noc, ref * noc).mean()) / (
            noc.mean() + 1e-7)
        smooth += L.edge_aware_smoothness(flow, ref, order=2, edge_constant=10.0, variant="arflow")
    expected = 4 * photo / 2 + 75 * smooth / 2
    assert torch.allclose(out.total, expected, rtol=1e-5)
    assert torch.allclose(out.total, sum(out.terms.values()))
    assert set(out.terms) == {"photo_l1", "photo_ssim", "smooth2"}


def test_build_loss_dict_schema():
    loss = L.build_loss({"base": "arflow", "smooth2": 50.0, "ar": 0.0})
    assert loss.constants()["smooth2"] == 50.0 and loss.constants()["photo_ssim"] == 0.85
    custom = L.build_loss({"photo_charbonnier": 1.0, "smooth1": 0.5, "occlusion": "fb", "image_scale": 255})
    out = custom(_smooth_images(1, 8, 9), _smooth_images(1, 8, 9, seed=2), _rand_flow(1, 8, 9), _rand_flow(1, 8, 9))
    assert set(out.terms) == {"photo_charbonnier", "smooth1"}
    assert L.build_loss({"base": "mlof", "image_scale": "1"}).constants()["image_scale"] == 1.0
    assert L.build_loss({"base": "uflow", "image_range": 255}).constants()["image_scale"] == 255.0
    with pytest.raises(ValueError, match="image_scale"):
        L.build_loss({"image_scale": 2})
    with pytest.raises(ValueError, match="smooth3"):
        L.build_loss({"smooth3": 1.0})
    with pytest.raises(ValueError, match="unknown loss recipe"):
        L.build_loss("pwc")
    with pytest.raises(ValueError, match="occlusion"):
        L.build_loss({"occlusion": "magic"})
    with pytest.raises(ValueError, match="pyramid_fws"):
        L.build_loss("mlof")(_smooth_images(1, 8, 9), _smooth_images(1, 8, 9), _rand_flow(1, 8, 9),
                             pyramid_fws=[])
    with pytest.raises(ValueError, match="flow_fw"):
        L.build_loss("mlof")(_smooth_images(1, 8, 9), _smooth_images(1, 8, 9), torch.zeros(1, 2, 4, 4))


def test_mlof_recipe_gradcheck_in_the_flows():
    loss = L.build_loss("mlof")
    img1 = _smooth_images(1, 7, 8, dtype=D64)
    img2 = _smooth_images(1, 7, 8, dtype=D64, seed=4)
    fw = _rand_flow(1, 7, 8, 1.2, dtype=D64).requires_grad_()
    bw = _rand_flow(1, 7, 8, 1.2, dtype=D64, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, g: loss(img1, img2, f, g).total, (fw, bw), atol=1e-5)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipes_are_twice_differentiable(name):
    """Second-order MAML differentiates the inner gradient: it must exist and be finite."""
    img1, img2 = _smooth_images(1, 16, 18), _smooth_images(1, 16, 18, seed=3)
    fw = _rand_flow(1, 16, 18).requires_grad_()
    bw = _rand_flow(1, 16, 18, seed=4).requires_grad_()
    total = L.build_loss(name)(img1, img2, fw, bw).total
    (g_fw, g_bw) = torch.autograd.grad(total, (fw, bw), create_graph=True)
    (g_fw.pow(2).sum() + g_bw.pow(2).sum()).backward()
    assert torch.isfinite(fw.grad).all() and float(fw.grad.abs().sum()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_gradcheck_in_images_and_flows(name):
    # A soft mask with stop-gradient (UFlow/SMURF) makes the true Jacobian differ from the implemented one by
    # design; check the undetached variant (hard masks are piecewise constant and need nothing).
    loss = L.build_loss({"base": name, "detach_mask": False})
    img1 = _smooth_images(1, 9, 10, dtype=D64).requires_grad_()
    img2 = _smooth_images(1, 9, 10, dtype=D64, seed=4).requires_grad_()
    fw = _rand_flow(1, 9, 10, 1.2, dtype=D64).requires_grad_()
    bw = _rand_flow(1, 9, 10, 1.2, dtype=D64, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, f, g: loss(a, b, f, g).total, (img1, img2, fw, bw), atol=1e-5)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_forward_only_scoring_and_total_is_sum_of_terms(name):
    loss = L.build_loss(name)
    img1, img2 = _smooth_images(2, 16, 18), _smooth_images(2, 16, 18, seed=9)
    out = loss(img1, img2, _rand_flow(2, 16, 18))
    assert "noc_bw" not in out.extras and bool((out.extras["noc_fw"] <= 1).all())
    assert torch.allclose(out.total, sum(out.terms.values()))
    assert all(torch.isfinite(v) for v in out.terms.values())


def _edge_case_inputs(kind: str):
    n, h, w = 2, 16, 20
    img1, img2 = _smooth_images(n, h, w), _smooth_images(n, h, w, seed=11)
    fw, bw = _rand_flow(n, h, w), _rand_flow(n, h, w, seed=12)
    if kind == "constant_images":
        img1, img2 = torch.full_like(img1, 128.0), torch.full_like(img2, 128.0)
    elif kind == "zero_flow":
        fw, bw = torch.zeros_like(fw), torch.zeros_like(bw)
    elif kind == "constant_images_zero_flow":
        img1 = img2 = torch.zeros_like(img1)
        fw, bw = torch.zeros_like(fw), torch.zeros_like(bw)
    elif kind == "all_occluded":  # backward flows leave the frame: nothing reaches frame 1 -> mask all 0
        bw = torch.full_like(bw, 1000.0)
        fw = torch.full_like(fw, 1000.0)
    elif kind == "outside_frame":
        fw = torch.full_like(fw, -500.0)
        bw = torch.full_like(bw, 1e6)
    return img1, img2, fw, bw


@pytest.mark.parametrize("name", RECIPE_NAMES)
@pytest.mark.parametrize("kind", ["constant_images", "zero_flow", "constant_images_zero_flow", "all_occluded",
                                  "outside_frame"])
def test_edge_cases_give_finite_loss_and_gradient(name, kind):
    img1, img2, fw, bw = _edge_case_inputs(kind)
    fw.requires_grad_()
    bw.requires_grad_()
    loss = L.build_loss(name)
    extras = {}
    if name in ("upflow", "arflow"):
        extras = {"pyramid_fw": [fw[:, :, ::2, ::2] * 0.5], "pyramid_bw": [bw[:, :, ::2, ::2] * 0.5]}
    out = loss(img1, img2, fw, bw, **extras)
    out.total.backward()
    assert torch.isfinite(out.total), {k: float(v) for k, v in out.terms.items()}
    assert torch.isfinite(fw.grad).all() and torch.isfinite(bw.grad).all()
    if kind == "all_occluded" and name in ("mlof", "arflow"):
        assert float(out.extras["noc_fw"].sum()) == 0
        assert float(out.terms["photo_l1"].detach()) == 0.0


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_batched_equals_per_sample_for_identical_samples(name):
    img1, img2 = _smooth_images(1, 16, 18), _smooth_images(1, 16, 18, seed=3)
    fw, bw = _rand_flow(1, 16, 18), _rand_flow(1, 16, 18, seed=4)
    loss = L.build_loss(name)
    single = loss(img1, img2, fw, bw).total
    batch = loss(img1.repeat(3, 1, 1, 1), img2.repeat(3, 1, 1, 1), fw.repeat(3, 1, 1, 1), bw.repeat(3, 1, 1, 1)).total
    assert torch.allclose(single, batch, rtol=1e-5)


def test_half_precision_and_autocast_compute_in_float32():
    img1, img2 = _smooth_images(1, 16, 18), _smooth_images(1, 16, 18, seed=3)
    fw, bw = _rand_flow(1, 16, 18), _rand_flow(1, 16, 18, seed=4)
    loss = L.build_loss("mlof")
    ref = loss(img1, img2, fw, bw).total
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(img1, img2, fw, bw).total
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5)
    half = loss(img1.half(), img2.half(), fw.bfloat16(), bw.bfloat16()).total
    assert half.dtype == torch.float32 and torch.isfinite(half) and abs(float(half - ref)) < 0.05 * float(ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_cuda_matches_cpu(name):
    img1, img2 = _smooth_images(2, 16, 18), _smooth_images(2, 16, 18, seed=3)
    fw, bw = _rand_flow(2, 16, 18), _rand_flow(2, 16, 18, seed=4)
    loss = L.build_loss(name)
    cpu = loss(img1, img2, fw, bw).total
    gpu = loss(img1.cuda(), img2.cuda(), fw.cuda(), bw.cuda()).total
    assert torch.allclose(cpu, gpu.cpu(), rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------- flow-to-flow terms
def test_pyramid_distillation():
    final = _rand_flow(1, 8, 8, 2.0).requires_grad_()
    coarse = (F.avg_pool2d(final.detach(), 2) * 0.5).requires_grad_()
    val = L.pyramid_distillation([coarse], final)
    val.backward()
    assert final.grad is None or float(final.grad.abs().sum()) == 0  # the label is detached
    assert float(coarse.grad.abs().sum()) > 0
    exact = L.pyramid_distillation([L.resize_flow(final.detach(), (8, 8))], final.detach())
    assert math.isclose(float(exact), 2 * 0.01 ** 0.4, rel_tol=1e-5)  # 2 channels summed per masked pixel
    mask = torch.zeros(1, 1, 8, 8)
    assert float(L.pyramid_distillation([coarse], final, noc_mask=mask).detach()) == 0.0


def test_self_supervision_crop_and_masks():
    teacher = _rand_flow(1, 12, 16, 1.0, seed=3)
    box = (2, 4, 8, 8)
    student = teacher[:, :, 2:10, 4:12].clone().requires_grad_()
    val = L.self_supervision(teacher, student, crop_box=box).detach()
    assert float(val) < 2e-3  # robust_l1 floor 1e-3 where the teacher mask is 1
    wrong = L.self_supervision(teacher, torch.zeros_like(student), crop_box=box)
    assert float(wrong) > 10 * float(val)
    resized = L.crop_and_resize(teacher, box, (16, 16), is_flow=True)
    assert resized.shape == (1, 2, 16, 16)
    assert math.isclose(float(resized.mean()), 2 * float(teacher[:, :, 2:10, 4:12].mean()), rel_tol=0.05)
    teacher_g = teacher.clone().requires_grad_()
    L.self_supervision(teacher_g, student, crop_box=box, teacher_flow_bw=-teacher,
                       student_flow_bw=torch.zeros_like(student)).backward()
    assert teacher_g.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="crop_box"):
        L.self_supervision(teacher, student, crop_box=(10, 10, 8, 8))


def test_smurf_and_arflow_extras_enter_the_total():
    img1, img2 = _smooth_images(1, 16, 16), _smooth_images(1, 16, 16, seed=2)
    fw, bw = _rand_flow(1, 16, 16), _rand_flow(1, 16, 16, seed=3)
    smurf = L.build_loss("smurf")
    out = smurf(img1, img2, fw, bw, teacher_flow=fw, student_flow=torch.zeros(1, 2, 8, 8), crop_box=(4, 4, 8, 8))
    assert "selfsup" in out.terms and float(out.terms["selfsup"]) > 0
    arflow = L.build_loss("arflow")
    out = arflow(img1, img2, fw, bw, ar_pred=fw + 1.0, ar_target=fw)
    assert math.isclose(float(out.terms["ar"]), 0.01 * 1.01 ** 0.4, rel_tol=1e-5)


def test_augmentation_regularization_value_and_gradient():
    pred = torch.zeros(1, 2, 4, 4, requires_grad=True)
    target = torch.ones(1, 2, 4, 4, requires_grad=True)
    val = L.augmentation_regularization(pred, target)
    val.backward()
    assert math.isclose(float(val.detach()), 1.01 ** 0.4, rel_tol=1e-6)
    assert target.grad is None and float(pred.grad.abs().sum()) > 0


def test_keep_close():
    p = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([[3.0]], requires_grad=True)}
    f = {"a": torch.tensor([0.0, 0.0], requires_grad=True), "b": torch.tensor([[1.0]])}
    val = L.keep_close(p, f)
    assert float(val.detach()) == 1 + 4 + 4
    val.backward()
    assert torch.equal(p["a"].grad, torch.tensor([2.0, 4.0])) and f["a"].grad is None
    assert float(L.keep_close(list(p.values()), list(f.values())).detach()) == 9.0
    with pytest.raises(ValueError, match="names differ"):
        L.keep_close(p, {"a": f["a"]})
    with pytest.raises(ValueError, match="shape"):
        L.keep_close([torch.zeros(2)], [torch.zeros(3)])
    # the weighted term lives in the objective only (recipe weight 10); the loss of flows refuses it
    from mlof.meta.objective import UnsupervisedObjective
    objective = UnsupervisedObjective("mlof")
    assert math.isclose(float(objective.keep_close_term(p, f).detach()), 90.0)
    assert UnsupervisedObjective("mlof", keep_close_weight=0.0).keep_close_term(p, f) is None
    img = _smooth_images(1, 8, 8)
    with pytest.raises(ValueError, match="keep-close term is not a loss extra"):
        L.build_loss("mlof")(img, img, torch.zeros(1, 2, 8, 8), params=p, fixed_params=f)


# -------------------------------------------------------------------------------------------- supervised
def test_sequence_loss_matches_raft_definition():
    gt = torch.zeros(1, 2, 2, 2)
    gt[0, 0, 0, 0] = 500.0  # masked by max_flow
    valid = torch.ones(1, 2, 2)
    valid[0, 1, 1] = 0.0
    flows = [gt + 1.0, gt + 2.0, gt + 0.5]
    loss, metrics = L.sequence_loss(flows, gt, valid, gamma=0.85, max_flow=400)
    # 2 of 4 pixels count (one too large, one invalid); per prediction mean over 8 values of valid*|d|
    expected = sum(0.85 ** (2 - i) * (2 * 2 * d) / 8 for i, d in enumerate((1.0, 2.0, 0.5)))
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(metrics["epe"], math.sqrt(0.5), rel_tol=1e-6)
    assert metrics["1px"] == 1.0 and metrics["3px"] == 1.0
    _, empty = L.sequence_loss(flows, gt, torch.zeros(1, 2, 2))
    assert empty["epe"] == 0.0


def test_multilevel_loss_perfect_pyramid_and_sparse_gt():
    gt = _rand_flow(1, 16, 16, 3.0)
    valid = torch.ones(1, 16, 16)
    levels = [L.downsample_gt(gt, valid, (16 // 2 ** k, 16 // 2 ** k))[0] for k in range(1, 4)]
    loss, metrics = L.multilevel_loss(levels, gt, valid)
    assert float(loss) < 1e-4 and set(metrics) >= {"level_0", "level_2", "epe"}
    worse, _ = L.multilevel_loss([lv + 1.0 for lv in levels], gt, valid)
    assert math.isclose(float(worse), sum(L.PWC_WEIGHTS[:3]) * math.sqrt(2), rel_tol=1e-4)
    sparse = torch.zeros(1, 16, 16)
    sparse[:, ::4, ::4] = 1
    down, v = L.downsample_gt(gt, sparse, (4, 4))
    assert float(v.sum()) == 16 and torch.allclose(down, gt[:, :, ::4, ::4] / 4)
    scaled, _ = L.multilevel_loss([lv / 20 for lv in levels], gt, valid, flow_scale=1 / 20)
    assert float(scaled) < 1e-4
    with pytest.raises(ValueError, match="weights"):
        L.multilevel_loss(levels * 3, gt, valid)


@pytest.mark.parametrize("patch, reduce", [(3, "mean"), (7, "sum")])
def test_streamed_census_distance_equals_the_transform_form(patch, reduce):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.double) * 255
    b = (torch.rand(2, 3, 20, 24, generator=g, dtype=torch.double) * 255).requires_grad_()
    plain = L.soft_hamming(L.census_transform(a, patch), L.census_transform(b, patch), reduce=reduce)
    streamed = L.census_distance(a, b, patch, reduce=reduce)
    assert torch.allclose(plain, streamed, atol=1e-12)
    weights = torch.rand(plain.shape, generator=g, dtype=torch.double)
    grad_plain, = torch.autograd.grad((plain * weights).sum(), b)
    grad_streamed, = torch.autograd.grad((streamed * weights).sum(), b)
    assert torch.allclose(grad_plain, grad_streamed, atol=1e-12)
    with pytest.raises(LossInputError, match="patch"):
        L.census_distance(a, b, 4)
