"""moe.compat against a pure-PyTorch reference of lucidrains/mixture-of-experts' GShard top-2
formulation (one-hot dispatch and combine tensors and einsums, as docs/algorithms.md §1.10
describes it), written here; with its one fix: a two-level slot is a first choice by the choice,
not by its weight being > 0.5."""
import copy
import inspect
import math

import pytest
import torch
from torch import nn

import moe
from moe.compat import HeirarchicalMoE, MoE


def reference_gate(x, w, policy, threshold, capacity_factor, importance=None):
    """x [..., b, n, d], w [..., d, E] -> dispatch, combine [..., b, n, E, C], first [..., b, n, E,
    C] (the places holding first choices), loss."""
    raw = torch.softmax(torch.einsum("...bnd,...de->...bne", x, w), dim=-1)
    E, n = raw.shape[-1], raw.shape[-2]
    g1, i1 = raw.max(dim=-1)
    mask1 = nn.functional.one_hot(i1, E).to(raw)
    proxy = raw
    if importance is not None:
        eq1 = (importance == 1).to(raw)
        mask1, g1, proxy = mask1 * eq1[..., None], g1 * eq1, proxy * eq1[..., None]
    g2, i2 = (raw * (1 - mask1)).max(dim=-1)
    mask2 = nn.functional.one_hot(i2, E).to(raw)
    if importance is not None:
        mask2 = mask2 * (importance > 0).to(raw)[..., None]
    den = g1 + g2 + 1e-9
    g1, g2 = g1 / den, g2 / den
    loss = (proxy.mean(dim=-2) * mask1.mean(dim=-2)).mean() * float(E ** 2)
    if policy == "none":
        mask2 = torch.zeros_like(mask2)
    elif policy == "threshold":
        mask2 = mask2 * (g2 > threshold).to(raw)[..., None]
    elif policy == "random":
        u = torch.zeros_like(g2).uniform_(0.0, 1.0)
        mask2 = mask2 * (u < g2 / max(threshold, 1e-9)).to(raw)[..., None]
    C = max(min(n, int(n * capacity_factor / E)), 4)
    pos1 = (torch.cumsum(mask1, dim=-2) - mask1) * mask1
    mask1 = mask1 * (pos1 < C).to(raw)
    count1 = mask1.sum(dim=-2, keepdim=True)
    pos2 = (torch.cumsum(mask2, dim=-2) - mask2 + count1) * mask2
    mask2 = mask2 * (pos2 < C).to(raw)
    flat1, flat2 = mask1.sum(dim=-1), mask2.sum(dim=-1)
    g1, g2 = g1 * flat1, g2 * flat2

    def places(i, pos, flat):
        onehot_pos = nn.functional.one_hot(pos.sum(dim=-1).long().clamp(max=C), C + 1)[..., :C]
        return (flat[..., None, None] * nn.functional.one_hot(i, E).to(raw)[..., None]
                * onehot_pos.to(raw)[..., None, :])

    place1, place2 = places(i1, pos1, flat1), places(i2, pos2, flat2)
    combine = g1[..., None, None] * place1 + g2[..., None, None] * place2
    dispatch = (combine != 0).to(raw)
    return dispatch, combine, dispatch * place1, loss


def experts_reference(x, w1, w2, act):
    return torch.matmul(act(torch.matmul(x, w1)), w2)


def reference_moe(layer, x, policy, threshold, cf, act=torch.relu):
    E = layer.router.weight.shape[0]
    dispatch, combine, _, loss = reference_gate(x, layer.router.weight.t(), policy, threshold, cf)
    b, n, d = x.shape
    expert_in = torch.einsum("bnd,bnec->ebcd", x, dispatch).reshape(E, -1, d)
    out = experts_reference(expert_in, layer.experts.w1, layer.experts.w2, act)
    out = out.reshape(E, b, -1, d)
    return torch.einsum("ebcd,bnec->bnd", out, combine), loss * 1e-2


def reference_hierarchical(layer, x, policy, threshold, cf, act=torch.relu):
    r = layer.router
    Eo, Ei = r.inner_weight.shape[:2]
    b, n, d = x.shape
    dispatch_o, combine_o, first_o, loss_o = reference_gate(x, r.outer_weight.t(), policy,
                                                            threshold, cf)
    x_o = torch.einsum("bnd,bnec->ebcd", x, dispatch_o)
    occupied = dispatch_o.sum(dim=1).permute(1, 0, 2)  # [e, b, c]
    importance = 0.5 * (occupied + first_o.sum(dim=1).permute(1, 0, 2))
    dispatch_i, combine_i, _, loss_i = reference_gate(x_o, r.inner_weight.transpose(1, 2), policy,
                                                      threshold, cf, importance)
    expert_in = torch.einsum("ebnd,ebnfc->efbcd", x_o, dispatch_i)
    shape = expert_in.shape
    w1 = layer.experts.w1.view(Eo, Ei, d, -1)
    w2 = layer.experts.w2.view(Eo, Ei, -1, d)
    out = experts_reference(expert_in.reshape(Eo, Ei, -1, d), w1, w2, act).reshape(shape)
    out_o = torch.einsum("efbcd,ebnfc->ebnd", out, combine_i)
    return torch.einsum("ebcd,bnec->bnd", out_o, combine_o), (loss_o + loss_i) * 1e-2


POLICIES = ["all", "none", "threshold", "random"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("training", [True, False])
def test_moe_equals_the_reference(policy, training):
    torch.manual_seed(11)
    layer = MoE(16, num_experts=4, hidden_dim=24, second_policy_train=policy,
                second_policy_eval=policy).double().train(training)
    x = torch.randn(3, 20, 16, dtype=torch.float64)
    torch.manual_seed(12)
    out, aux = layer(x)
    torch.manual_seed(12)  # the same uniform draws for the random policy
    ref_out, ref_aux = reference_moe(layer, x, policy, 0.2, 1.25 if training else 2.0)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("policy", POLICIES)
def test_heirarchical_moe_equals_the_reference(policy):
    torch.manual_seed(13)
    layer = HeirarchicalMoE(12, num_experts=(3, 2), hidden_dim=8, second_policy_train=policy,
                            second_policy_eval=policy).double()
    x = torch.randn(2, 40, 12, dtype=torch.float64)
    torch.manual_seed(14)
    out, aux = layer(x)
    torch.manual_seed(14)
    ref_out, ref_aux = reference_hierarchical(layer, x, policy, 0.2, 1.25)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-10, atol=1e-14)


def test_experts_of_ones_own_and_other_activations_run_in_python():
    torch.manual_seed(15)
    custom = moe.compat.Experts(16, 4, 24, activation=nn.Tanh)
    layer = MoE(16, num_experts=4, second_policy_train="all", experts=custom).double()
    assert layer.experts is custom
    assert "experts.w1" in layer.state_dict() and layer.state_dict()["experts.w1"].shape == (
        4, 16, 24)
    x = torch.randn(2, 12, 16, dtype=torch.float64, requires_grad=True)
    out, aux = layer(x)
    ref_out, _ = reference_moe(layer, x, "all", 0.2, 1.25, act=torch.tanh)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert custom.w1.grad is not None and layer.router.weight.grad is not None
    with pytest.raises(TypeError, match="holds Python modules \\(experts\\)"):
        moe.io.save(layer, "unused.safetensors")  # the C++ file would miss the experts
    twin = copy.deepcopy(layer)  # the Python experts are copied too
    assert isinstance(twin.experts, moe.compat.Experts) and twin.experts is not custom
    torch.testing.assert_close(twin(x)[0], out, rtol=0, atol=0)
    two = HeirarchicalMoE(8, (2, 2), activation=nn.Tanh, second_policy_train="all").double()
    assert isinstance(two.experts, moe.compat.Experts) and two.experts.w1.shape == (2, 2, 8, 32)
    ref = HeirarchicalMoE(8, (2, 2), second_policy_train="all").double()
    with torch.no_grad():
        ref.router.outer_weight.copy_(two.router.outer_weight)
        ref.router.inner_weight.copy_(two.router.inner_weight)
        ref.experts.w1.copy_(two.experts.w1.reshape(4, 8, 32))
        ref.experts.w2.copy_(two.experts.w2.reshape(4, 32, 8))
    y = torch.randn(2, 10, 8, dtype=torch.float64)
    expected = reference_hierarchical(ref, y, "all", 0.2, 1.25, act=torch.tanh)[0]
    torch.testing.assert_close(two(y)[0], expected, rtol=1e-10, atol=1e-12)


def test_the_constructors_take_the_packages_arguments_and_defaults():
    expected = {"dim": inspect.Parameter.empty, "hidden_dim": None, "activation": nn.ReLU,
                "second_policy_train": "random", "second_policy_eval": "random",
                "second_threshold_train": 0.2, "second_threshold_eval": 0.2,
                "capacity_factor_train": 1.25, "capacity_factor_eval": 2.0, "loss_coef": 1e-2,
                "experts": None}
    for cls, num_experts in ((MoE, 16), (HeirarchicalMoE, (4, 4))):
        params = inspect.signature(cls).parameters
        assert list(params) == ["dim", "num_experts", "hidden_dim", "activation",
                                "second_policy_train", "second_policy_eval",
                                "second_threshold_train", "second_threshold_eval",
                                "capacity_factor_train", "capacity_factor_eval", "loss_coef",
                                "experts"]
        assert params["num_experts"].default == num_experts
        for name, default in expected.items():
            assert params[name].default == default, name


def test_shapes_parameter_count_and_the_loss_in_eval():
    layer = HeirarchicalMoE(dim=512, num_experts=(4, 4))
    assert sum(p.numel() for p in layer.parameters()) == 33_564_672
    assert layer.capacity(1024, 4) == 320 and layer.capacity(320, 4) == 100
    small = MoE(dim=32, num_experts=4)
    out, aux = small(torch.randn(4, 64, 32))
    assert out.shape == (4, 64, 32) and aux.shape == torch.Size([])
    small.eval()
    _, aux_eval = small(torch.randn(4, 64, 32))
    assert aux_eval.item() > 0  # computed in eval too, as the package does
    with pytest.raises(ValueError, match=r"\[batch, sequence, dim\]"):
        small(torch.randn(64, 32))
    with pytest.raises(ValueError, match="num_experts must be"):
        HeirarchicalMoE(8, num_experts=(2, 2, 2))


def test_gating_and_expert_initialisation_follow_the_package():
    torch.manual_seed(16)
    layer = MoE(dim=256, num_experts=8, hidden_dim=512)
    w = layer.router.weight
    assert abs(w.std().item() - 1.0) < 0.05  # N(0, 1): 2048 draws, 3 standard errors
    assert layer.experts.w1.abs().max().item() <= 512 ** -0.5  # U(±1/sqrt(last dim))
    assert layer.experts.w2.abs().max().item() <= 256 ** -0.5
    assert layer.experts.w1.abs().max().item() > 0.95 * 512 ** -0.5
    assert math.isclose(layer.capacity(1024, 16), 80)
