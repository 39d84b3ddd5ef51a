"""How a merge method is declared: typed parameters, traits, checks and one implementation.

A method module (``mergec/methods/<family>.py``) builds :class:`Method` values and lists
them in ``METHODS``; ``mergec/methods/__init__.py`` collects them into the registry. The
checker validates calls against the parameters and runs the method's own ``check``, the
lowering and the passes read its traits, ``mergec methods`` and ``docs/methods.md`` are
generated from it, and the runtime calls its ``compute`` with the backend's array
primitives (:class:`mergec.backends.base.ArrayOps`).

Base handling (``Method.base``):
  * ``"delta"`` — a task-vector method. With ``base=`` its inputs become task vectors
    ``x_i - base`` and the result is ``base + merged``; without ``base=`` its inputs must be
    Deltas and the result is a Delta. ``compute`` only ever sees task vectors.
  * ``"none"`` — works on its inputs as they are (Models, Deltas or Layers); ``base=`` is
    not accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class _Required:
    def __repr__(self) -> str:  # pragma: no cover - display only
        return "required"


REQUIRED: Any = _Required()


def number_text(x: float) -> str:
    """A bound of a parameter range as the reference prints it (1, 0.5, 1e-08)."""
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "number" | "int" | "bool" | "string"
    default: Any = REQUIRED
    doc: str = ""
    per_input: bool = False  # may be a list aligned with the inputs
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # True: value must be > min (not >=)
    max_open: bool = False
    choices: tuple[str, ...] = ()
    rampable: bool = True  # numbers may vary with depth via ramp(...)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_text(self) -> str:
        """The type as messages and the docs name it: number, whole number, true/false,
        string."""
        return {"number": "number", "int": "whole number", "bool": "true/false",
                "string": "string"}[self.type]

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(f'"{c}"' for c in self.choices)
        lo = "(" if self.min_open else "["
        hi = ")" if self.max_open else "]"
        if self.min is None and self.max is None:
            return "any"
        a = "-inf" if self.min is None else number_text(self.min)
        b = "inf" if self.max is None else number_text(self.max)
        return f"{lo}{a}, {b}{hi}"

    def check_value(self, value: Any) -> str | None:
        """Return None when ``value`` is acceptable, else a message fragment."""
        if self.type == "bool":
            return None if isinstance(value, bool) else "expects true or false"
        if self.type == "string":
            if not isinstance(value, str):
                return "expects a string"
            if self.choices and value not in self.choices:
                return f"must be one of {self.range_text()}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expects a number"
        if self.type == "int" and float(value) != int(value):
            return "expects a whole number"
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return f"must be in {self.range_text()}"
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            return f"must be in {self.range_text()}"
        return None


class Args:
    """The parameters of one call, resolved for one tensor, as typed attributes:
    ``p.weight`` (a tuple of floats for a per-input parameter), ``p.density``,
    ``p.lambda_`` (``lambda`` is a Python keyword). Values the runtime computed over the
    whole tensor or model travel beside them: ``p.masks`` (keep masks of a block of rows,
    host arrays; ``p.keep_probs``, their keep probabilities, for a ranked drop),
    ``p.l1_scales`` and ``p.thresholds``."""

    def __init__(self, method: "Method", params: Mapping[str, Any], n: int) -> None:
        self._method, self._n, self._params = method, n, params
        self._values: dict[str, Any] = {}
        for prm in method.params:
            if prm.name not in params:
                if prm.required:
                    raise ValueError(f"method {method.name}: missing parameter {prm.name!r}")
                # an optional parameter not given: its default (direct callers of a method
                # need not spell out parameters added since)
                value = (prm.default,) * n if prm.per_input else prm.default
                self._values[prm.name] = _typed(method.name, prm, value, n)
                continue
            self._values[prm.name] = _typed(method.name, prm, params[prm.name], n)
        for extra in ("masks", "keep_probs", "l1_scales"):
            self._values[extra] = params.get(extra)
        thr = params.get("thresholds")
        self._values["thresholds"] = None if thr is None else _per_input(
            method.name, "thresholds", thr, n)

    def raw(self) -> Mapping[str, Any]:
        """The parameters as the call gave them (for the coefficient functions of gram
        methods, which the runtime also calls with the call's parameters)."""
        return self._params

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("_values", {})
        name = "lambda" if key == "lambda_" else key
        if name in values:
            return values[name]
        raise AttributeError(f"method {self._method.name} has no parameter {key!r}")


def _per_input(method: str, key: str, v: Any, n: int) -> tuple[float, ...]:
    if isinstance(v, (list, tuple)) or hasattr(v, "__array__"):
        vals = tuple(float(x) for x in v)
        if len(vals) != n:
            raise ValueError(f"method {method}: parameter {key!r} has {len(vals)} values "
                             f"for {n} inputs")
        return vals
    return (float(v),) * n


def _typed(method: str, prm: Param, v: Any, n: int) -> Any:
    if prm.per_input:
        return _per_input(method, prm.name, v, n)
    if prm.type == "bool":
        return bool(v)
    if prm.type == "string":
        return str(v)
    if prm.type == "int":
        return int(v)
    return float(v)


#: how a tensor computed by a method can be split into blocks of rows:
#:   "entries" — entry by entry (any block of rows is computed like the whole tensor)
#:   "masks"   — entry by entry once the keep masks are known: the runtime makes them
#:               for each block (``Traits.masks`` says which kind)
#:   "gram"    — a weighted sum whose coefficients come from the whole tensor's inner
#:               products (``Method.gram_coefficients``), summed over the blocks first
#:   "rows"    — row by row (the last axis), so a block of whole rows
#:   "whole"   — only whole tensors
SPLITS = ("entries", "masks", "gram", "rows", "whole")


@dataclass(frozen=True)
class Traits:
    """What the compiler and the runtime may rely on about a method."""

    #: coefficients of a linear combination of the inputs (None: the method is not linear,
    #: or its parameters are not plain numbers yet); a linear method is folded into
    #: weighted sums by the IR passes
    coeffs: Callable[[Mapping[str, Any], int], tuple[float, ...] | None] | None = None
    #: how a tensor can be split, given the call's parameters and the tensor's rank
    split: Callable[[Mapping[str, Any], int], str] = lambda params, ndim: "whole"
    #: the keep masks the runtime makes for a block of rows under split "masks":
    #: "topk" (the largest `density` fraction of each input by magnitude),
    #: "band" (the entries at top-k positions [top, top + kept) of each input, from
    #: ``band``), "bernoulli" (kept with probability `density`, from the call's seed) or
    #: "ranked" (kept with a probability from each entry's magnitude rank in its row, from
    #: the call's seed: DELLA; the keep probabilities come with the masks)
    masks: str | None = None
    #: for masks "band": (call's Args, entries of the tensor) -> (top, kept) per input
    band: Callable[[Any, int], list[tuple[int, int]]] | None = None
    #: the rescale of kept entries needs the whole tensor's L1 norms first
    l1_rescale: Callable[[Mapping[str, Any]], bool] = lambda params: False
    #: the call divides by the sum of its `weight`s (the checker then rejects weights that
    #: sum to 0 at some layer); by default when its `normalize` is true
    normalizes: Callable[[Mapping[str, Any]], bool] = \
        lambda params: params.get("normalize") is True


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    formula: str
    params: tuple[Param, ...]
    #: the one implementation: (ops, inputs, args, seed) -> result, over the primitives
    compute: Callable[..., Any] = field(repr=False, default=None)  # type: ignore[assignment]
    base: str = "none"  # "delta" | "none"
    min_inputs: int = 1
    max_inputs: int | None = None
    random: bool = False
    references: tuple[str, ...] = ()
    notes: str = ""
    family: str = "established"
    #: a "delta" method that also merges Models as they are when given no `base=`
    models_without_base: bool = False
    traits: Traits = field(default_factory=Traits)
    #: for split "gram": the coefficients of the final weighted sum from the inputs'
    #: whole-tensor Gram matrix (float64 numpy)
    gram_coefficients: Callable[[Mapping[str, Any], Any], list[float]] | None = \
        field(repr=False, default=None)
    #: checks of a call that go beyond parameter ranges: (params as written, number of
    #: inputs) -> a message, or None
    check: Callable[[Mapping[str, Any], int], str | None] | None = field(repr=False,
                                                                          default=None)
    #: the kind of statistics the method reads ("fisher" | "gram", see docs/stats.md), or
    #: None: a call then takes `stats=[...]` (one statistics folder per input) and
    #: `fallback=` (what the tensors without statistics are), and ``compute`` gets the
    #: inputs followed by their statistics tensors, in the same order
    stats: str | None = None
    #: for a method with `stats`: the shape of the statistics of a tensor of shape
    #: `shape`, or None when the method never computes such a tensor from statistics
    stats_shape: Callable[[tuple[int, ...]], tuple[int, ...] | None] | None = \
        field(repr=False, default=None)

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def arity_text(self) -> str:
        if self.max_inputs == self.min_inputs:
            return f"exactly {self.min_inputs} input{'s' if self.min_inputs != 1 else ''}"
        if self.max_inputs is None:
            return f"at least {self.min_inputs} input{'s' if self.min_inputs != 1 else ''}"
        return f"{self.min_inputs} to {self.max_inputs} inputs"

    def args(self, params: Mapping[str, Any], n: int) -> Args:
        return Args(self, params, n)

    def check_arity(self, n: int) -> None:
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.max_inputs == self.min_inputs
                    else f"at least {self.min_inputs}" if self.max_inputs is None
                    else f"{self.min_inputs} to {self.max_inputs}")
            raise ValueError(f"method {self.name} takes {want} inputs, got {n}")

    def split(self, params: Mapping[str, Any], ndim: int) -> str:
        return self.traits.split(params, ndim)

    def linear_coeffs(self, params: Mapping[str, Any], n: int) -> tuple[float, ...] | None:
        return None if self.traits.coeffs is None else self.traits.coeffs(params, n)


def run(method: Method, ops, inputs: Sequence[Any], params: Mapping[str, Any],
        seed: int | None) -> Any:
    """``method`` on same-shaped float32 backend arrays: the one entry point of every
    method on every backend."""
    n = len(inputs)
    if method.stats is not None:  # the inputs, then one statistics tensor for each
        if n % 2:
            raise ValueError(f"method {method.name}: {n} arrays are not inputs and their "
                             "statistics")
        n //= 2
    method.check_arity(n)
    shape = ops.shape(inputs[0])
    for x in inputs[1:n]:
        if ops.shape(x) != shape:
            raise ValueError(f"method {method.name}: inputs have different shapes "
                             f"{shape} and {ops.shape(x)}")
    if method.stats is not None:
        want = method.stats_shape(shape) if method.stats_shape is not None else shape
        for s in inputs[n:]:
            if ops.shape(s) != want:
                raise ValueError(f"method {method.name}: statistics of shape "
                                 f"{ops.shape(s)} for a tensor of shape {shape}")
    return method.compute(ops, list(inputs), method.args(params, n), seed)


def need_seed(method: str, seed: int | None) -> int:
    """The seed of a call that is about to draw random numbers."""
    if seed is None:
        raise ValueError(f"method {method} draws random numbers and needs a seed")
    return seed


# Counting rules shared by the sparsifying methods ------------------------------------------


#: how a fraction of a tensor's entries is counted (the `count` parameter): rounded half
#: up, or rounded down as mergekit does (``int(frac * n)``)
COUNTS = ("round", "floor")


def count_of(frac: float, n: int, count: str = "round") -> int:
    """round_half_up(frac * n), clamped to [0, n]: ``floor(frac * n + 0.5 + 1e-9)`` (the
    1e-9 absorbs binary representation error, so ``0.35 * 10`` counts 4). With
    ``count="floor"``: ``int(frac * n)``, as mergekit computes it."""
    if n <= 0:
        return 0
    if count == "floor":
        k = int(float(frac) * n)
    else:
        k = int(math.floor(float(frac) * n + 0.5 + 1e-9))
    return min(max(k, 0), n)


def keep_count(density: float, n: int, count: str = "round") -> int:
    """Entries a top-k with ``density`` in (0, 1] keeps out of ``n``: count_of, at least 1,
    so a positive density never zeroes a whole tensor; density 1 keeps all ``n``."""
    if n <= 0:
        return 0
    if density >= 1.0:
        return n
    return max(1, count_of(density, n, count))


def sum_of_weights(weights: Sequence[float], method: str) -> float:
    """Sum of the weights for normalization; a zero sum is an error."""
    total = math.fsum(weights)
    if total == 0.0:
        raise ValueError(f"method {method}: the weights sum to 0, so normalize=true cannot "
                         f"divide by them (weights {list(weights)})")
    return total


def rows_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of the per-row view of a tensor: "per row" is the last axis for
    tensors of two or more dimensions, the whole tensor for 0-d and 1-D tensors."""
    if len(shape) <= 1:
        return 1, math.prod(shape)
    return math.prod(shape[:-1]), shape[-1]
