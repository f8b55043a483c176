"""DynMoE's expert updates from a Python training loop with a torch optimizer."""
import torch

import moe


def records(counts, unrouted_sum, tokens=12, unrouted=0):
    r = moe._C.RoutingRecords()
    r.expert_counts = torch.tensor(counts, dtype=torch.long)
    r.unrouted_sum = torch.tensor(unrouted_sum, dtype=torch.float32)
    r.tokens = tokens
    r.unrouted_count = torch.tensor(unrouted, dtype=torch.long)
    return r


def adam_step(layer, opt, x):
    out = layer(x)
    opt.zero_grad()
    (out.output.square().mean() + out.aux_loss).backward()
    opt.step()


def test_resize_mode_moves_the_adam_moments_with_the_surviving_experts():
    torch.manual_seed(2)
    layer = moe.TopAnyMoE(4, 6, initial_experts=3, storage="resize", hidden_size=3)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    adam_step(layer, opt, torch.randn(16, 4))
    w1 = layer.experts.w1
    before = {k: v.clone() for k, v in opt.state[w1].items() if torch.is_tensor(v)}
    # Expert 1 saw no token; the unrouted tokens' mean becomes a new expert.
    update = layer.update_experts(records([5, 0, 7], [1.0, 0.0, 0.0, 0.0], unrouted=3), opt)
    assert list(update.removed) == [1] and update.added == 2
    assert layer.num_experts == 3 and w1.shape[0] == 3  # the same tensor object, resized
    assert dict(layer.named_parameters())["experts.w1"] is w1
    for key in ("exp_avg", "exp_avg_sq"):
        moved = opt.state[w1][key]
        assert moved.shape == w1.shape
        torch.testing.assert_close(moved[:2], before[key][[0, 2]], rtol=0, atol=0)
        assert torch.count_nonzero(moved[2]) == 0
    threshold = layer.router.threshold
    assert opt.state[threshold]["exp_avg"].shape == threshold.shape
    adam_step(layer, opt, torch.randn(16, 4))  # the optimizer steps on the resized tensors


def test_scheduled_updates_in_a_training_loop():
    torch.manual_seed(4)
    layer = moe.TopAnyMoE(4, 6, initial_experts=4, storage="resize", hidden_size=3,
                          schedule=("window", 2, 4))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    seen = []
    for _ in range(12):
        adam_step(layer, opt, torch.randn(16, 4))
        seen += moe.apply_expert_updates(torch.nn.Sequential(layer), opt)
    assert len(seen) == 3  # after forwards 4, 8 and 12
    assert layer.forward_count == 12
    for p in layer.parameters():
        if p in opt.state and "momentum_buffer" in opt.state[p]:
            assert opt.state[p]["momentum_buffer"].shape == p.shape


def test_pool_mode_reinit_zeroes_the_new_experts_moments():
    torch.manual_seed(5)
    layer = moe.TopAnyMoE(4, 4, initial_experts=2, hidden_size=3, new_expert_init="reinit")
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    adam_step(layer, opt, torch.randn(16, 4))
    w1 = layer.experts.w1
    opt.state[w1]["exp_avg"].fill_(1.0)
    update = layer.update_experts(records([4, 4, 0, 0], [0.0, 1.0, 0.0, 0.0], unrouted=2), opt)
    assert update.added >= 0 and layer.num_active_experts == 3
    assert torch.count_nonzero(opt.state[w1]["exp_avg"][update.added]) == 0
    assert torch.all(opt.state[w1]["exp_avg"][0] == 1.0)


def test_records_of_a_window():
    layer = moe.TopAnyMoE(4, 4, hidden_size=3)
    layer.begin_recording()
    layer(torch.randn(10, 4))
    assert layer.recording
    r = layer.finish_recording()
    assert r.tokens == 10 and r.expert_counts.shape == (4,)
