"""The layers as torch.nn.Modules: parameters, optimizers, dtypes, modes, copies, statistics,
options and errors."""
import copy

import pytest
import torch

import moe


def test_parameters_are_the_cpp_tensors_under_their_cpp_names():
    layer = moe.SparseMoE(8, 4, router="noisy_topk", hidden_size=6, expert_bias=True)
    names = [n for n, _ in layer.named_parameters()]
    assert sorted(names) == sorted(["router.weight", "router.noise_weight", "experts.w1",
                                    "experts.w2", "experts.b1", "experts.b2"])
    for _, p in layer.named_parameters():
        assert type(p) is torch.nn.Parameter and p.requires_grad
    # Writing into a parameter changes what the C++ layer computes.
    layer.eval()
    x = torch.randn(5, 8)
    before = layer(x).output.detach().clone()
    with torch.no_grad():
        layer.experts.w2.mul_(2)
    torch.testing.assert_close(layer(x).output, 2 * before)
    # The C++ module sees the same objects.
    cpp_w1 = dict(layer.experts.cpp.local_parameters())["w1"]
    assert cpp_w1 is layer.experts.w1


def test_a_torch_optimizer_trains_the_layer():
    torch.manual_seed(3)
    layer = moe.SparseMoE(8, 4, top_k=2, hidden_size=16)
    target = torch.nn.Linear(8, 8)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    with torch.no_grad():
        y = torch.tanh(target(x))
    losses = []
    for _ in range(60):
        out = layer(x)
        loss = torch.nn.functional.mse_loss(out.output, y)
        opt.zero_grad()
        (loss + out.aux_loss).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert layer.router.weight.grad is not None


def test_bfloat16_keeps_the_router_in_float32_also_inside_a_user_module():
    layer = moe.SparseMoE(8, 4, hidden_size=6)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), layer)
    model.to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert layer.experts.w1.dtype == torch.bfloat16
    assert layer.router.weight.dtype == torch.float32
    out = model(torch.randn(5, 8, dtype=torch.bfloat16))
    assert out.output.dtype == torch.bfloat16
    model.float()
    assert layer.experts.w1.dtype == torch.float32 and layer.router.weight.dtype == torch.float32
    layer.double()
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    # Not a conversion: share_memory_ works on the tensors as torch.nn.Module does.
    layer.share_memory()
    assert layer.experts.w1.is_shared()


def test_train_and_eval_reach_the_cpp_layer():
    layer = moe.SparseMoE(8, 4, router="noisy_topk", hidden_size=6)
    with torch.no_grad():
        layer.router.weight.normal_()
        layer.router.noise_weight.normal_()
    x = torch.randn(32, 8)
    layer.train()
    assert layer.cpp.is_training() and layer.router.cpp.is_training()
    assert layer(x).aux_loss.item() > 0  # the losses are computed in training only
    layer.eval()
    assert not layer.cpp.is_training() and not layer.router.cpp.is_training()
    assert layer(x).aux_loss.item() == 0
    torch.testing.assert_close(layer(x).output, layer(x).output, rtol=0, atol=0)  # no noise


def test_deepcopy_is_independent():
    layer = moe.SparseMoE(8, 4, hidden_size=6).eval()
    twin = copy.deepcopy(layer)
    x = torch.randn(5, 8)
    torch.testing.assert_close(twin(x).output, layer(x).output, rtol=0, atol=0)
    with torch.no_grad():
        twin.experts.w1.zero_()
    assert not torch.equal(twin(x).output, layer(x).output)
    assert not twin.training


def test_statistics_and_routing():
    layer = moe.SparseMoE(8, 4, top_k=2, hidden_size=6)
    out = layer(torch.randn(2, 10, 8))
    assert out.output.shape == (2, 10, 8)
    assert out.aux_loss.dim() == 0
    assert out.stats.tokens_per_expert.sum().item() == 40
    assert out.routing.expert_index.shape == (20, 2)
    assert out.stats.experts_per_token_mean() == 2.0
    assert out.stats.cv_importance() >= 0
    assert "balance" in out.stats.loss_terms


@pytest.mark.parametrize("make", [
    lambda: moe.HierarchicalMoE(8, 2, 3, hidden_size=6),
    lambda: moe.HyperRouterMoE(8, 4, hidden_size=6, hyper_hidden=5,
                               k_schedule=("linear_increase", 1, 4, 10)),
    lambda: moe.GShardMoE(8, [2, 2], hidden_size=6),
    lambda: moe.TopAnyMoE(8, 4, hidden_size=6),
])
def test_every_routed_layer_runs_forward_and_backward(make):
    layer = make()
    x = torch.randn(2, 6, 8, requires_grad=True)
    out = layer(x)
    (out.output.square().sum() + out.aux_loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert any(p.grad is not None for p in layer.parameters())


def test_hyper_router_schedule_and_inference_k():
    layer = moe.HyperRouterMoE(8, 4, hidden_size=6, hyper_hidden=5,
                               k_schedule=("linear_increase", 1, 4, 3))
    for _ in range(3):
        layer(torch.randn(4, 8))
    assert layer.step == 3
    layer.eval()
    layer.set_inference_top_k(1)
    assert (layer(torch.randn(4, 8)).routing.expert_index >= 0).sum(1).max().item() == 1
    frozen = [n for n, p in layer.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("router.hypernet") for n in frozen)


def test_multitask_models():
    for model in (moe.MMoE(8, 3, 2, expert_hidden=[6], tower_hidden=[4]),
                  moe.PLE(8, 2, levels=2, expert_hidden=[6]),
                  moe.SharedBottom(8, 2, bottom_hidden=[6])):
        out = model(torch.randn(10, 8))
        assert len(out.outputs) == 2 and out.outputs[0].shape == (10, 1)
        sum(o.sum() for o in out.outputs).backward()
        assert all(p.grad is not None for p in model.parameters())
    mmoe = moe.MMoE(8, 3, 2, gate={"top_k": 2})
    assert "gates.0.weight" in mmoe.state_dict()


def test_options_are_checked_as_keyword_arguments():
    with pytest.raises(TypeError, match="unexpected option 'topk'.*top_k"):
        moe.SparseMoE(8, 4, topk=2)
    with pytest.raises(TypeError, match="option 'top_k' got '2'"):
        moe.SparseMoE(8, 4, top_k="2")
    with pytest.raises(ValueError, match="option 'router' must be one of .*noisy_topk.*'nope'"):
        moe.SparseMoE(8, 4, router="nope")
    with pytest.raises(ValueError, match="'schedule'"):
        moe.TopAnyMoE(8, 4, schedule=("sometimes", 1))
    with pytest.raises(ValueError, match="option 'second_policy_train' must be one of .*'maybe'"):
        moe.GShardMoE(8, [4], second_policy_train="maybe")
    with pytest.raises(TypeError, match="MMoE gate: unexpected option 'k'"):
        moe.MMoE(8, 3, 2, gate={"k": 2})


def test_cpp_errors_arrive_as_python_exceptions_with_the_cpp_message():
    # c10::ValueError -> ValueError, c10::TypeError -> TypeError, c10::Error -> RuntimeError; the
    # message is the C++ one, without C++ stack frames.
    with pytest.raises(ValueError) as e:
        moe.SparseMoE(8, 4, top_k=5)
    assert str(e.value).startswith("SparseMoE: top_k") and "frame #" not in str(e.value)
    layer = moe.SparseMoE(8, 4, hidden_size=6)
    with pytest.raises(RuntimeError, match="last dim of x == d_model=8, got x of shape \\[5, 7\\]"):
        layer(torch.randn(5, 7))
    with pytest.raises(TypeError, match="SparseMoE"):
        layer(torch.randn(5, 8, dtype=torch.float64))
    bad = torch.randn(5, 8)
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite for 1 of 5"):
        layer(bad)
    with pytest.raises(RuntimeError, match="no_such_file"):
        moe.io.load_file("/nonexistent/no_such_file.safetensors")
