import torch

from seekserve.loader.model_loader import model_fingerprint, stack_params


def test_fingerprint_follows_content_not_path(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"a" * 3_000_000)
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    model.write_bytes(b"a" * 2_999_999 + b"b")  # same size, last byte differs
    assert model_fingerprint(model) != first


def test_stack_params_concatenates_in_order():
    weights = {
        "l.q_proj.weight": torch.zeros(2, 3),
        "l.k_proj.weight": torch.ones(1, 3),
        "l.v_proj.weight": torch.full((1, 3), 2.0),
        "l.o_proj.weight": torch.zeros(3, 3),
    }
    out = stack_params(weights, {"qkv_proj": ("q_proj", "k_proj", "v_proj")})
    assert sorted(out) == ["l.o_proj.weight", "l.qkv_proj.weight"]
    assert out["l.qkv_proj.weight"][:, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
