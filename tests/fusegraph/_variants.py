"""Small DSV4-like blocks written in many spellings, for the ``fusegraph.compile`` acceptance tests.

fusegraph matches by evaluation, so *how* a model spells an operation must not matter, and *what* it
computes must. These blocks let a test pick both:

* ``MHCBlock``: mHC pre + attn-norm, a stand-in sublayer (one GEMM), mHC post, and hc_head + final
  norm (optionally a second sublayer, whose post -> pre pair composes into ``mhc_post_pre``);
* ``AttnBlock``: the q path (per-head unweighted RMSNorm + RoPE on ``[448:]`` of two 512-wide heads)
  and the kv path (weighted RMSNorm + RoPE + FP8 quant-dequant of the nope part);
* ``CompressorBlock``: the compressor's two fp32 projections and its pooling (ratio 4 or 128);
* ``StoreBlock``: the kv path followed by the paged FP8 store (padding rows skipped in one of a few
  ways) and a read-back of the stored rows.

Each block takes a frozen spelling dataclass whose fields choose, per aspect, one of a few ways of
writing the same math (``cast="to"`` writes ``x.to(torch.float32)`` where the model writes
``x.float()``); the defaults are the spelling of ``fusegraph.models``. A few fields change the
*semantics* instead (``post_mult``, ``sinkhorn_iters``, ``transpose_comb``...): the rejection tests use
them, and a match there would be a wrong rewrite. The choices are resolved in Python at trace time,
so each spelling traces to its own graph.

Sizes are small (hidden 64, T 16, heads 2 x 512) so that a compile takes a second or two on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusegraph.models.kv_cache import (ROW_BYTES, SCALE_BYTES, bytes_per_page, gather_fp8_paged, quantize_fp8_rows,
                                       store_fp8_paged)
from fusegraph.models.rope import rope_frequencies

EPS = 1e-6
FP8_MAX = 448.0
QUANT_EPS = 1e-4
ROPE = 64          # rope channels of a head
NOPE = 448         # nope channels of a 512-wide head
HEAD = NOPE + ROPE
BF16 = torch.bfloat16
F32 = torch.float32


# -- spelled primitives ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Arith:
    """How the elementwise/reduction basics are written (shared by every block)."""

    cast: str = "float"            # float | to | type_as
    square: str = "square"         # square | mul | pow | pow_op
    mean: str = "mean"             # mean | sum_div | torch_mean
    rsqrt: str = "rsqrt"           # rsqrt | recip_sqrt | pow | div_sqrt
    linear: str = "F.linear"       # F.linear | matmul_t | matmul_T | torch.matmul | einsum | mm
    sigmoid: str = "torch"         # torch | F | method | exp
    unsqueeze: str = "unsqueeze"   # unsqueeze | none | view
    swap: bool = False             # operands of commutative ops the other way round
    scalar_left: bool = False      # 2.0 * x, eps + x


def f32(a: Arith, x: Tensor, like: Tensor) -> Tensor:
    """x as fp32; ``like`` is some fp32 tensor for ``type_as``."""
    if a.cast == "to":
        return x.to(torch.float32)
    if a.cast == "type_as":
        return x.type_as(like)
    return x.float()


def mean_square(a: Arith, v: Tensor) -> Tensor:
    """mean(v^2) over the last axis, keepdim."""
    if a.square == "mul":
        sq = v * v
    elif a.square == "pow":
        sq = v.pow(2)
    elif a.square == "pow_op":
        sq = v ** 2
    else:
        sq = v.square()
    if a.mean == "sum_div":
        return sq.sum(-1, keepdim=True) / v.shape[-1]
    if a.mean == "torch_mean":
        return torch.mean(sq, dim=-1, keepdim=True)
    return sq.mean(-1, keepdim=True)


def add_scalar(a: Arith, x: Tensor, c: float) -> Tensor:
    return c + x if a.scalar_left else x + c


def mul_scalar(a: Arith, x: Tensor, c: float) -> Tensor:
    return c * x if a.scalar_left else x * c


def mul(a: Arith, x: Tensor, y: Tensor) -> Tensor:
    return y * x if a.swap else x * y


def add(a: Arith, x: Tensor, y: Tensor) -> Tensor:
    return y + x if a.swap else x + y


def normalize(a: Arith, v: Tensor, eps: float) -> Tensor:
    """v * rsqrt(mean(v^2) + eps), in the chosen spelling."""
    ms = add_scalar(a, mean_square(a, v), eps)
    if a.rsqrt == "recip_sqrt":
        return mul(a, v, 1 / torch.sqrt(ms))
    if a.rsqrt == "pow":
        return mul(a, v, ms.pow(-0.5))
    if a.rsqrt == "div_sqrt":
        return v / ms.sqrt()
    return mul(a, v, torch.rsqrt(ms))


def rms_norm(a: Arith, x: Tensor, weight: Tensor | None, eps: float, like: Tensor) -> Tensor:
    """The model's RMSNorm (fp32 math, weight last, one bf16 rounding)."""
    v = normalize(a, f32(a, x, like), eps)
    if weight is not None:
        v = mul(a, v, weight)
    return v.to(torch.bfloat16)


def linear(a: Arith, x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T."""
    if a.linear == "matmul_t":
        return x @ w.t()
    if a.linear == "torch.matmul":
        return torch.matmul(x, w.transpose(0, 1))
    if a.linear == "einsum":
        return torch.einsum("tk,nk->tn", x, w)
    if a.linear == "matmul_T":  # the .T attribute (a getattr node in the trace)
        return x @ w.T
    if a.linear == "mm":
        return torch.mm(x, w.t())
    return F.linear(x, w)


def sigmoid(a: Arith, z: Tensor) -> Tensor:
    if a.sigmoid == "F":
        return F.sigmoid(z)
    if a.sigmoid == "method":
        return z.sigmoid()
    if a.sigmoid == "exp":
        return 1.0 / (1.0 + torch.exp(-z))
    return torch.sigmoid(z)


def unsqueeze(a: Arith, x: Tensor, dim: int, ndim: int) -> Tensor:
    """Insert a unit axis at ``dim`` (< 0) of an ``ndim``-D x (the rank is given: a traced x has none)."""
    at = ndim + 1 + dim
    if a.unsqueeze == "none":
        return x[(slice(None),) * at + (None,)]
    if a.unsqueeze == "view":  # sizes spelled out (a traced shape cannot be unpacked)
        sizes = [x.size(i) for i in range(ndim)]
        sizes.insert(at, 1)
        return x.view(*sizes)
    return x.unsqueeze(dim)


# -- RoPE and FP8 -----------------------------------------------------------------------------------
def rope(form: str, a: Arith, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Interleaved RoPE of fp32 ``x[..., 64]`` by cos/sin (broadcast against x[..., ::2])."""
    if form == "unbind":
        x0, x1 = x.view(x.shape[:-1] + (ROPE // 2, 2)).unbind(-1)
    elif form == "view_select":
        pairs = x.reshape(x.shape[:-1] + (ROPE // 2, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
    else:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    if a.swap:
        y0 = -(sin * x1) + cos * x0
        y1 = cos * x1 + sin * x0
    else:
        y0 = x0 * cos - x1 * sin
        y1 = x0 * sin + x1 * cos
    if form == "empty_like":
        out = torch.empty_like(x)
        out[..., 0::2] = y0
        out[..., 1::2] = y1
        return out
    if form == "unbind":
        return torch.stack((y0, y1), dim=-1).view(x.shape)
    if form == "view_select":
        return torch.cat([y0.unsqueeze(-1), y1.unsqueeze(-1)], -1).reshape(x.shape)
    return torch.stack([y0, y1], -1).flatten(-2)


def split_rope(form: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """(nope, rope) parts of the last axis."""
    if form == "pos_slice":
        return x[..., :NOPE], x[..., NOPE:]
    if form == "split":
        nope, rp = torch.split(x, [x.shape[-1] - ROPE, ROPE], dim=-1)
        return nope, rp
    if form == "narrow":
        n = x.shape[-1] - ROPE
        return x.narrow(-1, 0, n), x.narrow(-1, n, ROPE)
    return x[..., :-ROPE], x[..., -ROPE:]


def fp8_quant_dequant(form: str, x: Tensor, eps: float) -> Tensor:
    """bf16 FP8 e4m3 quant-dequant of ``x [T, 448]`` in tiles of 64 with power-of-two scales."""
    if form == "view_pow2":
        t = x.float().view(x.shape[0], -1, 64)
        amax = torch.clamp_min(t.abs().max(dim=-1, keepdim=True).values, eps)
        scale = 2.0 ** torch.ceil(torch.log2(amax / FP8_MAX))
        q = torch.clamp(t / scale, min=-FP8_MAX, max=FP8_MAX).to(torch.float8_e4m3fn).float()
        return (scale * q).reshape(x.shape).to(torch.bfloat16)
    tiles = x.float().unflatten(-1, (-1, 64))
    amax = tiles.abs().amax(-1, keepdim=True).clamp(min=eps)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    q = (tiles / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    return (q * scale).to(torch.bfloat16).flatten(-2)


def rope_tables(max_pos: int) -> tuple[Tensor, Tensor]:
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32), rope_frequencies(ROPE, 10000.0))
    return angles.cos(), angles.sin()


# -- mHC ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MHCSpelling:
    arith: Arith = field(default_factory=Arith)
    flatten: str = "flatten"        # flatten | reshape | view
    cast_first: bool = False        # cast the [T, C, D] residual before flattening it
    split: str = "slice"            # slice | split | chunk
    sinkhorn: str = "model"         # model | loop_if | manual_softmax | no_keepdim | reciprocal
    collapse: str = "broadcast"     # broadcast | einsum | bmm | loop
    post: str = "broadcast"         # broadcast | einsum | matmul_t | bmm | loop
    head_scale: str = "vector"      # vector (scale [1] broadcast) | index (scale[0])
    sublayers: int = 1              # 2: the first post feeds the second pre (mhc_post_pre)
    # semantics (the model's values by default; anything else must not match)
    hc_mult: int = 4
    rms_eps: float = EPS            # hc_pre's eps
    head_rms_eps: float = EPS       # hc_head's eps
    norm_eps: float = EPS           # the attn-norm after hc_pre and the final norm after hc_head
    hc_eps_after_pre: bool = True
    hc_eps_in_head: bool = True
    post_mult: float = 2.0
    sinkhorn_iters: int = 20
    sinkhorn_first: str = "softmax"  # softmax | sigmoid
    transpose_comb: bool = True


class MHCBlock(nn.Module):
    """residual bf16 [T, C, D] -> (pre+norm -> GEMM -> post) x sublayers -> hc_head + final norm."""

    def __init__(self, sp: MHCSpelling, dim: int = 64, tokens: int = 16, seed: int = 0):
        super().__init__()
        self.sp, self.dim, self.tokens = sp, dim, tokens
        c = sp.hc_mult
        n3, k = c * (2 + c), c * dim
        g = torch.Generator().manual_seed(seed)
        for i in range(sp.sublayers):
            self.register_parameter(f"fn{i}", nn.Parameter(torch.randn(n3, k, generator=g) / k ** 0.5))
            self.register_parameter(f"scale{i}", nn.Parameter(torch.rand(3, generator=g) + 0.5))
            self.register_parameter(f"base{i}", nn.Parameter(torch.randn(n3, generator=g) * 0.5))
            self.register_parameter(f"norm{i}", nn.Parameter((1 + 0.2 * torch.randn(dim, generator=g)).to(BF16)))
            self.register_parameter(f"w{i}", nn.Parameter((torch.randn(dim, dim, generator=g) / dim ** 0.5).to(BF16)))
        self.head_fn = nn.Parameter(torch.randn(c, k, generator=g) / k ** 0.5)
        self.head_scale = nn.Parameter(torch.rand(1, generator=g) + 0.5)
        self.head_base = nn.Parameter(torch.randn(c, generator=g) * 0.5)
        self.final_norm = nn.Parameter((1 + 0.2 * torch.randn(dim, generator=g)).to(BF16))

    def example_inputs(self, seed: int = 1) -> tuple[Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(self.tokens, self.sp.hc_mult, self.dim, generator=g).to(BF16),)

    # -- pieces --
    def _flat_f32(self, x: Tensor, like: Tensor) -> Tensor:
        sp, a = self.sp, self.sp.arith
        if sp.cast_first:
            x = f32(a, x, like)
        if sp.flatten == "reshape":
            x = x.reshape(x.shape[0], -1)
        elif sp.flatten == "view":
            x = x.view(x.size(0), x.size(1) * x.size(2))
        else:
            x = x.flatten(1)
        return x if sp.cast_first else f32(a, x, like)

    def _split(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pre, post, comb) parts of the last axis of a [.., C*(2+C)] value."""
        c, form = self.sp.hc_mult, self.sp.split
        if form == "split":
            pre, post, comb = torch.split(v, [c, c, c * c], dim=-1)
            return pre, post, comb
        if form == "chunk":
            parts = v.chunk(2 + c, dim=-1)
            return parts[0], parts[1], torch.cat(parts[2:], dim=-1)
        return v[..., :c], v[..., c:2 * c], v[..., 2 * c:]

    def _sinkhorn(self, logits: Tensor) -> Tensor:
        sp, a = self.sp, self.sp.arith
        eps, iters = EPS, sp.sinkhorn_iters

        def first(l: Tensor) -> Tensor:
            if sp.sinkhorn_first == "sigmoid":
                return sigmoid(a, l)
            if sp.sinkhorn == "manual_softmax":
                e = torch.exp(l - l.amax(dim=-1, keepdim=True))
                return e / e.sum(dim=-1, keepdim=True)
            return F.softmax(l, dim=-1) if sp.sinkhorn == "loop_if" else l.softmax(-1)

        def norm(m: Tensor, dim: int) -> Tensor:
            if sp.sinkhorn == "no_keepdim":
                return m / unsqueeze(a, m.sum(dim) + eps, dim, 2)
            if sp.sinkhorn == "reciprocal":
                return m * torch.reciprocal(m.sum(dim, keepdim=True) + eps)
            return m / (m.sum(dim, keepdim=True) + eps)

        if sp.sinkhorn == "loop_if":
            comb = logits
            for i in range(iters):
                if i == 0:
                    comb = add_scalar(a, first(comb), eps)
                else:
                    comb = norm(comb, -1)
                comb = norm(comb, -2)
            return comb
        comb = add_scalar(a, first(logits), eps)
        comb = norm(comb, -2)
        for _ in range(iters - 1):
            comb = norm(comb, -1)
            comb = norm(comb, -2)
        return comb

    def _collapse(self, weights: Tensor, x3: Tensor) -> Tensor:
        """sum_c weights[:, c] * x3[:, c] -> bf16 [T, D]."""
        a, form = self.sp.arith, self.sp.collapse
        if form == "einsum":
            y = torch.einsum("tc,tcd->td", weights, x3)
        elif form == "bmm":
            y = torch.bmm(weights.unsqueeze(1), x3).squeeze(1)
        elif form == "loop":
            y = weights[:, 0:1] * x3[:, 0]
            for c in range(1, self.sp.hc_mult):
                y = y + weights[:, c:c + 1] * x3[:, c]
        else:
            y = (mul(a, unsqueeze(a, weights, -1, 2), x3)).sum(1)
        return y.to(torch.bfloat16)

    def hc_pre(self, x: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
        sp, a, c = self.sp, self.sp.arith, self.sp.hc_mult
        fn, scale, base = getattr(self, f"fn{i}"), getattr(self, f"scale{i}"), getattr(self, f"base{i}")
        xf = self._flat_f32(x, fn)
        mixes = normalize_mix(a, xf, fn, sp.rms_eps)
        m_pre, m_post, m_comb = self._split(mixes)
        b_pre, b_post, b_comb = self._split(base)
        pre = sigmoid(a, add(a, mul(a, m_pre, scale[0]), b_pre))
        if sp.hc_eps_after_pre:
            pre = add_scalar(a, pre, EPS)
        post = mul_scalar(a, sigmoid(a, add(a, mul(a, m_post, scale[1]), b_post)), sp.post_mult)
        logits = add(a, mul(a, m_comb.reshape(-1, c, c), scale[2]), b_comb.view(c, c))
        comb = self._sinkhorn(logits)
        h = self._collapse(pre, xf.view(x.shape) if not sp.cast_first else xf.view_as(x))
        return rms_norm(a, h, getattr(self, f"norm{i}"), sp.norm_eps, fn), post, comb

    def hc_post(self, f: Tensor, x: Tensor, post: Tensor, comb: Tensor) -> Tensor:
        a, form = self.sp.arith, self.sp.post
        if not self.sp.transpose_comb:
            carried = torch.matmul(comb, x.float())
        elif form == "einsum":
            carried = torch.einsum("tjk,tjd->tkd", comb, x.float())
        elif form == "matmul_t":
            carried = torch.matmul(comb.transpose(-1, -2), x.float())
        elif form == "bmm":
            carried = torch.bmm(comb.mT, f32(a, x, comb))
        elif form == "loop":
            rows = []
            for k in range(self.sp.hc_mult):
                acc = comb[:, 0, k:k + 1] * x[:, 0]
                for j in range(1, self.sp.hc_mult):
                    acc = acc + comb[:, j, k:k + 1] * x[:, j]
                rows.append(acc)
            carried = torch.stack(rows, 1)
        else:
            carried = (unsqueeze(a, comb, -1, 3) * unsqueeze(a, x, -2, 3)).sum(dim=-3)
        mixed = mul(a, unsqueeze(a, post, -1, 2), unsqueeze(a, f, -2, 2))
        return add(a, mixed, carried).to(torch.bfloat16)

    def hc_head(self, x: Tensor) -> Tensor:
        sp, a = self.sp, self.sp.arith
        xf = self._flat_f32(x, self.head_fn)
        mixes = normalize_mix(a, xf, self.head_fn, sp.head_rms_eps)
        scale = self.head_scale[0] if sp.head_scale == "index" else self.head_scale
        pre = sigmoid(a, add(a, mul(a, mixes, scale), self.head_base))
        if sp.hc_eps_in_head:
            pre = add_scalar(a, pre, EPS)
        h = self._collapse(pre, xf.view(x.shape) if not sp.cast_first else xf.view_as(x))
        return rms_norm(a, h, self.final_norm, sp.norm_eps, self.head_fn)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.sp.sublayers):
            h, post, comb = self.hc_pre(x, i)
            f = linear(self.sp.arith, h, getattr(self, f"w{i}"))
            x = self.hc_post(f, x, post, comb)
        return self.hc_head(x)


def normalize_mix(a: Arith, xf: Tensor, fn: Tensor, eps: float) -> Tensor:
    """(xf @ fn^T) * rsqrt(mean(xf^2) + eps): the rms factor applied after the GEMM, as DSV4 does."""
    ms = add_scalar(a, mean_square(a, xf), eps)
    mm = linear(a, xf, fn)
    if a.rsqrt == "recip_sqrt":
        return mul(a, mm, 1 / torch.sqrt(ms))
    if a.rsqrt == "pow":
        return mul(a, mm, ms.pow(-0.5))
    if a.rsqrt == "div_sqrt":
        return mm / torch.sqrt(ms)
    return mul(a, mm, torch.rsqrt(ms))


# -- q / kv paths -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttnSpelling:
    arith: Arith = field(default_factory=Arith)
    heads: str = "unflatten"        # unflatten | view | reshape
    split: str = "neg_slice"        # neg_slice | pos_slice | split | narrow
    rope: str = "stack"             # stack | empty_like | unbind | view_select
    cos_axis: str = "unsqueeze"     # how cos/sin get their head axis: unsqueeze | none | view
    fp8: str = "model"              # model | view_pow2
    gather: str = "index"           # index | index_select
    # semantics
    q_eps: float = EPS
    kv_eps: float = EPS


class AttnBlock(nn.Module):
    """x bf16 [T, D], positions [T] -> (q bf16 [T, 2, 512], k_nope bf16 [T, 448], k_rope bf16 [T, 64])."""

    def __init__(self, sp: AttnSpelling, dim: int = 64, heads: int = 2, tokens: int = 16, max_pos: int = 64,
                 seed: int = 0):
        super().__init__()
        self.sp, self.dim, self.heads, self.tokens = sp, dim, heads, tokens
        g = torch.Generator().manual_seed(seed)
        self.wq = nn.Parameter((torch.randn(heads * HEAD, dim, generator=g) / dim ** 0.5).to(BF16))
        self.wkv = nn.Parameter((torch.randn(HEAD, dim, generator=g) / dim ** 0.5).to(BF16))
        self.kv_norm = nn.Parameter((1 + 0.2 * torch.randn(HEAD, generator=g)).to(BF16))
        cos, sin = rope_tables(max_pos)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def example_inputs(self, seed: int = 1) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.tokens, self.dim, generator=g).to(BF16)
        positions = torch.arange(self.tokens) + int(torch.randint(0, 8, (1,), generator=g))
        return x, positions

    def _head_axis(self, t: Tensor) -> Tensor:
        form = self.sp.cos_axis
        if form == "none":
            return t[:, None, :]
        if form == "view":
            return t.view(t.shape[0], 1, t.shape[1])
        return t.unsqueeze(-2)

    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sp, a = self.sp, self.sp.arith
        if sp.gather == "index_select":
            cos, sin = self.cos_table.index_select(0, positions), self.sin_table.index_select(0, positions)
        else:
            cos, sin = self.cos_table[positions], self.sin_table[positions]

        q = linear(a, x, self.wq)
        if sp.heads == "view":
            q = q.view(q.shape[0], self.heads, HEAD)
        elif sp.heads == "reshape":
            q = q.reshape(-1, self.heads, HEAD)
        else:
            q = q.unflatten(-1, (self.heads, HEAD))
        qf = normalize(a, f32(a, q, cos), sp.q_eps)
        q_nope, q_rope = split_rope(sp.split, qf)
        q_rope = rope(sp.rope, a, q_rope, self._head_axis(cos), self._head_axis(sin))
        q_out = torch.cat([q_nope, q_rope], -1).to(torch.bfloat16)

        kv = linear(a, x, self.wkv)
        kv = rms_norm(a, kv, self.kv_norm, sp.kv_eps, cos)
        kv_nope, kv_rope = split_rope(sp.split, kv)
        k_rope = rope(sp.rope, a, f32(a, kv_rope, cos), cos, sin).to(torch.bfloat16)
        k_nope = fp8_quant_dequant(sp.fp8, kv_nope, QUANT_EPS)
        return q_out, k_nope, k_rope


# -- compressor -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressorSpelling:
    arith: Arith = field(default_factory=Arith)
    ratio: int = 4
    blocks: str = "unflatten"       # unflatten | view | reshape
    overlap: str = "cat"            # cat | pad
    softmax: str = "method"         # method | F | manual
    pool: str = "sum"               # sum | einsum
    table: str = "index"            # index (table[arange(n) * r]) | stride (table[::r][:n])
    rope: str = "stack"
    split: str = "neg_slice"


class CompressorBlock(nn.Module):
    """x bf16 [T, D] -> pooled, normed, roped blocks bf16 [T // r, d]."""

    def __init__(self, sp: CompressorSpelling, dim: int = 64, head_dim: int = 128, tokens: int | None = None,
                 seed: int = 0):
        super().__init__()
        self.sp, self.dim, self.head_dim = sp, dim, head_dim
        self.tokens = tokens or (32 if sp.ratio == 4 else 2 * sp.ratio)
        co = 2 if sp.ratio == 4 else 1
        g = torch.Generator().manual_seed(seed)
        self.wkv = nn.Parameter((torch.randn(co * head_dim, dim, generator=g) / dim ** 0.5).to(BF16))
        self.wgate = nn.Parameter((torch.randn(co * head_dim, dim, generator=g) / dim ** 0.5).to(BF16))
        self.ape = nn.Parameter(torch.randn(sp.ratio, co * head_dim, generator=g) * 0.5)
        self.norm = nn.Parameter((1 + 0.2 * torch.randn(head_dim, generator=g)).to(BF16))
        cos, sin = rope_tables(self.tokens)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def example_inputs(self, seed: int = 1) -> tuple[Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(self.tokens, self.dim, generator=g).to(BF16),)

    def _blocks(self, t: Tensor, n: int) -> Tensor:
        r, form = self.sp.ratio, self.sp.blocks
        if form == "view":
            return t.view(n, r, -1)
        if form == "reshape":
            return t[: n * r].reshape(n, r, t.shape[-1])
        return t[: n * r].unflatten(0, (n, r))

    def _overlap(self, t: Tensor, fill: float) -> Tensor:
        d = self.head_dim
        if self.sp.overlap == "pad":
            prev = F.pad(t[:-1, :, :d], (0, 0, 0, 0, 1, 0), value=fill)
        else:
            prev = torch.cat([t.new_full((1, t.size(1), d), fill), t[:, :, :d]], 0)[: t.size(0)]
        return torch.cat([prev, t[:, :, d:]], 1)

    def _softmax(self, s: Tensor) -> Tensor:
        if self.sp.softmax == "F":
            return F.softmax(s, dim=1)
        if self.sp.softmax == "manual":
            e = torch.exp(s - s.amax(1, keepdim=True))
            return e / e.sum(1, keepdim=True)
        return s.softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        sp, a, r = self.sp, self.sp.arith, self.sp.ratio
        xf = f32(a, x, self.ape)
        kv = linear(a, xf, f32(a, self.wkv, self.ape))
        score = linear(a, xf, f32(a, self.wgate, self.ape))
        n = x.size(0) // r
        kv_b = self._blocks(kv, n)
        score_b = add(a, self._blocks(score, n), self.ape)
        if r == 4:
            kv_b = self._overlap(kv_b, 0.0)
            score_b = self._overlap(score_b, float("-inf"))
        w = self._softmax(score_b)
        pooled = torch.einsum("nrc,nrc->nc", w, kv_b) if sp.pool == "einsum" else mul(a, w, kv_b).sum(dim=1)
        if sp.table == "stride":
            cos, sin = self.cos_table[::r][:n], self.sin_table[::r][:n]
        else:
            pos = torch.arange(n, device=x.device) * r
            cos, sin = self.cos_table[pos], self.sin_table[pos]
        c = rms_norm(a, pooled.to(torch.bfloat16), self.norm, EPS, self.ape)
        nope, rp = split_rope(sp.split, c)
        rp = rope(sp.rope, a, f32(a, rp, self.ape), cos, sin).to(torch.bfloat16)
        return torch.cat([nope, rp], -1)


# -- KV store into the DSV4 paged FP8 cache --------------------------------------------------------
PAGE = 16           # page size of the store blocks' cache
SLOTS = 64          # cache capacity in slots


@dataclass(frozen=True)
class StoreSpelling:
    """How padding rows (loc < 0) of the paged FP8 store are skipped without a data-dependent shape."""

    arith: Arith = field(default_factory=Arith)
    skip: str = "slot0_fill"        # slot0_fill | uint8_accumulate | uint8_accumulate_bare | int32_words


class StoreBlock(nn.Module):
    """The kv path followed by the paged FP8 store of its rows (``kv_norm_rope_quant_store``):
    x bf16 [T, D], positions [T], loc [T] (< 0: padding) -> the stored rows read back, dequantized
    (bf16 [T, 512], zero for padding rows). The cache is the buffer ``pages`` (random bytes)."""

    def __init__(self, sp: StoreSpelling, dim: int = 64, tokens: int = 16, max_pos: int = 64, seed: int = 0):
        super().__init__()
        self.sp, self.dim, self.tokens = sp, dim, tokens
        g = torch.Generator().manual_seed(seed)
        self.wkv = nn.Parameter((torch.randn(HEAD, dim, generator=g) / dim ** 0.5).to(BF16))
        self.kv_norm = nn.Parameter((1 + 0.2 * torch.randn(HEAD, generator=g)).to(BF16))
        cos, sin = rope_tables(max_pos)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)
        pages = torch.randint(0, 256, (SLOTS // PAGE, bytes_per_page(PAGE)), generator=g, dtype=torch.uint8)
        self.register_buffer("pages", pages, persistent=False)

    def example_inputs(self, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """Distinct slots (slot 0 among them), every fourth row padding."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.tokens, self.dim, generator=g).to(BF16)
        positions = torch.arange(self.tokens) + int(torch.randint(0, 8, (1,), generator=g))
        loc = torch.randperm(SLOTS - 1, generator=g)[: self.tokens] + 1
        loc[::4] = -1 - torch.arange(0, self.tokens, 4)
        loc[4 * int(torch.randint(0, self.tokens // 4, (1,), generator=g)) + 1] = 0
        return x, positions, loc

    def forward(self, x: Tensor, positions: Tensor, loc: Tensor) -> Tensor:
        a = self.sp.arith
        cos, sin = self.cos_table[positions], self.sin_table[positions]
        kv = rms_norm(a, linear(a, x, self.wkv), self.kv_norm, EPS, cos)
        kv_nope, kv_rope = split_rope("neg_slice", kv)
        k_rope = rope("stack", a, f32(a, kv_rope, cos), cos, sin).to(torch.bfloat16)
        k_nope = fp8_quant_dequant("model", kv_nope, QUANT_EPS)
        paged_store(self.sp.skip, self.pages, loc, k_nope, k_rope, PAGE)
        rows = gather_fp8_paged(self.pages, loc.clamp_min(0), PAGE)
        return torch.where((loc >= 0).unsqueeze(1), rows, 0.0)


def paged_store(skip: str, cache: Tensor, loc: Tensor, k_nope: Tensor, k_rope: Tensor, page_size: int) -> None:
    """The DSV4 paged FP8 store (spec 4.3) of ``fusegraph.models.kv_cache``, padding rows skipped by

    * ``slot0_fill``: the models' spelling: padding rows go to slot 0 and write the bytes slot 0
      ends with (plain scatters, which Inductor compiles);
    * ``uint8_accumulate``: every row adds ``(new - old) mod 256`` to its bytes, padding rows add 0
      (``index_put_(accumulate=True)`` on the uint8 cache: Inductor's Triton backend cannot compile it,
      uint8 has no atomic add; the models' spelling before the rewrite);
    * ``int32_words``: the same delta trick on the cache viewed as int32 words (576 and 8 bytes are
      whole words), the delta computed in int64 and wrapped to int32."""
    if skip == "slot0_fill":
        store_fp8_paged(cache, loc, k_nope, k_rope, page_size, QUANT_EPS)
        return
    nope_bytes, scale_bytes = quantize_fp8_rows(k_nope, QUANT_EPS)
    row_bytes = torch.cat([nope_bytes, k_rope.contiguous().view(torch.uint8)], -1)
    scale_bytes = torch.cat([scale_bytes, scale_bytes.new_zeros(scale_bytes.size(0), 1)], -1)
    valid = (loc >= 0).unsqueeze(1)
    slot = loc.clamp_min(0)
    page = (slot // page_size).unsqueeze(1)
    row = slot % page_size
    if skip == "int32_words":
        words, w = cache.view(torch.int32), 4
        row_bytes, scale_bytes = row_bytes.view(torch.int32), scale_bytes.view(torch.int32)
    else:
        words, w = cache, 1
    # ``_bare``: a bare torch.arange(n) runs while tracing and becomes a tensor constant of the graph
    def iota(n: int) -> Tensor:
        return torch.arange(n) if skip.endswith("_bare") else torch.arange(n, device=loc.device)

    row_cols = (row * (ROW_BYTES // w)).unsqueeze(1) + iota(ROW_BYTES // w)
    scale_cols = (page_size * ROW_BYTES // w + row * (SCALE_BYTES // w)).unsqueeze(1) + iota(SCALE_BYTES // w)
    for cols, data in ((row_cols, row_bytes), (scale_cols, scale_bytes)):
        old = words[page, cols]
        if skip == "int32_words":
            delta = torch.where(valid, data.long() - old.long(), 0).to(torch.int32)
        else:
            delta = torch.where(valid, data - old, 0).to(torch.uint8)
        words.index_put_((page, cols), delta, accumulate=True)


# -- what a test needs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One spelling of one block, and the sites ``fusegraph.compile`` must find in it."""

    name: str
    build: Callable[[], nn.Module]
    expected: dict[str, int]


MHC_SITES = {"mhc_pre_norm": 1, "mhc_post": 1, "hc_head_norm": 1}
MHC_SITES_2 = {"mhc_pre_norm": 1, "mhc_post_pre": 1, "mhc_post": 1, "hc_head_norm": 1}
ATTN_SITES = {"q_norm_rope": 1, "kv_norm_rope_quant": 1}
POOL_SITES = {"compressor_pool": 1}
STORE_SITES = {"kv_norm_rope_quant_store": 1}


def mhc(name: str, expected: dict[str, int] | None = None, **kw) -> Variant:
    arith = Arith(**kw.pop("arith", {}))
    sp = MHCSpelling(arith=arith, **kw)
    return Variant(name, lambda: MHCBlock(sp), expected or (MHC_SITES_2 if sp.sublayers == 2 else MHC_SITES))


def attn(name: str, expected: dict[str, int] | None = None, **kw) -> Variant:
    arith = Arith(**kw.pop("arith", {}))
    sp = AttnSpelling(arith=arith, **kw)
    return Variant(name, lambda: AttnBlock(sp), expected or ATTN_SITES)


def pool(name: str, expected: dict[str, int] | None = None, **kw) -> Variant:
    arith = Arith(**kw.pop("arith", {}))
    sp = CompressorSpelling(arith=arith, **kw)
    return Variant(name, lambda: CompressorBlock(sp), expected or POOL_SITES)


def store(name: str, expected: dict[str, int] | None = None, **kw) -> Variant:
    arith = Arith(**kw.pop("arith", {}))
    sp = StoreSpelling(arith=arith, **kw)
    return Variant(name, lambda: StoreBlock(sp), expected or STORE_SITES)


def rel_l2(got: Tensor, want: Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def assert_close_bf16(got, want, rel: float = 2 ** -7, ulps: float = 2.0, what: str = "") -> None:
    """Every output within bf16 tolerance of the eager one: rel L2 <= ``rel`` and, per element,
    at most ``ulps`` bf16 ulps measured at the tensor's scale (``fusegraph.tolerances``' rule)."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, eager has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what} output {i}: {g.shape}/{g.dtype} vs {w.shape}/{w.dtype}"
        assert torch.isfinite(g.float()).all() == torch.isfinite(w.float()).all(), f"{what} output {i}: non-finite values"
        err = rel_l2(g, w)
        assert err <= rel, f"{what} output {i}: rel L2 {err:.3g} > {rel:.3g}"
        if ulps is not None:
            wd = w.double()
            scale = torch.maximum(wd.abs(), wd.pow(2).mean().sqrt())
            worst = float(((g.double() - wd).abs() / (scale * 2.0 ** -8)).max()) if w.numel() else 0.0
            assert worst <= ulps, f"{what} output {i}: {worst:.2f} bf16 ulps > {ulps}"


# -- the same blocks through fusegraph.models' own functions (the spelling every variant must equal) --
def reference_forward(block: nn.Module, *inputs: Tensor):
    """``block``'s math written with ``fusegraph.models`` (hc_pre, hc_post, hc_head, rms_norm,
    q_norm_rope, kv_norm_rope_quant, compressor_pool) and the block's own parameters and constants.
    A variant whose eager output differs from this is not a spelling but a different computation."""
    from fusegraph.models import attention as mattn
    from fusegraph.models import compressor as mcomp
    from fusegraph.models import layers, mhc as mmhc

    if isinstance(block, MHCBlock):
        sp, (x,) = block.sp, inputs
        for i in range(sp.sublayers):
            fn, scale, base = (getattr(block, f"{n}{i}") for n in ("fn", "scale", "base"))
            h, post, comb = mmhc.hc_pre(x, fn, scale, base, sp.hc_mult, EPS, EPS, 20, 2.0)
            f = F.linear(layers.rms_norm(h, getattr(block, f"norm{i}"), EPS), getattr(block, f"w{i}"))
            x = mmhc.hc_post(f, x, post, comb)
        h = mmhc.hc_head(x, block.head_fn, block.head_scale, block.head_base, EPS, EPS)
        return layers.rms_norm(h, block.final_norm, EPS)
    if isinstance(block, AttnBlock):
        x, positions = inputs
        cos, sin = block.cos_table[positions], block.sin_table[positions]
        q = F.linear(x, block.wq).unflatten(-1, (block.heads, HEAD))
        q = mattn.q_norm_rope(q, cos, sin, EPS, ROPE)
        k_nope, k_rope = mattn.kv_norm_rope_quant(F.linear(x, block.wkv), block.kv_norm, cos, sin, EPS, QUANT_EPS, ROPE)
        return q, k_nope, k_rope
    if isinstance(block, CompressorBlock):
        (x,) = inputs
        r = block.sp.ratio
        kv = F.linear(x.float(), block.wkv.float())
        score = F.linear(x.float(), block.wgate.float())
        pos = torch.arange(x.size(0) // r) * r
        return mcomp.compressor_pool(kv, score, block.ape, block.norm, block.cos_table[pos], block.sin_table[pos],
                                     r, EPS, block.head_dim, ROPE)
    if isinstance(block, StoreBlock):
        x, positions, loc = inputs
        cos, sin = block.cos_table[positions], block.sin_table[positions]
        k_nope, k_rope = mattn.kv_norm_rope_quant(F.linear(x, block.wkv), block.kv_norm, cos, sin, EPS, QUANT_EPS, ROPE)
        pages = block.pages.clone()
        store_fp8_paged(pages, loc, k_nope, k_rope, PAGE, QUANT_EPS)
        return torch.where((loc >= 0).unsqueeze(1), gather_fp8_paged(pages, loc.clamp_min(0), PAGE), 0.0)
    raise TypeError(type(block).__name__)
