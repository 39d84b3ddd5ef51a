"""The PyTorch backend (CPU or CUDA): the array primitives in torch.

The only module of mergec that imports torch. Random numbers come from
:mod:`mergec.ops.random` (numpy) and are moved to the device, so masks equal the NumPy
backend's for the same seed. Elementwise operations are the same float32 operations as
numpy's, one rounding each; a division by a number is a true division (CUDA divides by a
Python number as a multiplication by its reciprocal, so numbers become 0-d device tensors
first), so the decisions the methods make (sign election, variance ranking, DELLA
probabilities) are bit-identical. Reductions accumulate in float64 in torch's order, so
norms may differ from numpy's in the last bits. Top-k thresholds come from a selection
(numpy's on the CPU, ``torch.topk`` over the smaller side elsewhere), never a full sort.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mergec.ops import random as rnd
from mergec.ops.select import kth_largest

from . import base as B

Tensor = torch.Tensor

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16, "float64": torch.float64}


def _resolve_device(device: str) -> torch.device:
    if device == "gpu" or device.startswith("gpu:"):  # the recipe language's alias of cuda
        device = "cuda" + device[3:]
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise B.BackendUnavailable(f"torch backend: device {device!r} asked for, but CUDA is "
                                   f"not available")
    return dev


def topk_mask(mag: Tensor, k: int, host_select: bool | None = None) -> Tensor:
    """bool mask of the ``k`` largest entries of ``mag`` (flat), ties by lowest flat index.

    The threshold (the k-th largest value) comes from numpy's partition for CPU tensors
    (``host_select``; faster there) and from ``torch.topk`` over the smaller side elsewhere.
    """
    flat = mag.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones(mag.shape, dtype=torch.bool, device=mag.device)
    if k <= 0:
        return torch.zeros(mag.shape, dtype=torch.bool, device=mag.device)
    if host_select is None:
        host_select = flat.device.type == "cpu"
    if host_select:
        host = flat.detach().contiguous().cpu().numpy()
        thr = torch.from_numpy(np.array([kth_largest(host, k)], dtype=host.dtype)).reshape(())
        thr = thr.to(flat.device)
    elif k <= n - k + 1:  # the k-th largest value, by a selection over the smaller side
        thr = torch.topk(flat, k, largest=True, sorted=False).values.min()
    else:
        thr = torch.topk(flat, n - k + 1, largest=False, sorted=False).values.max()
    gt = flat > thr
    eq = flat == thr
    need = k - int(gt.sum().item())
    if int(eq.sum().item()) > need:
        ctype = torch.int32 if n < 2**31 else torch.int64
        eq = eq & (torch.cumsum(eq.to(ctype), 0) <= need)
    return (gt | eq).reshape(mag.shape)


def rank_ascending(mag_rows: Tensor) -> Tensor:
    """Per row rank of the magnitude, 0 smallest; equal values: the lower index ranks higher."""
    _, order = torch.sort(-mag_rows, dim=-1, stable=True)  # descending, ties by index
    n = mag_rows.shape[-1]
    pos = torch.empty_like(order)
    src = torch.arange(n, device=mag_rows.device).expand_as(order)
    pos.scatter_(-1, order, src)
    return (n - 1) - pos


class TorchBackend:
    """PyTorch backend; ``device`` is "cpu", "cuda" ("gpu"), "cuda:N" or "auto" (CUDA if any)."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        self.device = _resolve_device(device)

    def _num(self, b):
        """A Python number as a 0-d float32 device tensor (true division, no reciprocal)."""
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            return torch.full((), float(b), dtype=torch.float32, device=self.device)
        return b

    # conversion and shape ------------------------------------------------------------------

    def asarray(self, a: np.ndarray) -> Tensor:
        a = np.asarray(a)
        if self.device.type == "cpu":  # a private float32 copy (bf16/f16 exact, f64 rounded)
            return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))
        a = np.asarray(a, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
        with warnings.catch_warnings():  # read-only (memory-mapped) arrays: copied to the device
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(a)
        return host.to(self.device)

    def to_numpy(self, x: Tensor, dtype: str) -> np.ndarray:
        target = _TORCH_DTYPES.get(dtype)
        if target is None:
            B.storage_dtype(dtype)  # raises the error message for unknown names
        x = x.detach()
        if target is torch.bfloat16:
            y = x.to(torch.bfloat16).contiguous().cpu()  # round to nearest even on the device
            return y.view(torch.int16).numpy().copy().view(B.storage_dtype("bfloat16"))
        y = x.to(target).contiguous()
        if y.device.type == "cpu":
            return y.numpy().copy()
        return y.cpu().numpy()

    def host(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def to_float32(self, x: Tensor) -> Tensor:
        return x if x.dtype == torch.float32 else x.to(torch.float32)

    def to_float64(self, x: Tensor) -> Tensor:
        return x.to(torch.float64)

    def copy(self, x: Tensor) -> Tensor:
        return x.clone()

    def zeros(self, shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(tuple(shape), dtype=torch.float32, device=self.device)

    def zeros_like(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def shape(self, x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def size(self, x: Tensor) -> int:
        return int(x.numel())

    def reshape(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        return x.reshape(shape)

    def swapaxes(self, x: Tensor) -> Tensor:
        return x.transpose(-1, -2)

    def transpose(self, x: Tensor) -> Tensor:
        return x.t().contiguous()

    def take(self, x: Tensor, axis: int, start: int, stop: int) -> Tensor:
        return torch.narrow(x, axis, start, stop - start)

    def concat(self, xs, axis: int) -> Tensor:
        return torch.cat(list(xs), dim=axis)

    # arithmetic ----------------------------------------------------------------------------

    def wsum(self, terms: Sequence[tuple[Tensor, float]]) -> Tensor:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        x0, c0 = terms[0]
        acc = x0 * float(c0)
        for x, c in terms[1:]:
            acc.add_(x * float(c))
        return acc

    def wsum64(self, terms: Sequence[tuple[Tensor, float]]) -> Tensor:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        acc = terms[0][0].to(torch.float64) * float(terms[0][1])
        for x, c in terms[1:]:
            acc.add_(x.to(torch.float64) * float(c))
        return acc

    def add(self, a, b):
        return torch.add(self._num(a), self._num(b))

    def sub(self, a, b):
        return torch.sub(self._num(a), self._num(b))

    def mul(self, a, b):
        if isinstance(b, float) and isinstance(a, Tensor) and a.dtype == torch.float64:
            return a * b
        return self._num(a) * b if isinstance(b, float) else self._num(a) * self._num(b)

    def div(self, a, b):
        return torch.div(self._num(a), self._num(b))

    def abs(self, x):
        return x.abs()

    def sign(self, x):
        return torch.sign(x)

    def minimum(self, a, b):
        return torch.minimum(self._num(a), self._num(b))

    def maximum(self, a, b):
        return torch.maximum(self._num(a), self._num(b))

    def clip(self, x, lo: float, hi: float):
        return torch.clamp(x, float(lo), float(hi))

    def scale_rows(self, x, coef: np.ndarray):
        c = torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float32)).to(self.device)
        return c[..., None] * x

    # comparison and selection --------------------------------------------------------------

    def gt(self, a, b):
        return torch.gt(self._num(a), self._num(b)) if not isinstance(b, float) else a > b

    def lt(self, a, b):
        return torch.lt(self._num(a), self._num(b)) if not isinstance(b, float) else a < b

    def ge(self, a, b):
        return torch.ge(self._num(a), self._num(b)) if not isinstance(b, float) else a >= b

    def ne(self, a, b):
        return torch.ne(self._num(a), self._num(b)) if not isinstance(b, float) else a != b

    def and_(self, a, b):
        return a & b

    def or_(self, a, b):
        return a | b

    def not_(self, a):
        return ~a

    def where(self, mask, a, b):
        return torch.where(mask, self._num(a), self._num(b))

    def keep(self, x, mask):
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    # reductions ----------------------------------------------------------------------------

    def sum64(self, x) -> float:
        return float(torch.sum(x, dtype=torch.float64).item())

    def abs_sum64(self, x) -> float:
        return float(B.total([self.abs_rows(x)]))

    def gram(self, xs) -> np.ndarray:
        return B.total([self.gram_rows(xs)])

    def gram_rows(self, xs) -> np.ndarray:
        """Per-row partial inner products (float64 sums of the float32 products), computed
        on the device; one (rows, n, n) array crosses to the host."""
        n = len(xs)
        rows = [x.reshape(x.shape[0] if x.dim() >= 2 else 1, -1) for x in xs]
        out = torch.empty((rows[0].shape[0], n, n), dtype=torch.float64, device=rows[0].device)
        for i in range(n):
            for j in range(i, n):
                part = torch.sum((rows[i] * rows[j]).to(torch.float64), dim=1)
                out[:, i, j] = part
                out[:, j, i] = part
        return out.cpu().numpy()

    def abs_rows(self, x) -> np.ndarray:
        rows = x.shape[0] if x.dim() >= 2 else 1
        return x.reshape(rows, -1).to(torch.float64).abs().sum(dim=1).cpu().numpy()

    def row_dots(self, a, b) -> np.ndarray:
        return torch.sum(a * b, dim=-1, dtype=torch.float64).cpu().numpy()

    # ranking, randomness, linear algebra ---------------------------------------------------

    def topk_mask(self, mag, k: int):
        return topk_mask(mag, k)

    def rank_ascending(self, rows):
        return rank_ascending(rows).to(torch.float32)

    def keep_mask(self, seed: int, stream: int, shape, density: float):
        return self.host(rnd.keep_mask(seed, stream, tuple(shape), density))

    def uniform(self, seed: int, stream: int, shape):
        return self.host(rnd.uniform(seed, stream, tuple(shape)))

    def matmul(self, a, b):
        return torch.matmul(a, b)

    def svd(self, x):
        u, s, vt = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
        return u, s, vt

    def solve(self, a, b):
        return torch.linalg.solve(a.to(torch.float64), b.to(torch.float64))
