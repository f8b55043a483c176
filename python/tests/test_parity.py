"""Every Python layer against the C++ layer on the same weights, through the library's files: the
Python layer saves its weights and an input, moe_python_parity (python/tests/cpp_parity.cpp) builds
the C++ layer with the same options, loads them, runs the input and saves its outputs and its own
weights, which the Python side reads back."""
import subprocess

import pytest
import torch

import moe

# The same options as kConfigs in cpp_parity.cpp.
CONFIGS = {
    "sparse": lambda: moe.SparseMoE(8, 4, router="noisy_topk", top_k=2, hidden_size=6,
                                    activation="swiglu", expert_bias=True, aux_loss_in_eval=True),
    "hierarchical": lambda: moe.HierarchicalMoE(8, 2, 3, hidden_size=6, aux_loss_in_eval=True),
    "top_any": lambda: moe.TopAnyMoE(8, 4, hidden_size=6),
    "hyper": lambda: moe.HyperRouterMoE(8, 4, hidden_size=6, hyper_hidden=5, top_k=2),
    "gshard": lambda: moe.GShardMoE(8, [4], hidden_size=6, second_policy_eval="all"),
    "gshard2": lambda: moe.GShardMoE(8, [2, 2], hidden_size=6, second_policy_eval="threshold"),
    "mmoe": lambda: moe.MMoE(8, 3, 2, gate={"top_k": 2}),
    "ple": lambda: moe.PLE(8, 2, levels=2),
}
MULTITASK = {"mmoe", "ple"}


def outputs_of(name, layer, x):
    out = layer(x)
    if name in MULTITASK:
        return {"aux_loss": out.aux_loss, **{f"output{k}": y for k, y in enumerate(out.outputs)}}
    return {"output": out.output, "aux_loss": out.aux_loss}


@pytest.mark.parametrize("name", CONFIGS)
def test_python_and_cpp_give_the_same_outputs_on_the_same_weights(name, tmp_path, parity_helper):
    layer = CONFIGS[name]().double().eval()
    with torch.no_grad():  # away from the initial values (a zero-initialised router ties)
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn((10, 8) if name in MULTITASK else (2, 5, 8), dtype=torch.float64)
    files = {k: str(tmp_path / f"{k}.safetensors") for k in ("weights", "x", "out", "saved")}
    moe.io.save(layer, files["weights"])
    moe.io.save_file({"x": x}, files["x"])
    run = subprocess.run([parity_helper, name, files["weights"], files["x"], files["out"],
                          files["saved"]], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    expected, _ = moe.io.load_file(files["out"])
    with torch.no_grad():
        got = outputs_of(name, layer, x)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-14, msg=key)

    # The C++ program's file: the Python names, and it loads into a fresh Python layer.
    saved, _ = moe.io.load_file(files["saved"])
    state = layer.state_dict()
    assert set(saved) == set(state)
    fresh = CONFIGS[name]().double()
    moe.io.load(fresh, files["saved"])
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_state_dict_round_trip_through_a_file(tmp_path):
    layer = moe.SparseMoE(8, 4, router="noisy_topk", hidden_size=6)
    with torch.no_grad():
        layer.router.weight.normal_()
    path = str(tmp_path / "layer.safetensors")
    moe.io.save(layer, path, {"note": "python"})
    other = moe.SparseMoE(8, 4, router="noisy_topk", hidden_size=6)
    assert moe.io.load(other, path) == {"note": "python"}
    for (k, a), (k2, b) in zip(layer.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # load_state_dict writes into the C++ tensors too.
    third = moe.SparseMoE(8, 4, router="noisy_topk", hidden_size=6).eval()
    third.load_state_dict(layer.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(third(x).output, layer.eval()(x).output, rtol=0, atol=0)


def test_a_corrupt_file_is_an_error_naming_it(tmp_path):
    layer = moe.SparseMoE(8, 4, hidden_size=6)
    path = tmp_path / "layer.safetensors"
    moe.io.save(layer, str(path))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="layer.safetensors.*'experts.w2' is corrupted"):
        moe.io.load(layer, str(path))
    with pytest.raises(TypeError, match="moe layer"):
        moe.io.save(torch.nn.Linear(2, 2), str(path))
