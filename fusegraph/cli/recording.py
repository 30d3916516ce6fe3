"""Running a graph while recording values by node name: site inputs/outputs, and an fp64 run.

``SiteRecorder`` runs ``compiled.unfused`` (an ``fx.Interpreter``) and snapshots, for every match
site, the values the fused op would receive and the values the replaced subgraph produced:

* an input is cloned just before the first replaced node that reads it runs: it is computed by then,
  and no replaced node has written into it yet (a KV cache the site stores into is captured in the
  state the earlier sites left it in, as the fused call would see it);
* outputs, and the final state of every input (to see what the subgraph wrote into), are cloned
  right after the site's last replaced node ran.

``Fp64Interpreter`` runs the unfused graph with every 16/32-bit float value promoted to fp64, casts
to those dtypes included (FP8 casts stay: quantization is part of the math). It is the model-level
fp64 reference, in the spirit of ``torch._dynamo.debug_utils.same_two_models``. A bitcast
(``x.view(torch.uint8)``, packing a cache) rounds its input back to the graph's dtype first: those
bytes are part of the math. An op without fp64 support makes the run raise ``Fp64Unsupported``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx

from fusegraph.cli.numerics import clone_value
from fusegraph.records import MatchSite

_LOW_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class SiteValues:
    inputs: dict[str, Any] = field(default_factory=dict)        # arg node name -> value before the site
    outputs: dict[str, Any] = field(default_factory=dict)       # output node name -> value
    inputs_after: dict[str, Any] = field(default_factory=dict)  # arg node name -> value after the site


class SiteRecorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, sites: Iterable[tuple[MatchSite, list[str]]]):
        super().__init__(gm, garbage_collect_values=False)
        self.sites = list(sites)
        self.values: list[SiteValues] = [SiteValues() for _ in self.sites]
        index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        nodes = {n.name: n for n in gm.graph.nodes}
        self._before: dict[str, list[tuple[int, str]]] = {}   # node -> (site, input) to clone before it runs
        self._after: dict[str, list[tuple[int, str]]] = {}    # node -> (site, input) to clone after it ran
        self._last: dict[str, list[int]] = {}                 # node -> sites whose last replaced node it is
        for k, (site, arg_names) in enumerate(self.sites):
            replaced = [nodes[r] for r in site.replaced if r in nodes]
            if not replaced:
                continue
            replaced.sort(key=lambda n: index[n.name])
            self._last.setdefault(replaced[-1].name, []).append(k)
            for name in arg_names:
                readers = [n for n in replaced if any(a.name == name for a in n.all_input_nodes)]
                if readers:
                    self._before.setdefault(readers[0].name, []).append((k, name))
                else:  # not read by any replaced node: take it as soon as it exists
                    self._after.setdefault(name, []).append((k, name))
        self._node_by_name = nodes

    def _value(self, name: str) -> Any:
        return self.env[self._node_by_name[name]]

    def run_node(self, n: torch.fx.Node) -> Any:
        for k, name in self._before.get(n.name, ()):
            if name not in self.values[k].inputs:
                self.values[k].inputs[name] = clone_value(self._value(name))
        result = super().run_node(n)
        self.env[n] = result  # the base loop stores it too; the clones below need it now
        for k, name in self._after.get(n.name, ()):
            self.values[k].inputs.setdefault(name, clone_value(result))
        for k in self._last.get(n.name, ()):
            site, arg_names = self.sites[k]
            vals = self.values[k]
            for out_name in site.outputs.values():
                if out_name in self._node_by_name and self._node_by_name[out_name] in self.env:
                    vals.outputs[out_name] = clone_value(self._value(out_name))
            for name in arg_names:
                if self._node_by_name.get(name) in self.env:
                    vals.inputs_after[name] = clone_value(self._value(name))
        return result


class Fp64Unsupported(RuntimeError):
    pass


def _promote_dtype(value: Any) -> Any:
    if isinstance(value, torch.dtype) and value in _LOW_FLOATS:
        return torch.float64
    if isinstance(value, (tuple, list)):
        return type(value)(_promote_dtype(v) for v in value)
    if isinstance(value, dict):
        return {k: _promote_dtype(v) for k, v in value.items()}
    return value


def _promote_tensor(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_FLOATS:
        return value.to(torch.float64)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return type(value)(_promote_tensor(v) for v in value)
    return value


class Fp64Interpreter(torch.fx.Interpreter):
    _TO_FP64_METHODS = {"float", "half", "bfloat16"}

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self._attrs: dict[str, Any] = {}  # one promoted copy per attribute, so writes into it persist

    def placeholder(self, target: Any, args: Any, kwargs: Any) -> Any:
        return _promote_tensor(super().placeholder(target, args, kwargs))

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target not in self._attrs:
            self._attrs[target] = _promote_tensor(super().get_attr(target, args, kwargs))
        return self._attrs[target]

    def run_node(self, n: torch.fx.Node) -> Any:
        self._node = n
        return super().run_node(n)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in self._TO_FP64_METHODS:  # x.float() / .half() / .bfloat16(), of floats and integers alike
            return args[0].to(torch.float64)
        if target == "view" and any(isinstance(a, torch.dtype) for a in list(args[1:]) + list(kwargs.values())):
            # A bitcast: the bytes must be those of the graph's own dtype, so round back to it here
            # (as the graph does) and reinterpret; the result is promoted again after.
            source = self._node.args[0]
            val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
            if not isinstance(val, torch.Tensor):
                raise Fp64Unsupported("the graph reinterprets bytes of a value of unknown dtype")
            return _promote_tensor(super().call_method(target, (args[0].to(val.dtype),) + tuple(args[1:]), kwargs))
        return _promote_tensor(super().call_method(target, _promote_dtype(args), _promote_dtype(kwargs)))

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        return _promote_tensor(super().call_function(target, _promote_dtype(args), _promote_dtype(kwargs)))

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        raise Fp64Unsupported(f"module call {target} (parameters are not promoted)")


def run_fp64(gm: torch.fx.GraphModule, inputs: tuple[Any, ...]) -> Any:
    """The unfused graph's outputs computed in fp64; raises ``Fp64Unsupported`` when not possible."""
    saved = {name: b.detach().clone() for name, b in gm.named_buffers()}
    try:
        with torch.no_grad():
            return Fp64Interpreter(gm).run(*[_promote_tensor(clone_value(x)) for x in inputs])
    except Fp64Unsupported:
        raise
    except Exception as exc:  # an op without fp64 support, a dtype clash in a buffer write, ...
        raise Fp64Unsupported(f"{type(exc).__name__}: {exc}") from exc
    finally:
        restore_buffers(gm, saved)


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in saved:
                b.copy_(saved[name])
