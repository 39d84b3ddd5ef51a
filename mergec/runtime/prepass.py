"""Statistics computed before the last pass: over a whole tensor, and over a whole model.

Per tensor (:func:`tensor_stats`): a merge call that needs something of its whole tensor
before it can compute a block of rows gets one pass over the blocks first, in topological
order — the inner products of slerp & co (a weighted sum with coefficients from them),
the thresholds of a TIES trim or a breadcrumbs band on a split tensor, DARE's and DELLA's
L1 norms (and their masks, drawn once). Sums over blocks follow
:func:`mergec.backends.base.total`, so nothing depends on the split. DELLA's masks and
keep probabilities for a block of rows are made here too (:func:`ranked_masks`): its
ranks are per row.

Per model (:func:`compute_model_stats`): TIES with ``trim="model"`` keeps the top
``density`` fraction of a task vector's magnitudes over the whole model. The lowering
leaves a :class:`~mergec.ir.placeholders.ModelTopK` placeholder in such a merge node;
before the output's tensors are written, the exact threshold comes from two streaming
passes over the task vectors (:mod:`mergec.ops.select`), holding one tensor at a time.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from mergec.backends import base as B
from mergec.ir.nodes import Node, topo
from mergec.ir.placeholders import ModelTopK
from mergec.methods import REGISTRY
from mergec.methods.della import keeps_all, ranked_keep
from mergec.methods.spec import keep_count, rows_shape
from mergec.ops.random import keep_mask, keep_mask_rows, uniform, uniform_rows
from mergec.ops.select import bucket_pass, exact_kth_largest, kth_of, magnitude_bits
from mergec.runtime.schedule import ARGS_CACHE_BYTES, call_label, pass_calls

#: the arguments of one merge call, for one block: (block number, rows) -> float32 values
ArgsOf = Callable[[Node, int, "tuple[int, int] | None", "TensorStats"], list]


def host_f32(backend, v) -> np.ndarray:
    """A backend value as a float32 numpy array, without a copy when it already is one
    (the NumPy backend's values; nothing here writes into them)."""
    if isinstance(v, np.ndarray) and v.dtype == np.float32:
        return v
    return np.asarray(backend.to_numpy(backend.to_float32(v), "float32"))


class TensorStats:
    """What the passes before the last one found about the merge calls of one tensor:
    per call, ``{"coeffs": [...]}`` (a weighted sum from inner products), ``{"l1_scales":
    (...)}`` (DARE's L1 rescale) and/or ``{"trims": [...]}`` (TIES thresholds of a tensor
    computed in blocks; for a band, an (upper, lower) pair per input)."""

    def __init__(self) -> None:
        self._by_node: dict[int, dict] = {}
        self.passes: list[str] = []  # the passes run, as the schedule names them

    def get(self, n: Node) -> dict | None:
        return self._by_node.get(id(n))

    def put(self, n: Node, key: str, value) -> None:
        self._by_node.setdefault(id(n), {})[key] = value


class Blocks:
    """Runs a function over the blocks of rows of one tensor, on a pool of threads,
    returning the results in block order."""

    def __init__(self, blocks: list, pool: ThreadPoolExecutor | None) -> None:
        self.blocks, self.pool = blocks, pool

    def map(self, fn, only: list[int] | None = None):
        items = list(enumerate(self.blocks))
        if only is not None:
            items = [items[b] for b in only]
        if self.pool is None or len(items) == 1:
            return [fn(b, rows) for b, rows in items]
        return list(self.pool.map(lambda it: fn(*it), items))


def tensor_stats(root: Node, backend, stats, blocks: Blocks, args_of: ArgsOf
                 ) -> TensorStats | None:
    """One pass over the tensor per merge call that needs whole-tensor statistics, in
    topological order (a later call may depend on an earlier one's result).
    `args_of(call, block, rows, ctx)` evaluates the arguments of a call for one block."""
    calls = pass_calls(root, len(blocks.blocks) > 1)
    if not calls:
        return None
    ctx = TensorStats()
    for n, kind in calls:
        ctx.passes.append(f"{kind} {call_label(n, root)}")
        params = dict(n.attr("params"))
        if stats is not None:
            params = {k: resolve_stats(v, stats) for k, v in params.items()}

        keep_args = n.numel * len(n.args) * 4 <= ARGS_CACHE_BYTES
        cache: dict[int, list] = {}

        def args(b, rows, n=n, keep_args=keep_args, cache=cache):
            if b in cache:
                return cache[b]
            vals = [backend.to_float32(v) for v in args_of(n, b, rows, ctx)]
            if keep_args:
                cache[b] = vals
            return vals

        m = REGISTRY[n.attr("method")]
        if kind == "gram":
            # the partials are computed where the values are; only they reach the host
            parts = blocks.map(lambda b, rows: backend.gram_rows(args(b, rows)))
            ctx.put(n, "coeffs", m.gram_coefficients(params, B.total(parts)))
        elif kind == "topk":
            trims = band_trims if m.traits.masks == "band" else ties_trims
            ctx.put(n, "trims", trims(
                n, params, blocks,
                lambda b, rows: [host_f32(backend, x) for x in args(b, rows)]))
        elif m.traits.masks == "ranked":  # DELLA with an L1 rescale on a split tensor
            masks, scales = ranked_l1(n, params, blocks, args, backend)
            ctx.put(n, "masks", masks)
            ctx.put(n, "l1_scales", scales)
        else:  # DARE with an L1 rescale: the norms of each task vector and of what is kept
            dens = m.args(params, len(n.args)).density
            seed = n.attr("seed")

            def l1(b, rows, n=n, dens=dens, seed=seed, args=args):
                # the norms are summed where the values are (the backend's per-row
                # partials, as its whole-tensor abs_sum64); only the mask travels there
                xs = args(b, rows)
                out = []
                for i, (x, d) in enumerate(zip(xs, dens)):
                    if d >= 1.0:
                        out.append(None)
                        continue
                    mk = (keep_mask(seed, i, n.shape, d) if rows is None else
                          keep_mask_rows(seed, i, n.shape, d, *rows))
                    masks[(b, i)] = np.packbits(mk)  # drawn once: the last pass unpacks them
                    kept = backend.keep(x, backend.host(mk))
                    out.append((backend.abs_rows(x), backend.abs_rows(kept)))
                return out

            masks: dict = {}
            parts = blocks.map(l1)
            ctx.put(n, "masks", masks)
            ctx.put(n, "l1_scales", l1_scales(parts, len(dens)))
        if keep_args:
            ctx.put(n, "args", cache)  # the last pass starts from them
    return ctx


def kept_values(ctx: "TensorStats | None", root: Node, block: int) -> dict | None:
    """Argument values the passes kept for one block, by node (kernels never write
    into their inputs, so the last pass reads them as they are)."""
    if ctx is None:
        return None
    given = {}
    for n in topo(root):
        found = ctx.get(n) if n.op == "merge" else None
        if found and "args" in found and block in found["args"]:
            for a, v in zip(n.args, found["args"][block]):
                given[a] = v
    return given or None


def ties_trims(n: Node, params: dict, blocks: Blocks, args_of) -> list:
    """Per input of a TIES call on a tensor computed in blocks: None (keep all) or
    ``(threshold, allowance per block)`` of its top-k (:func:`topk_trims`)."""

    ks = [keep_count(d, n.numel, params.get("count", "round")) for d in params["density"]]
    return topk_trims(n, list(enumerate(ks)), blocks, args_of)


def band_trims(n: Node, params: dict, blocks: Blocks, args_of) -> list:
    """Per input of a call with masks "band" (breadcrumbs) on a tensor computed in blocks:
    ``(upper, lower)``, the trims (:func:`topk_trims`) of its top-``(top + kept)`` and
    top-``top`` entries (``Traits.band``); the band kept is the first minus the second."""

    m = REGISTRY[n.attr("method")]
    counts = m.traits.band(m.args(params, len(n.args)), n.numel)
    jobs = [(i, k) for i, (top, kept) in enumerate(counts) for k in (top + kept, top)]
    found = topk_trims(n, jobs, blocks, args_of)
    return [(found[2 * i], found[2 * i + 1]) for i in range(len(counts))]


def topk_trims(n: Node, jobs: list, blocks: Blocks, args_of) -> list:
    """Per job ``(input, k)`` of a call on a tensor computed in blocks: None (k covers the
    tensor: keep all) or ``(threshold, allowance per block)`` — the k-th largest magnitude
    of that input over the whole tensor and, for each block, how many of its entries equal
    to the threshold are kept (lowest indices first), so the blocks keep exactly what the
    whole tensor's top-k would (ties by lower flat index). ``k <= 0`` keeps nothing: a
    threshold above every bit pattern, allowances 0.

    Exact, by selection, never a sort of the tensor: a sample (evenly spread blocks, every
    s-th entry) brackets the k-th magnitude; one pass counts the entries above the bracket
    and collects those inside it, from which the k-th is selected. If the sample misled
    (the k-th is outside the bracket), a histogram pass and a pass over one bucket find it.
    Several jobs share the passes (and an input's magnitudes are taken once per block).
    """

    nblk = len(blocks.blocks)
    trims: list = [None] * len(jobs)
    live = []
    for j, (i, k) in enumerate(jobs):
        if k <= 0:
            trims[j] = (np.uint32(0xFFFFFFFF), [0] * nblk)
        elif k < n.numel:
            live.append(j)
    if not live:
        return trims
    inputs = sorted({jobs[j][0] for j in live})
    picked = sorted({round(j * (nblk - 1) / (SAMPLE_BLOCKS - 1)) for j in
                     range(SAMPLE_BLOCKS)}) if nblk > SAMPLE_BLOCKS else list(range(nblk))
    numel_picked = sum(_block_numel(n, blocks.blocks[b]) for b in picked)
    stride = max(1, numel_picked // SAMPLE_SIZE)

    def sample(b, rows):
        xs = args_of(b, rows)
        return {i: magnitude_bits(xs[i])[::stride].copy() for i in inputs}

    got = blocks.map(sample, only=picked)
    smps = {i: np.concatenate([g[i] for g in got]) for i in inputs}
    brackets = {}
    for j in live:
        i, k = jobs[j]
        smp = smps[i]
        m, p = smp.size, k / n.numel
        margin = int(4 * (m * p * (1 - p)) ** 0.5) + 2
        r = int(p * m)
        # the (r - margin)-th and (r + margin)-th of the sample in descending order, i.e.
        # positions m-1-(r-margin) and m-1-(r+margin) ascending: two selections, no sort
        at = [m - 1 - q for q in (r - margin, r + margin) if 0 <= q < m]
        sel = np.partition(smp, at) if at else smp
        hi = sel[m - 1 - (r - margin)] if r - margin >= 0 else np.uint32(0xFFFFFFFF)
        lo = sel[m - 1 - (r + margin)] if r + margin < m else np.uint32(0)
        brackets[j] = (hi, lo)

    def bracket(b, rows):
        xs = args_of(b, rows)
        bits = {i: magnitude_bits(xs[i]) for i in inputs}
        out = []
        for j in live:
            v = bits[jobs[j][0]]
            hi, lo = brackets[j]
            above = int(np.count_nonzero(v > hi))
            out.append((above, v[(v >= lo) & (v <= hi)]))
        return out

    found = blocks.map(bracket)
    for t, j in enumerate(live):
        i, k = jobs[j]
        above = sum(f[t][0] for f in found)
        ins = [f[t][1] for f in found]
        if not above < k <= above + sum(x.size for x in ins):  # the sample misled
            above, ins = _ties_bucket(n, i, k, blocks, args_of)
        trims[j] = _kth_of(np.concatenate(ins), k - above, ins)
    return trims


#: blocks of a tensor sampled to bracket a TIES threshold, and entries in the sample
SAMPLE_BLOCKS = 8
SAMPLE_SIZE = 1 << 16


def _block_numel(n: Node, rows) -> int:
    if rows is None:
        return n.numel
    return (rows[1] - rows[0]) * (n.numel // n.shape[0])


def _kth_of(vals, r: int, per_block: list) -> tuple:
    """(threshold, allowance per block) from the magnitude bits `vals` that hold the k-th
    largest as their r-th largest (`per_block`: the same values, block by block). The
    threshold is a float32 bit pattern: compared as such, NaN ranks above infinity."""

    kth = kth_of(vals, r)
    remaining = r - int(np.count_nonzero(vals > kth))  # entries equal to it still kept
    allow = []
    for x in per_block:
        eq = int(np.count_nonzero(x == kth))
        allow.append(min(eq, remaining))
        remaining -= allow[-1]
    return np.uint32(kth), allow


def _ties_bucket(n: Node, i: int, k: int, blocks: Blocks, args_of) -> tuple:
    """The fallback: (entries above the bucket, bucket entries per block) for input i, from
    a histogram of the magnitudes' bit patterns (:func:`mergec.ops.select.bucket_pass`)."""

    def map_bits(fn):
        return blocks.map(lambda b, rows: fn(magnitude_bits(args_of(b, rows)[i])))

    return bucket_pass(map_bits, k)


def block_masks(n: Node, params: dict, args, rows, backend, found, block: int) -> tuple:
    """The keep masks of a sparsifying merge for one block of rows."""

    dens = params["density"]
    if REGISTRY[n.attr("method")].traits.masks == "bernoulli":  # the rows of the whole tensor's masks
        drawn = found.get("masks", {}) if found is not None else {}
        shape = n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:]
        if drawn:
            return tuple(np.unpackbits(drawn[(block, i)], count=math.prod(shape)).view(bool)
                         .reshape(shape) if d < 1.0 else np.ones(shape, dtype=bool)
                         for i, d in enumerate(dens))
        return tuple((keep_mask(n.attr("seed"), i, n.shape, d) if rows is None else
                      keep_mask_rows(n.attr("seed"), i, n.shape, d, *rows)) if d < 1.0
                     else np.ones(shape, dtype=bool)
                     for i, d in enumerate(dens))
    if params.get("trim") == "model":  # the model-wide threshold applies as it is
        thr = params["thresholds"]
        return tuple(np.abs(host_f32(backend, a)) >= np.float32(t) for a, t in zip(args, thr))

    band = REGISTRY[n.attr("method")].traits.masks == "band"
    masks = []
    for a, trim in zip(args, found["trims"]):
        v = host_f32(backend, a)
        if band:  # the top-(top + kept) entries less the top-(top)
            upper, lower = trim
            bits = magnitude_bits(v)
            mask = _trim_mask(bits, upper, block)
            if lower is not None:
                mask &= ~_trim_mask(bits, lower, block)
            masks.append(mask.reshape(v.shape))
            continue
        if trim is None:  # keeps everything
            masks.append(np.ones(v.shape, dtype=bool))
            continue
        masks.append(_trim_mask(magnitude_bits(v), trim, block).reshape(v.shape))
    return tuple(masks)


def _trim_mask(bits: np.ndarray, trim, block: int) -> np.ndarray:
    """The flat keep mask of one block from a trim of :func:`topk_trims` (None: all)."""
    if trim is None:
        return np.ones(bits.shape, dtype=bool)
    thr, allow = trim
    mask = bits > thr
    if allow[block] > 0:  # magnitudes equal to the threshold: the lowest indices first
        mask[np.flatnonzero(bits == thr)[:allow[block]]] = True
    return mask


# ------------------------------------------------------------- ranked masks (DELLA)


def ranked_block(n: Node, params: dict, xs: list, rows) -> list:
    """Per input of a call with ranked masks (DELLA), for one block of rows (None: the
    whole tensor) with the block's values `xs` (float32 numpy): None where the input is
    kept as it is, else its (keep mask, keep probability) in the block's shape, made by
    the method's own :func:`~mergec.methods.della.ranked_keep` on the NumPy backend from
    the block's rows of the uniform numbers (:func:`~mergec.ops.random.uniform_rows`).
    Ranks are taken within rows (the last axis) and a block holds whole rows, so the
    block gets exactly the rows of the whole tensor's masks, on every backend."""
    from mergec.backends.reference import ReferenceBackend  # noqa: PLC0415

    ops = ReferenceBackend()
    a = REGISTRY[n.attr("method")].args(params, len(xs))
    seed = n.attr("seed")
    out: list = []
    for i, (x, d, e) in enumerate(zip(xs, a.density, a.epsilon)):
        if keeps_all(d, e, x.shape):
            out.append(None)
            continue
        r, k = rows_shape(x.shape)
        u = (uniform(seed, i, n.shape) if rows is None else
             uniform_rows(seed, i, n.shape, *rows))
        keep, prob = ranked_keep(ops, x.reshape(r, k), u.reshape(r, k), d, e)
        out.append((keep.reshape(x.shape), prob.reshape(x.shape)))
    return out


def ranked_l1(n: Node, params: dict, blocks: Blocks, args_of, backend) -> tuple[dict, tuple]:
    """The pass of a DELLA call with an l1 rescale on a tensor computed in blocks: the keep
    masks of every (block, input), drawn once and packed (the last pass unpacks them), and
    per input ``|tau|_1 / |kept|_1`` (0 when nothing is kept; None: kept as it is). The
    norms are summed like the method's ``abs_sum64`` of the per-row view: per row, on the
    backend (`args_of` gives its values; the masks are made from host copies), then over
    the rows in order (:func:`mergec.backends.base.total`), so they do not depend on the
    split."""
    masks: dict = {}

    def l1(b, rows):
        xs = args_of(b, rows)
        out = []
        got_all = ranked_block(n, params, [host_f32(backend, x) for x in xs], rows)
        for i, (x, got) in enumerate(zip(xs, got_all)):
            if got is None:
                out.append(None)
                continue
            keep = got[0]
            masks[(b, i)] = np.packbits(keep)
            shape = rows_shape(backend.shape(x))
            xr = backend.reshape(x, shape)
            kept = backend.keep(xr, backend.host(keep.reshape(shape)))
            out.append((backend.abs_rows(xr), backend.abs_rows(kept)))
        return out

    parts = blocks.map(l1)
    return masks, l1_scales(parts, len(parts[0]))


def l1_scales(parts: list, n_inputs: int) -> tuple:
    """Per input, ``|tau|_1 / |kept|_1`` from the per-block ``(all, kept)`` row partials
    of an L1 pass (0 when nothing is kept; None for an input the pass left out, kept as
    it is), each summed over the rows in order (:func:`mergec.backends.base.total`)."""
    scales = []
    for i in range(n_inputs):
        if parts[0][i] is None:
            scales.append(None)
            continue
        s_all = float(B.total([p[i][0] for p in parts]))
        s_kept = float(B.total([p[i][1] for p in parts]))
        scales.append(float(s_all / s_kept) if s_kept != 0.0 else 0.0)
    return tuple(scales)


def ranked_masks(n: Node, params: dict, args, rows, backend, found, block: int) -> dict:
    """The parameters a call with ranked masks gets for one block of rows: its "masks"
    (unpacked from the l1 pass, or made here with their "keep_probs")."""
    if found is not None and "masks" in found:
        drawn = found["masks"]
        shape = n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:]
        return {"masks": tuple(
            np.unpackbits(drawn[(block, i)], count=math.prod(shape)).view(bool).reshape(shape)
            if (block, i) in drawn else None for i in range(len(args)))}
    got = ranked_block(n, params, [host_f32(backend, a) for a in args], rows)
    return {"masks": tuple(None if g is None else g[0] for g in got),
            "keep_probs": tuple(None if g is None else g[1] for g in got)}


# ------------------------------------------------------------- statistics over a model


def _placeholders(lo) -> dict[ModelTopK, list[Node]]:
    """Each placeholder with the task-vector nodes it ranges over, in tensor order."""
    found: dict[ModelTopK, list[Node]] = {}
    seen: set[int] = set()
    for t in lo.tensors:
        for n in topo(t.node):
            if n.op != "merge" or id(n) in seen:
                continue
            seen.add(id(n))
            for _, v in n.attr("params"):
                if isinstance(v, tuple):
                    for i, x in enumerate(v):
                        if isinstance(x, ModelTopK):
                            found.setdefault(x, []).append(n.args[x.input])
    return found


def placeholder_inputs(lo) -> dict[ModelTopK, list[Node]]:
    """Each model-wide placeholder of a lowered output with the task-vector nodes it
    ranges over, in tensor order (what :func:`compute_model_stats` computes over)."""
    return _placeholders(lo)


def compute_model_stats(lo, chunks_of: Callable[[Node], Iterable[np.ndarray]]) -> dict:
    """Exact model-wide thresholds for every placeholder of one lowered output.
    `chunks_of(node)` yields a node's value as float32 numpy arrays (the whole tensor, or
    blocks of rows when memory is limited)."""
    stats: dict[ModelTopK, float] = {}
    for ph, nodes in _placeholders(lo).items():
        unique = list(dict.fromkeys(nodes))
        total = sum(n.numel for n in unique)
        k = keep_count(ph.density, total)
        if k >= total:
            stats[ph] = 0.0
            continue

        def chunks(unique=unique):
            for n in unique:
                yield from chunks_of(n)

        stats[ph], _ = exact_kth_largest(chunks, k)
    return stats


def resolve_stats(value, stats: dict):
    """A parameter value with its placeholders replaced by the computed statistics."""
    if isinstance(value, ModelTopK):
        return stats[value]
    if isinstance(value, tuple) and any(isinstance(x, ModelTopK) for x in value):
        return tuple(stats[x] if isinstance(x, ModelTopK) else x for x in value)
    return value
