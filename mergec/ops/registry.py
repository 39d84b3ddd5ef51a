"""The one declaration of every merge method.

Each method is declared here exactly once: its name, typed parameters with defaults and
ranges, how many inputs it takes, how it treats ``base=``, whether it draws random numbers,
its formula and its references. The checker validates calls against these declarations,
the lowering turns calls into IR using them, ``mergec methods`` and ``docs/methods.md`` are
generated from them, and every backend provides one kernel per method name.

Base handling (``Method.base``):
  * ``"delta"``  — a task-vector method. With ``base=`` its inputs become task vectors
    ``x_i - base`` and the result is ``base + merged``; without ``base=`` its inputs must be
    Deltas and the result is a Delta. The kernel only ever sees task vectors.
  * ``"none"``   — works on its inputs as they are (Models, Deltas or Layers); ``base=`` is
    not accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class _Required:
    def __repr__(self) -> str:  # pragma: no cover - display only
        return "required"


REQUIRED: Any = _Required()


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

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(f'"{c}"' for c in self.choices)
        lo = "(" if self.min_open else "["
        hi = ")" if self.max_open else "]"
        if self.min is None and self.max is None:
            return "any"
        a = "-inf" if self.min is None else _num(self.min)
        b = "inf" if self.max is None else _num(self.max)
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


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    formula: str
    params: tuple[Param, ...]
    base: str = "none"  # "delta" | "none"
    min_inputs: int = 1
    max_inputs: int | None = None
    random: bool = False
    references: tuple[str, ...] = ()
    notes: str = ""
    family: str = "established"
    #: a "delta" method that also merges Models as they are when given no `base=`
    models_without_base: bool = False

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


# Shared parameter declarations -------------------------------------------------------------

WEIGHT = Param("weight", "number", 1.0, "weight of each input", per_input=True)
LAMBDA = Param("lambda", "number", 1.0, "scale of the merged task vector")
DENSITY = Param("density", "number", 1.0, "fraction of entries kept", per_input=True,
                min=0.0, max=1.0, min_open=True)
NORMALIZE = Param("normalize", "bool", True, "divide by the sum of the weights")
RESCALE = Param("rescale", "string", "inverse",
                "how kept entries are rescaled: 1/density (inverse) or to the input's L1 norm (l1)",
                choices=("inverse", "l1", "none"))
ELECT = Param("elect", "string", "mass",
              "sign election: sign of the summed values (mass) or majority of signs (count)",
              choices=("mass", "count"))
WEIGHTED_ELECT = Param("weighted_elect", "bool", False,
                       "elect the sign on weight-scaled task vectors")
TRIM = Param("trim", "string", "tensor",
             "where the top-k threshold is taken: per tensor or over the whole model",
             choices=("tensor", "model"))

_P = Param

METHODS: tuple[Method, ...] = (
    Method(
        "linear", "Weighted average of the inputs (model soups).",
        "sum_i w_i x_i, divided by sum_i w_i when normalize",
        (WEIGHT, NORMALIZE), base="none", min_inputs=1,
        references=("Wortsman et al. 2022, Model soups, arXiv:2203.05482",),
    ),
    Method(
        "task_arithmetic", "Add weighted task vectors to the base.",
        "base + lambda * sum_i w_i tau_i",
        (WEIGHT, LAMBDA, _P("normalize", "bool", False, "divide by the sum of the weights")),
        base="delta", min_inputs=1,
        references=("Ilharco et al. 2023, Editing models with task arithmetic, arXiv:2212.04089",),
    ),
    Method(
        "slerp", "Spherical linear interpolation of two inputs.",
        "v0, v1 flattened; d = cos angle of unit vectors; |d| > 0.9995: (1-t) v0 + t v1; "
        "else (sin((1-t) W) v0 + sin(t W) v1) / sin W with W = arccos d",
        (_P("t", "number", REQUIRED, "interpolation factor: 0 gives the first input, 1 the second",
            min=0.0, max=1.0),
         _P("epsilon", "number", 1e-8, "norms below this count as zero; lerp is used", min=0.0)),
        base="none", min_inputs=2, max_inputs=2,
        references=("Shoemake 1985, Animating rotation with quaternion curves",),
    ),
    Method(
        "nuslerp", "Slerp with the factor taken from two weights; on task vectors with base=.",
        "t = w_2 / (w_1 + w_2); slerp(x_1, x_2, t) over the whole tensor (flatten) or per row",
        (WEIGHT, _P("flatten", "bool", True, "treat the tensor as one vector"),
         _P("row_wise", "bool", False, "with flatten=false: rows (true) or columns (false)"),
         _P("epsilon", "number", 1e-8, "norms below this count as zero", min=0.0)),
        base="delta", min_inputs=2, max_inputs=2, models_without_base=True,
        references=("Shoemake 1985",),
        notes="Without base= the inputs are interpolated as they are (Models or Deltas).",
    ),
    Method(
        "multislerp", "Weighted spherical mean of two or more inputs.",
        "unit directions u_i; mean direction m = normalize(sum w_i u_i); log map of each u_i at m, "
        "weighted tangent sum, exp map; times sum w_i |x_i| / sum w_i",
        (WEIGHT, _P("epsilon", "number", 1e-8, "norms below this count as zero", min=0.0)),
        base="delta", min_inputs=2, models_without_base=True,
        references=("Buss & Fillmore 2001, Spherical averages and applications",),
        notes="Without base= the inputs are averaged as they are (Models or Deltas).",
    ),
    Method(
        "karcher", "Riemannian (Karcher) mean of the unit directions, times the mean norm.",
        "iterate m <- exp_m(sum_i w_i log_m(u_i) / sum w_i) until the step < tol; result m * mean |x_i|",
        (WEIGHT, _P("max_iter", "int", 10, "iterations at most", min=1, max=10000),
         _P("tol", "number", 1e-5, "stop when the tangent step norm is below this", min=0.0,
            min_open=True)),
        base="none", min_inputs=2,
        references=("Karcher 1977, Riemannian center of mass and mollifier smoothing",),
    ),
    Method(
        "ties", "Trim, elect sign, disjoint merge (TIES-Merging).",
        "trim each tau_i to its top density fraction by magnitude; gamma = sign(sum tau_i) "
        "(mass) or sign(sum sign tau_i) (count); merged = sum_{i agrees} w_i tau_i / "
        "sum_{i agrees} w_i; base + lambda * merged",
        (WEIGHT, _P("density", "number", 0.2, "fraction of entries kept per input",
                    per_input=True, min=0.0, max=1.0, min_open=True),
         LAMBDA, NORMALIZE, ELECT, WEIGHTED_ELECT, TRIM),
        base="delta", min_inputs=1,
        references=("Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",),
    ),
    Method(
        "dare_linear", "Random drop and rescale (DARE), then a weighted sum.",
        "m_i ~ Bernoulli(density); tau_i' = m_i tau_i rescaled; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, LAMBDA, RESCALE,
         _P("normalize", "bool", False, "divide by the sum of the weights")),
        base="delta", min_inputs=1, random=True,
        references=("Yu et al. 2024, Language models are Super Mario, arXiv:2311.03099",),
    ),
    Method(
        "dare_ties", "Random drop and rescale (DARE), then TIES sign election and disjoint merge.",
        "m_i ~ Bernoulli(density); tau_i' = m_i tau_i rescaled; TIES elect + disjoint mean; "
        "base + lambda * merged",
        (WEIGHT, DENSITY, LAMBDA, NORMALIZE, RESCALE, ELECT, WEIGHTED_ELECT),
        base="delta", min_inputs=1, random=True,
        references=("Yu et al. 2024, arXiv:2311.03099", "Yadav et al. 2023, arXiv:2306.01708"),
    ),
    Method(
        "breadcrumbs", "Drop the largest gamma and smallest entries, then a weighted sum.",
        "per tensor keep entries ranked (by magnitude) below the top gamma fraction and above "
        "the bottom 1 - density - gamma fraction; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, _P("gamma", "number", 0.01, "fraction of largest entries dropped",
                             per_input=True, min=0.0, max=1.0, max_open=True),
         LAMBDA, _P("normalize", "bool", False, "divide by the sum of the weights")),
        base="delta", min_inputs=1,
        references=("Davari & Belilovsky 2024, Model Breadcrumbs, arXiv:2312.06795",),
    ),
    Method(
        "breadcrumbs_ties", "Breadcrumbs sparsification, then TIES sign election and disjoint merge.",
        "breadcrumbs masks; TIES elect + disjoint mean; base + lambda * merged",
        (WEIGHT, DENSITY, _P("gamma", "number", 0.01, "fraction of largest entries dropped",
                             per_input=True, min=0.0, max=1.0, max_open=True),
         LAMBDA, NORMALIZE, ELECT, WEIGHTED_ELECT),
        base="delta", min_inputs=1,
        references=("Davari & Belilovsky 2024, arXiv:2312.06795", "Yadav et al. 2023"),
    ),
    Method(
        "della", "Magnitude-ranked random drop (DELLA), then TIES sign election and disjoint merge.",
        "per row, rank r of |tau| (0 smallest); p = density - epsilon + 2 epsilon r/(n-1); "
        "keep with probability p, rescale by 1/p; TIES elect + disjoint mean; base + lambda * merged",
        (WEIGHT, DENSITY, _P("epsilon", "number", 0.15, "spread of keep probabilities",
                             per_input=True, min=0.0, max=0.5),
         LAMBDA, NORMALIZE, RESCALE, ELECT, WEIGHTED_ELECT),
        base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, DELLA-Merging, arXiv:2406.11617",),
    ),
    Method(
        "della_linear", "Magnitude-ranked random drop (DELLA), then a weighted sum.",
        "DELLA masks and rescale; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, _P("epsilon", "number", 0.15, "spread of keep probabilities",
                             per_input=True, min=0.0, max=0.5),
         LAMBDA, RESCALE, _P("normalize", "bool", False, "divide by the sum of the weights")),
        base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, arXiv:2406.11617",),
    ),
    Method(
        "model_stock", "Interpolate the mean of fine-tunes toward the base by their angle.",
        "cos = mean pairwise cosine of tau_i; t = N cos / (1 + (N - 1) cos); "
        "base + t * mean_i tau_i",
        (_P("filter_wise", "bool", False, "one ratio per row instead of per tensor"),),
        base="delta", min_inputs=2,
        references=("Jang et al. 2024, Model Stock, arXiv:2403.19522",),
    ),
    Method(
        "sce", "Select by variance, calculate weights, erase minority signs (SCE).",
        "keep the select_topk fraction of entries with the largest variance across inputs; "
        "TIES sign mask; w_i = mean(tau_i^2) / sum_j mean(tau_j^2); "
        "base + sum w_i m_i tau_i / sum w_i m_i",
        (_P("select_topk", "number", 1.0, "fraction of entries kept by variance",
            min=0.0, max=1.0, min_open=True), LAMBDA),
        base="delta", min_inputs=1,
        references=("Wan et al. 2024, FuseChat, arXiv:2408.07990",),
    ),
    Method(
        "nearswap", "Take the input where it is close to the base, the base elsewhere.",
        "w = clamp(t / max(|tau|, 1e-6), 0, 1); base + w * tau",
        (_P("t", "number", REQUIRED, "distance below which the input is taken", min=0.0,
            min_open=True),),
        base="delta", min_inputs=1, max_inputs=1,
        references=("Gauthier-Caron 2024, nearswap",),
    ),
    Method(
        "passthrough", "One input unchanged, optionally scaled.",
        "scale * x",
        (_P("scale", "number", 1.0, "factor applied to the input"),),
        base="none", min_inputs=1, max_inputs=1,
    ),
)

REGISTRY: dict[str, Method] = {m.name: m for m in METHODS}


def get(name: str) -> Method | None:
    return REGISTRY.get(name)


#: Methods that run in this version: all of them.
IMPLEMENTED: frozenset[str] = frozenset(REGISTRY)
