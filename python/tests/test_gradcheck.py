"""torch.autograd.gradcheck through the Python API, in float64: the gradients of the outputs and
the auxiliary loss with respect to the input and every trainable parameter. Routing is piecewise
constant, so the layers run without gating noise (gradcheck calls the function many times) on
inputs whose choices a step of 1e-6 does not change."""
import pytest
import torch

import moe

LAYERS = {
    "softmax_topk": lambda: moe.SparseMoE(4, 3, top_k=2, hidden_size=3, expert_bias=True,
                                          balance_coef=0.1, z_loss_coef=0.01),
    "noisy_topk": lambda: moe.SparseMoE(4, 3, router="noisy_topk", top_k=2, hidden_size=3,
                                        activation="swiglu", noisy_gating=False),
    "switch_capacity": lambda: moe.SparseMoE(4, 3, router="switch", top_k=1, hidden_size=3,
                                             capacity_factor=1.0),
    "hierarchical": lambda: moe.HierarchicalMoE(4, 2, 2, hidden_size=3, noisy_gating=False),
    "hyper": lambda: moe.HyperRouterMoE(4, 3, hidden_size=3, hyper_hidden=3),
    "smoe": lambda: moe.HyperRouterMoE(4, 3, router="smoe", hidden_size=3),
    "top_any": lambda: moe.TopAnyMoE(4, 3, hidden_size=3, initial_experts=3),
    "gshard": lambda: moe.GShardMoE(4, [3], hidden_size=3, second_policy_train="all"),
    "gshard_two_levels": lambda: moe.GShardMoE(4, [2, 2], hidden_size=3,
                                               second_policy_train="threshold"),
    "mmoe": lambda: moe.MMoE(4, 3, 2, expert_hidden=[3], tower_hidden=[2], gate={"top_k": 2}),
    "ple": lambda: moe.PLE(4, 2, expert_hidden=[3], tower_hidden=[2]),
    "shared_bottom": lambda: moe.SharedBottom(4, 2, bottom_hidden=[3], tower_hidden=[2]),
}


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck(name):
    torch.manual_seed(1)
    layer = LAYERS[name]().double().train()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    multitask = name in ("mmoe", "ple", "shared_bottom")
    x = torch.randn((6, 4) if multitask else (2, 5, 4), dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters() if p.requires_grad]
    if name == "top_any":
        # Its 0/1 expert decisions pass gradients straight through (docs/dynmoe.md), which
        # finite differences cannot see: the input and the router are left out.
        x.requires_grad_(False)
        params = [p for n, p in layer.named_parameters() if n.startswith("experts.")]

    def f(x, *_params):  # the parameters are perturbed in place, which the C++ layer sees
        out = layer(x)
        if multitask:
            return (*out.outputs, out.aux_loss)
        return out.output, out.aux_loss

    inputs = (x, *params) if x.requires_grad else tuple(params)
    if not x.requires_grad:
        f_all = f
        f = lambda *_params: f_all(x)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
