"""Provider selection: targets, availability, argument gates, priorities, forced order."""
from __future__ import annotations

import pytest
import torch

from fusegraph import ops, targets


def _args():
    x = torch.randn(4, 8)
    return (x, x, 0.5)


@pytest.fixture(scope="module")
def demo_op():
    @ops.fused_op("test_demo_scale")
    def demo(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        return a * alpha + b

    @demo.provider("fast", targets={"cpu", "sm90"}, priority=10,
                   supports_args=lambda a, b, alpha: None if a.shape[-1] % 8 == 0 else "last dim must be a multiple of 8")
    def demo_fast(a, b, alpha):
        return a * alpha + b

    @demo.provider("missing", targets={"cpu"}, priority=30, available=lambda: "libmissing is not installed")
    def demo_missing(a, b, alpha):
        raise AssertionError("never runs")

    return demo


def test_priority_availability_and_gates(demo_op):
    sel = demo_op.select("cpu", _args())
    assert sel.provider == "fast"
    assert [(r.provider, r.reason) for r in sel.rejected][0] == ("missing", "libmissing is not installed")
    assert sel.rejected[-1].provider == "torch" and "lower priority" in sel.rejected[-1].reason
    odd = (torch.randn(4, 7), torch.randn(4, 7), 0.5)
    sel = demo_op.select("cpu", odd)
    assert sel.provider == "torch" and "multiple of 8" in sel.rejected[-1].reason
    sel = demo_op.select("sm80", _args())
    assert sel.provider == "torch" and "does not run on sm80" in sel.rejected[-1].reason


def test_prefer_forces_order_and_call_matches_reference(demo_op):
    a, b, alpha = _args()
    with ops.prefer({"test_demo_scale": ["torch"]}):
        assert demo_op.select("cpu", (a, b, alpha)).provider == "torch"
    torch.testing.assert_close(demo_op(a, b, alpha), a * alpha + b)


def test_provider_signature_must_match(demo_op):
    with pytest.raises(TypeError, match="differ from the reference"):
        demo_op.provider("bad", targets={"cpu"}, priority=1)(lambda a, b: a)


def test_targets():
    assert targets.parse("sm90") == "sm90"
    with pytest.raises(ValueError, match="unknown target"):
        targets.parse("sm42")
    assert targets.supports_pdl("sm90") and not targets.supports_pdl("sm80")
    assert targets.of_device(torch.device("cpu")) == "cpu"
