"""The PyTorch backend (CPU or CUDA).

Same semantics as :mod:`mergec.backends.reference` (its module docstring lists every method's
rules); this module is the only place in mergec that imports torch. Random numbers come from
:mod:`mergec.ops.random` (numpy) and are moved to the device, so masks equal the reference's
for the same seed. Steps that feed a discrete decision (sign election, variance ranking,
DELLA probabilities) use the same sequence of elementwise operations as the reference (true
divisions included, see ``_rescale``), so the decisions are bit-identical; reductions
accumulate in float64 (in a different order than numpy's, so norms may differ in the last
bits). Top-k thresholds come from a selection (numpy's partition on CPU, ``torch.topk`` on the
smaller side elsewhere), never from a full sort.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mergec.ops import random as rnd

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
        thr = torch.from_numpy(np.partition(host, n - k)[n - k: n - k + 1]).reshape(())
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


def _rank_ascending(mag_rows: Tensor) -> Tensor:
    """Per row rank of the magnitude, 0 smallest; equal values: the lower index ranks higher."""
    _, order = torch.sort(-mag_rows, dim=-1, stable=True)  # descending, ties by index
    n = mag_rows.shape[-1]
    pos = torch.empty_like(order)
    src = torch.arange(n, device=mag_rows.device).expand_as(order)
    pos.scatter_(-1, order, src)
    return (n - 1) - pos


def _sum_f64(x: Tensor) -> float:
    return float(torch.sum(x, dtype=torch.float64).item())


def _abs_sum64(x: Tensor) -> float:
    """L1 norm summed per row, then over rows (:func:`mergec.backends.base.total`)."""
    rows = x.shape[0] if x.dim() >= 2 else 1
    part = x.reshape(rows, -1).to(torch.float64).abs().sum(dim=1).cpu().numpy()
    return float(B.total([part]))


def _dot_t(a: Tensor, b: Tensor) -> Tensor:
    return torch.sum(a * b, dtype=torch.float64)


def _row_dot(a: Tensor, b: Tensor) -> np.ndarray:
    return torch.sum(a * b, dim=-1, dtype=torch.float64).cpu().numpy()


def _gram(xs: Sequence[Tensor]) -> np.ndarray:
    n = len(xs)
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    vals = torch.stack([_dot_t(xs[i], xs[j]) for i, j in pairs]).cpu().numpy()
    g = np.zeros((n, n), dtype=np.float64)
    for (i, j), v in zip(pairs, vals):
        g[i, j] = g[j, i] = v
    return g


def _rescale(kept: Tensor, orig: Tensor, mode: str, inverse_of: Any, method: str) -> Tensor:
    if mode == "inverse":
        if not isinstance(inverse_of, Tensor):
            # CUDA divides by a Python number as a multiply by its reciprocal; a 0-d device
            # tensor gets a true (IEEE) division, the reference's result bit for bit
            inverse_of = torch.full((), float(inverse_of), dtype=torch.float32,
                                    device=kept.device)
        return kept / inverse_of
    if mode == "l1":
        s_kept = _abs_sum64(kept)
        if s_kept == 0.0:
            return torch.zeros_like(kept)
        return kept * float(_abs_sum64(orig) / s_kept)
    if mode == "none":
        return kept
    raise ValueError(f"method {method}: unknown rescale {mode!r}")


class TorchBackend:
    """PyTorch backend; ``device`` is "cpu", "cuda" ("gpu"), "cuda:N" or "auto" (CUDA if any)."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        self.device = _resolve_device(device)
        self._kernels = B.kernel_table(self)

    # contract ------------------------------------------------------------------------------

    @property
    def method_names(self) -> frozenset[str]:
        return frozenset(self._kernels)

    def _zero(self) -> Tensor:
        return torch.zeros((), dtype=torch.float32, device=self.device)

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
            y = x.to(torch.bfloat16).cpu()  # round to nearest even on the device
            return y.view(torch.int16).numpy().copy().view(B.storage_dtype("bfloat16"))
        y = x.to(target)
        if y.device.type == "cpu":
            return y.numpy().copy()
        return y.cpu().numpy()

    def weighted_sum(self, terms: Sequence[tuple[Tensor, float]]) -> Tensor:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        x0, c0 = terms[0]
        acc = x0 * float(c0)
        for x, c in terms[1:]:
            acc.add_(x * float(c))
        return acc

    def weighted_sum64(self, terms: Sequence[tuple[Tensor, float]]) -> Tensor:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        acc = terms[0][0].to(torch.float64) * float(terms[0][1])
        for x, c in terms[1:]:
            acc.add_(x.to(torch.float64) * float(c))
        return acc

    def to_float32(self, x: Tensor) -> Tensor:
        return x if x.dtype == torch.float32 else x.to(torch.float32)

    def lowrank(self, b: Tensor, a: Tensor, scale: float, transpose: bool) -> Tensor:
        d = torch.matmul(b.float(), a.float()) * float(scale)
        return d.t().contiguous() if transpose else d

    def zeros(self, shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(tuple(shape), dtype=torch.float32, device=self.device)

    def method(self, name: str, inputs: Sequence[Tensor], params: Mapping[str, Any],
               seed: int | None) -> Tensor:
        kernel = self._kernels.get(name)
        if kernel is None:
            raise NotImplementedError(f"the {self.name} backend has no kernel for method {name}")
        xs = [x if x.dtype == torch.float32 else x.float() for x in inputs]
        return kernel(xs, params, seed)

    # linear family -------------------------------------------------------------------------

    def _combine(self, xs, weights, normalize, scale, method):
        total = B.sum_of_weights(weights, method) if normalize else 1.0
        return self.weighted_sum([(x, scale * w / total) for x, w in zip(xs, weights)])

    def _linear(self, xs, p, seed):
        B.check_inputs("linear", [tuple(x.shape) for x in xs])
        w = B.per_input(p, "weight", len(xs), "linear")
        return self._combine(xs, w, bool(B.scalar(p, "normalize", "linear")), 1.0, "linear")

    def _task_arithmetic(self, xs, p, seed):
        m = "task_arithmetic"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        w = B.per_input(p, "weight", len(xs), m)
        return self._combine(xs, w, bool(B.scalar(p, "normalize", m)),
                             float(B.scalar(p, "lambda", m)), m)

    def _passthrough(self, xs, p, seed):
        B.check_inputs("passthrough", [tuple(x.shape) for x in xs], 1, 1)
        scale = float(B.scalar(p, "scale", "passthrough"))
        return xs[0] * scale if scale != 1.0 else xs[0].clone()

    # spherical -----------------------------------------------------------------------------

    def _slerp(self, xs, p, seed):
        B.check_inputs("slerp", [tuple(x.shape) for x in xs], 2, 2)
        return self._slerp_whole(xs[0], xs[1], float(B.scalar(p, "t", "slerp")),
                                 float(B.scalar(p, "epsilon", "slerp")))

    def _slerp_whole(self, a, b, t, eps):
        g = torch.stack([_dot_t(a, a), _dot_t(b, b), _dot_t(a, b)]).cpu().numpy()
        c0, c1 = B.slerp_coefficients(g[0], g[1], g[2], t, eps)
        return self.weighted_sum([(a, float(c0[0])), (b, float(c1[0]))])

    def _nuslerp(self, xs, p, seed):
        m = "nuslerp"
        B.check_inputs(m, [tuple(x.shape) for x in xs], 2, 2)
        w = B.per_input(p, "weight", 2, m)
        if w[0] + w[1] == 0.0:
            raise ValueError(f"method {m}: the two weights sum to 0 (weights {list(w)})")
        t = w[1] / (w[0] + w[1])
        eps = float(B.scalar(p, "epsilon", m))
        a, b = xs
        if bool(B.scalar(p, "flatten", m)) or a.dim() < 2:
            return self._slerp_whole(a, b, t, eps)
        row_wise = bool(B.scalar(p, "row_wise", m))
        if not row_wise:
            a, b = a.transpose(-1, -2), b.transpose(-1, -2)
        c0, c1 = B.slerp_coefficients(_row_dot(a, a), _row_dot(b, b), _row_dot(a, b), t, eps)
        c0 = torch.from_numpy(c0.astype(np.float32)).to(self.device)[..., None]
        c1 = torch.from_numpy(c1.astype(np.float32)).to(self.device)[..., None]
        out = c0 * a + c1 * b
        if not row_wise:
            out = out.transpose(-1, -2)
        return out.contiguous()

    def _spherical(self, xs, p, method, zero_norm, max_iter, tol):
        B.check_inputs(method, [tuple(x.shape) for x in xs], 2)
        w = B.per_input(p, "weight", len(xs), method)
        coef = B.spherical_mean_coefficients(_gram(xs), w, zero_norm, max_iter, tol, method)
        return self.weighted_sum([(x, float(c)) for x, c in zip(xs, coef)])

    def _multislerp(self, xs, p, seed):
        return self._spherical(xs, p, "multislerp", float(B.scalar(p, "epsilon", "multislerp")),
                               1, 0.0)

    def _karcher(self, xs, p, seed):
        return self._spherical(xs, p, "karcher", B.ZERO_NORM,
                               int(B.scalar(p, "max_iter", "karcher")),
                               float(B.scalar(p, "tol", "karcher")))

    # sparsify + consensus ------------------------------------------------------------------

    def _disjoint(self, taus, weights, elect, weighted_elect, normalize, method):
        zero = self._zero()
        vote = torch.zeros(taus[0].shape, dtype=torch.float64, device=self.device)
        for tau, w in zip(taus, weights):
            if elect == "mass":
                t64 = tau.to(torch.float64)
                vote += t64 * float(np.float32(w)) if weighted_elect else t64
            elif elect == "count":
                vote += torch.sign(tau).to(torch.float64)
            else:
                raise ValueError(f"method {method}: unknown elect {elect!r}")
        gamma = torch.sign(vote).to(torch.float32)
        num = torch.zeros_like(taus[0])
        den = torch.zeros_like(taus[0])
        for tau, w in zip(taus, weights):
            w32 = float(np.float32(w))
            agree = (torch.sign(tau) == gamma) & (gamma != 0)
            num = num + torch.where(agree, tau * w32, zero)
            den = den + torch.where(agree, torch.full((), w32, device=self.device), zero)
        if not normalize:
            return num
        ok = den != 0
        return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), zero)

    def _consensus(self, taus, p, method):
        w = B.per_input(p, "weight", len(taus), method)
        merged = self._disjoint(taus, w, str(B.scalar(p, "elect", method)),
                                bool(B.scalar(p, "weighted_elect", method)),
                                bool(B.scalar(p, "normalize", method)), method)
        lam = float(B.scalar(p, "lambda", method))
        return merged * lam if lam != 1.0 else merged

    def _ties(self, xs, p, seed):
        m = "ties"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        zero = self._zero()
        trim = str(B.scalar(p, "trim", m))
        if "masks" in p:  # trim masks made by the executor for a block of rows
            taus = [torch.where(torch.from_numpy(np.asarray(k)).to(self.device), x, zero)
                    for x, k in zip(xs, p["masks"])]
        elif trim == "tensor":
            dens = B.per_input(p, "density", len(xs), m)
            taus = [torch.where(topk_mask(x.abs(), B.keep_count(d, x.numel())), x, zero)
                    for x, d in zip(xs, dens)]
        elif trim == "model":
            if "thresholds" not in p:
                raise ValueError("method ties with trim=\"model\" needs the per-input parameter "
                                 "'thresholds' (magnitudes computed over the whole model)")
            thr = B.per_input(p, "thresholds", len(xs), m)
            taus = [torch.where(x.abs() >= float(np.float32(t)), x, zero)
                    for x, t in zip(xs, thr)]
        else:
            raise ValueError(f"method ties: unknown trim {trim!r}")
        return self._consensus(taus, p, m)

    def _dare(self, xs, p, seed, method):
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        zero = self._zero()
        out = []
        for i, (x, d) in enumerate(zip(xs, dens)):
            if d >= 1.0:
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            mask = torch.from_numpy(np.asarray(p["masks"][i]) if "masks" in p else
                                    rnd.keep_mask(seed, i, tuple(x.shape), d)).to(self.device)
            kept = torch.where(mask, x, zero)
            if mode == "l1" and "l1_scales" in p:  # the whole tensor's L1 ratio, for a block
                out.append(kept * p["l1_scales"][i] if p["l1_scales"][i] else
                           torch.zeros_like(kept))
                continue
            out.append(_rescale(kept, x, mode, float(np.float32(d)), method))
        return out

    def _dare_linear(self, xs, p, seed):
        m = "dare_linear"
        taus = self._dare(xs, p, seed, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    def _dare_ties(self, xs, p, seed):
        return self._consensus(self._dare(xs, p, seed, "dare_ties"), p, "dare_ties")

    def _breadcrumbs_masks(self, xs, p, method):
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        gams = B.per_input(p, "gamma", len(xs), method)
        zero = self._zero()
        out = []
        for x, d, g in zip(xs, dens, gams):
            top, kept = B.breadcrumbs_counts(d, g, x.numel())
            mag = x.abs()
            mask = topk_mask(mag, top + kept)
            if top:
                mask = mask & ~topk_mask(mag, top)
            out.append(torch.where(mask, x, zero))
        return out

    def _breadcrumbs(self, xs, p, seed):
        m = "breadcrumbs"
        taus = self._breadcrumbs_masks(xs, p, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    def _breadcrumbs_ties(self, xs, p, seed):
        m = "breadcrumbs_ties"
        return self._consensus(self._breadcrumbs_masks(xs, p, m), p, m)

    def _della_masks(self, xs, p, seed, method):
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        epss = B.per_input(p, "epsilon", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        zero = self._zero()
        one = torch.ones((), dtype=torch.float32, device=self.device)
        out = []
        for i, (x, d, e) in enumerate(zip(xs, dens, epss)):
            shape = tuple(x.shape)
            rows, n = B.rows_shape(shape)
            offset, step = B.della_line(d, e, n)
            if x.numel() == 0 or (offset >= 1.0 and step == 0.0):
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            xr = x.reshape(rows, n)
            r = _rank_ascending(xr.abs()).to(torch.float32)
            off_t = torch.full((), float(offset), dtype=torch.float32, device=self.device)
            step_t = torch.full((), float(step), dtype=torch.float32, device=self.device)
            prob = torch.minimum(off_t + step_t * r, one)
            u = torch.from_numpy(rnd.uniform(seed, i, shape).reshape(rows, n)).to(self.device)
            keep = u < prob
            kept = torch.where(keep, xr, zero)
            safe_p = torch.where(keep, prob, one)
            out.append(_rescale(kept, xr, mode, safe_p, method).reshape(shape))
        return out

    def _della(self, xs, p, seed):
        return self._consensus(self._della_masks(xs, p, seed, "della"), p, "della")

    def _della_linear(self, xs, p, seed):
        m = "della_linear"
        taus = self._della_masks(xs, p, seed, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    # others --------------------------------------------------------------------------------

    def _model_stock(self, xs, p, seed):
        m = "model_stock"
        B.check_inputs(m, [tuple(x.shape) for x in xs], 2)
        n_in = len(xs)
        if bool(B.scalar(p, "filter_wise", m)) and xs[0].dim() >= 2:
            shape = tuple(xs[0].shape)
            rows, n = B.rows_shape(shape)
            xr = [x.reshape(rows, n) for x in xs]
            g = np.zeros((rows, n_in, n_in), dtype=np.float64)
            for i in range(n_in):
                for j in range(i, n_in):
                    g[:, i, j] = g[:, j, i] = _row_dot(xr[i], xr[j])
            t = B.model_stock_ratio(g)
            acc = xr[0]
            for x in xr[1:]:
                acc = acc + x
            coef = torch.from_numpy((t / n_in).astype(np.float32)).to(self.device)[:, None]
            return (acc * coef).reshape(shape)
        t = float(B.model_stock_ratio(_gram(xs)[None])[0])
        return self.weighted_sum([(x, t / n_in) for x in xs])

    def _sce(self, xs, p, seed):
        m = "sce"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        frac = float(B.scalar(p, "select_topk", m))
        k = B.keep_count(frac, xs[0].numel())
        taus = list(xs)
        if k < xs[0].numel():
            acc = xs[0]
            for x in xs[1:]:
                acc = acc + x
            count = torch.full((), float(len(xs)), dtype=torch.float32, device=self.device)
            mean = acc / count  # a true division, as in the reference (see _rescale)
            var = torch.zeros_like(xs[0])
            for x in xs:
                dev = x - mean
                var = var + dev * dev
            mask = topk_mask(var, k)
            zero = self._zero()
            taus = [torch.where(mask, x, zero) for x in xs]
        energy = [_sum_f64(t * t) / max(t.numel(), 1) for t in taus]
        total = sum(energy)
        if total == 0.0:
            return torch.zeros_like(xs[0])
        omega = [e / total for e in energy]
        merged = self._disjoint(taus, omega, "mass", False, True, m)
        lam = float(B.scalar(p, "lambda", m))
        return merged * lam if lam != 1.0 else merged

    def _nearswap(self, xs, p, seed):
        m = "nearswap"
        B.check_inputs(m, [tuple(x.shape) for x in xs], 1, 1)
        t = float(np.float32(float(B.scalar(p, "t", m))))
        tau = xs[0]
        floor = float(np.float32(B.NEARSWAP_FLOOR))
        t_t = torch.full((), t, dtype=torch.float32, device=self.device)
        w = torch.clamp(t_t / torch.clamp(tau.abs(), min=floor), 0.0, 1.0)
        return w * tau
