"""Safetensors loader: round trip, dtype conversion and error messages."""
import pytest
import torch
from safetensors.torch import save_file

from fusegraph.models import CheckpointMismatchError, build_model, load_checkpoint


def test_round_trip_with_dtype_conversion(tmp_path):
    src = build_model("tiny", seed=7)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    # store hc params in bf16 and one bf16 weight in fp32: the loader converts to the param dtype
    sd["layers.0.hc_attn_base"] = sd["layers.0.hc_attn_base"].to(torch.bfloat16)
    sd["layers.0.attn.wkv.weight"] = sd["layers.0.attn.wkv.weight"].float()
    names = sorted(sd)
    save_file({k: sd[k] for k in names[: len(names) // 2]}, str(tmp_path / "a.safetensors"))
    save_file({k: sd[k] for k in names[len(names) // 2 :]}, str(tmp_path / "b.safetensors"))
    dst = build_model("tiny", seed=0)
    load_checkpoint(dst, tmp_path)
    for k, v in src.state_dict().items():
        got = dst.state_dict()[k]
        assert got.dtype == v.dtype, k
        if k == "layers.0.hc_attn_base":
            assert torch.equal(got, v.to(torch.bfloat16).float())
        else:
            assert torch.equal(got, v), k


def test_load_into_meta_model(tmp_path):
    src = build_model("tiny", seed=3)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    dst = build_model("tiny", device="meta")
    load_checkpoint(dst, tmp_path / "m.safetensors")
    assert not dst.embed.weight.is_meta and torch.equal(dst.embed.weight, src.embed.weight)


def test_errors_name_every_problem(tmp_path):
    sd = {k: v.contiguous() for k, v in build_model("tiny").state_dict().items()}
    del sd["layers.1.attn.compressor.ape"]
    sd["layers.9.attn.bogus"] = torch.zeros(2)
    sd["layers.0.attn.attn_sink"] = torch.zeros(7)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    dst = build_model("tiny")
    before = dst.layers[0].attn.attn_sink.clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(dst, tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "missing tensor: layers.1.attn.compressor.ape" in msg
    assert "unexpected tensor: layers.9.attn.bogus" in msg
    assert "wrong shape: layers.0.attn.attn_sink: expected [4], found [7]" in msg
    assert torch.equal(dst.layers[0].attn.attn_sink, before)  # nothing loaded on error


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(build_model("tiny"), tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(build_model("tiny"), tmp_path)
