"""`mergec import`: a mergekit YAML config -> a formatted `.merge` recipe.

The config is read as YAML nodes (PyYAML, imported lazily), so every diagnostic points at
the line and column of the YAML key or value it is about. Everything the config says is
either translated or reported: an unknown key, a method or parameter mergec has no
counterpart for, a tokenizer mergec cannot build is an error (E240-E245) and nothing is
written; a translation whose numbers will still differ from mergekit's is a warning (W330,
W331, W332) and the recipe is written.

mergekit's semantics, and how they are spelled in mergec:

* Parameters are looked up per model, then per slice, then for the whole merge; at each
  level a list of ``{filter, value}`` takes the first entry whose filter is a substring of
  the tensor name. mergec's ``where`` blocks take the *last* matching glob over the whole
  name, so each filter becomes ``where "*FILTER*"`` and the blocks are emitted so that the
  last matching one holds mergekit's first match (tensors that match several filters get
  an ``and`` block when the levels disagree).
* A gradient ``[v0, ..., vk]`` is ``ramp(v0, ..., vk)``; over a slice of one block mergekit
  takes its last value, which is written out.
* Defaults that differ are written explicitly (docs/parity.md, "Defaults that differ").
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergec.diagnostics import Diagnostic, MergecError, Span

#: the largest config read, in bytes
MAX_CONFIG_BYTES = 1000**2
#: the most distinct filters of one parameter (their subsets are enumerated)
MAX_FILTERS = 6

TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype",
            "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name",
            "modules")
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters")
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32",
          "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
          "fp16": "float16", "half": "float16"}


@dataclass(frozen=True)
class MethodMap:
    """How a mergekit method is written in mergec."""

    name: str  # the mergec method
    base: str  # "required" | "optional" | "none" | "first" (slerp: base is input 0)
    tensor: dict[str, str]  # mergekit per-model parameter -> mergec parameter
    glob: dict[str, str | None]  # whole-merge parameter -> mergec (None: no effect)
    fixed: dict[str, Any] = field(default_factory=dict)  # always written
    defaults: dict[str, Any] = field(default_factory=dict)  # mergekit's, where they differ
    counts: bool = False  # kept counts round differently (W330)
    random: bool = False


_GTA = {"normalize": "normalize", "lambda": "lambda", "int8_mask": None}
_GTA_R = dict(_GTA, rescale="rescale")
METHODS: dict[str, MethodMap] = {
    "linear": MethodMap("linear", "none", {"weight": "weight"}, {"normalize": "normalize"}),
    "task_arithmetic": MethodMap("task_arithmetic", "required", {"weight": "weight"}, _GTA),
    "ties": MethodMap("ties", "required", {"weight": "weight", "density": "density"}, _GTA,
                      fixed={"weighted_elect": True, "count": "floor"},
                      defaults={"density": 1.0}),
    "dare_ties": MethodMap("dare_ties", "required", {"weight": "weight", "density": "density"},
                           _GTA_R, fixed={"weighted_elect": True},
                           defaults={"normalize": False, "rescale": "l1"}, random=True),
    "dare_linear": MethodMap("dare_linear", "required",
                             {"weight": "weight", "density": "density"}, _GTA_R,
                             defaults={"normalize": False, "rescale": "l1"}, random=True),
    "breadcrumbs": MethodMap("breadcrumbs", "required",
                             {"weight": "weight", "density": "density", "gamma": "gamma"},
                             _GTA, fixed={"count": "floor"}, defaults={"normalize": False}),
    "breadcrumbs_ties": MethodMap("breadcrumbs_ties", "required",
                                  {"weight": "weight", "density": "density",
                                   "gamma": "gamma"}, _GTA,
                                  fixed={"weighted_elect": True, "count": "floor"},
                                  defaults={"normalize": False}),
    "della": MethodMap("della", "required", {"weight": "weight", "density": "density",
                                             "epsilon": "epsilon", "lambda": "lambda"},
                       _GTA_R, fixed={"weighted_elect": True},
                       defaults={"normalize": True, "rescale": "l1"}, random=True),
    "della_linear": MethodMap("della_linear", "required",
                              {"weight": "weight", "density": "density",
                               "epsilon": "epsilon", "lambda": "lambda"}, _GTA_R,
                              defaults={"normalize": False, "rescale": "l1"}, random=True),
    "sce": MethodMap("sce", "required", {"weight": "weight"},
                     {"select_topk": "select_topk", "lambda": "lambda", "int8_mask": None},
                     counts=True),
    "slerp": MethodMap("slerp", "first", {}, {"t": "t"}),
    "nuslerp": MethodMap("nuslerp", "optional", {"weight": "weight"},
                         {"nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"},
                         fixed={"lerp_threshold": 1.0}),
    "multislerp": MethodMap("multislerp", "optional", {"weight": "weight"},
                            {"eps": "epsilon"}),
    "karcher": MethodMap("karcher", "none", {}, {"max_iter": "max_iter", "tol": "tol"}),
    "model_stock": MethodMap("model_stock", "required", {}, {"filter_wise": "filter_wise"}),
    "nearswap": MethodMap("nearswap", "required", {}, {"t": "t"}),
    "passthrough": MethodMap("passthrough", "none", {"scale": "scale"}, {}),
}
_KEYWORDS = {"model", "adapter", "param", "set", "let", "output", "where", "and", "true",
             "false"}


# --- YAML nodes with their places ------------------------------------------------------


class _Y:
    """A YAML node: ``kind`` "map" | "seq" | "scalar", its Python value (scalars), its
    children and its span."""

    def __init__(self, node, file: str, lines: list[str]):
        import yaml

        self.span = _span(node, file, lines)
        if isinstance(node, yaml.MappingNode):
            self.kind = "map"
            self.items: list[tuple[Any, Span, _Y]] = []
            for k, v in node.value:
                key = _scalar(k) if isinstance(k, yaml.ScalarNode) else None
                self.items.append((key, _span(k, file, lines), _Y(v, file, lines)))
            self.value = None
        elif isinstance(node, yaml.SequenceNode):
            self.kind = "seq"
            self.children = [_Y(v, file, lines) for v in node.value]
            self.value = None
        else:
            self.kind = "scalar"
            self.value = _scalar(node)

    def get(self, key: str) -> _Y | None:
        for k, _, v in self.items:
            if k == key:
                return v
        return None

    def key_span(self, key: str) -> Span:
        for k, s, _ in self.items:
            if k == key:
                return s
        return self.span


def _scalar(node) -> Any:
    import yaml

    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _span(node, file: str, lines: list[str]) -> Span:
    s, e = node.start_mark, node.end_mark
    if e.line != s.line:  # to the end of the first line
        text = lines[s.line] if s.line < len(lines) else ""
        return Span(file, s.line + 1, s.column + 1, s.line + 1,
                    max(len(text.rstrip()) + 1, s.column + 2), s.index, s.index + 1)
    return Span(file, s.line + 1, s.column + 1, e.line + 1, max(e.column, s.column + 1) + 1,
                s.index, e.index)


# --- parameter values ------------------------------------------------------------------


@dataclass(frozen=True)
class Gradient:
    values: tuple[float, ...]


@dataclass(frozen=True)
class Cond:
    filter: str | None  # None: every tensor
    value: Any  # bool | int | float | str | Gradient
    span: Span


class _Import:
    def __init__(self, file: str, text: str, out_dir: Path, base_dir: Path):
        self.file = file
        self.lines = text.splitlines()
        self.out_dir = out_dir
        self.base_dir = base_dir
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.models: dict[str, str] = {}  # reference -> recipe name (model or let)
        self.model_names: dict[str, str] = {}  # reference -> name of its `model` statement
        self.names: set[str] = set()
        self.head: list[str] = []  # model and adapter statements
        self.body: list[str] = []  # let and output statements
        self.outputs: dict[str, str] = {}  # document name -> output name

    # diagnostics
    def error(self, code: str, message: str, span: Span | None, help: str | None = None):
        self.errors.append(Diagnostic(code, message, span, help=help))

    def warn(self, code: str, message: str, span: Span | None, help: str | None = None):
        self.warnings.append(Diagnostic(code, message, span, help=help, severity="warning"))

    # names
    def fresh(self, stem: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_").lower() or "m"
        base = re.sub(r"_+", "_", base)
        if base[0].isdigit():
            base = "m_" + base
        if base in _KEYWORDS:
            base += "_model"
        name, k = base, 2
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def source(self, ref: str) -> str:
        """A mergekit model path as a mergec source: local folders that exist (relative to
        the config's base folder) are written relative to the recipe's folder."""
        path = ref.split("@", 1)[0]
        p = Path(os.path.expanduser(path))
        local = p if p.is_absolute() else self.base_dir / p
        if path.startswith(("./", "../", "/", "~")) or local.is_dir():
            if p.is_absolute() or path.startswith("~"):
                return path
            rel = os.path.relpath(local.resolve(), self.out_dir.resolve())
            rel = rel.replace(os.sep, "/")
            return rel if rel.startswith("../") else "./" + rel
        return ref

    def model(self, node: _Y) -> str | None:
        """The recipe name of a model reference (declaring it on first use)."""
        if node.kind != "scalar" or not isinstance(node.value, str):
            self.error("E244", "a model reference must be a string: a path or a hub id, "
                       "optionally `+LORA`", node.span,
                       help="write `model: org/name` or `model: ./path+./lora`")
            return None
        ref = node.value.strip()
        if ref in self.outputs:  # an earlier document of a multi-document config
            return self.outputs[ref]
        if ref in self.models:
            return self.models[ref]
        path, _, lora = ref.partition("+")
        if path not in self.model_names:
            name = self.fresh(Path(path.split("@", 1)[0].rstrip("/")).name)
            self.head.append(f'model {name} = "{_esc(self.source(path))}"')
            self.model_names[path] = name
            self.models[path] = name
        name = self.model_names[path]
        if lora:
            adapter = self.fresh(Path(lora.split("@", 1)[0].rstrip("/")).name)
            self.head.append(f'adapter {adapter} = "{_esc(self.source(lora))}"')
            applied = self.fresh(f"{name}_{adapter}")
            self.body.append(f"let {applied} = {name} + {adapter}")
            self.models[ref] = applied
            self.model_names[ref] = name
            return applied
        return name

    # parameter settings
    def setting(self, node: _Y, level: str) -> list[Cond] | None:
        """A mergekit ParameterSetting as conditions in priority order."""
        if node.kind == "scalar":
            return [Cond(None, self.plain(node), node.span)]
        if node.kind == "seq":
            kids = node.children
            if kids and all(k.kind == "scalar" for k in kids):
                return [Cond(None, self.gradient(node), node.span)]
            if kids and all(k.kind == "map" for k in kids):
                out = []
                for k in kids:
                    c = self.condition(k)
                    if c is not None:
                        out.append(c)
                return out
        if node.kind == "map":
            c = self.condition(node)
            return None if c is None else [c]
        self.error("E243", f"cannot read this {level} parameter value", node.span,
                   help="a value is a number, true/false, a list of numbers (a gradient) or "
                   "a list of `{filter: ..., value: ...}`")
        return None

    def condition(self, node: _Y) -> Cond | None:
        ok = True
        for k, ks, _ in node.items:
            if k not in ("filter", "value"):
                self.error("E241", f"unknown key `{k}` in a conditional parameter", ks,
                           help="a conditional parameter has `filter` and `value`")
                ok = False
        value = node.get("value")
        if value is None:
            self.error("E244", "a conditional parameter needs a `value`", node.span)
            return None
        flt = node.get("filter")
        text = None
        if flt is not None:
            if flt.kind != "scalar" or not isinstance(flt.value, str):
                self.error("E243", "a filter must be a string", flt.span)
                ok = False
            elif flt.value not in ("*", ""):
                text = flt.value
        if value.kind == "seq":
            v = self.gradient(value)
        elif value.kind == "scalar":
            v = self.plain(value)
        else:
            self.error("E243", "cannot read this parameter value", value.span,
                       help="a value is a number, true/false or a list of numbers")
            return None
        return Cond(text, v, node.span) if ok and v is not None else None

    def plain(self, node: _Y) -> Any:
        v = node.value
        if isinstance(v, float) and not math.isfinite(v):
            self.error("E243", f"`{v}` is not a finite number", node.span)
            return None
        if v is None:
            self.error("E243", "a parameter value is missing here", node.span)
        return v

    def gradient(self, node: _Y) -> Gradient | None:
        vals = [k.value for k in node.children]
        if not vals:
            self.error("E243", "an empty gradient", node.span,
                       help="a gradient lists at least one number: `[0.0, 1.0]`")
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            self.error("E243", "a gradient of strings or true/false values (mergekit steps "
                       "through them by depth) has no mergec counterpart", node.span,
                       help="mergec's `ramp` interpolates numbers; use a `where layers[a:b]` "
                       "per range of blocks in the recipe instead")
            return None
        if not all(math.isfinite(v) for v in vals):
            self.error("E243", "a gradient value is not a finite number", node.span)
            return None
        return Gradient(tuple(float(v) if isinstance(v, float) else v for v in vals))


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v)}.0"
        return repr(v)
    return f'"{_esc(str(v))}"'


def _value(v: Any, one_block: bool) -> str:
    if isinstance(v, Gradient):
        if len(v.values) == 1 or one_block:
            return _num(v.values[-1] if one_block else v.values[0])
        return "ramp(" + ", ".join(_num(x) for x in v.values) + ")"
    return _num(v)


def _glob(flt: str) -> str:
    """mergekit's substring filter as a whole-name glob."""
    return '"*' + _esc("".join(f"[{c}]" if c in "[]*?" else c for c in flt)) + '*"'


# --- one document ----------------------------------------------------------------------


@dataclass
class _Input:
    expr: str  # the recipe expression of the input
    ref: str  # the model reference (to match base_model)
    params: _Y | None  # its parameters node
    span: Span


class _Doc:
    def __init__(self, imp: _Import, doc: _Y, out_name: str):
        self.imp = imp
        self.doc = doc
        self.out_name = out_name
        self.default_source: str | None = None  # mergec's default config and tokenizer
        self.unequal = False  # more than two inputs, or weights that differ

    def run(self) -> None:
        imp, doc = self.imp, self.doc
        if doc.kind != "map":
            imp.error("E244", "a mergekit config is a mapping of keys such as "
                      "`merge_method` and `models`", doc.span)
            return
        for k, ks, _ in doc.items:
            if k == "modules":
                imp.error("E241", "`modules` (per-module merges of multimodal models) has no "
                          "mergec counterpart", ks,
                          help="import each module's merge as a separate config")
            elif k not in TOP_KEYS:
                imp.error("E241", f"unknown key `{k}` in a mergekit config", ks,
                          help="the keys are " + ", ".join(f"`{t}`" for t in TOP_KEYS[:-1]))
        mnode = doc.get("merge_method")
        if mnode is None:
            imp.error("E244", "the config has no `merge_method`", doc.span,
                      help="add `merge_method: linear` (or ties, slerp, ...)")
            return
        method = mnode.value if mnode.kind == "scalar" else None
        spec = METHODS.get(method) if isinstance(method, str) else None
        if spec is None:
            imp.error("E242", f"mergekit's merge method `{method}` has no mergec counterpart",
                      mnode.span, help="mergec imports: " + ", ".join(METHODS))
            return
        self.spec = spec
        self.method_span = mnode.span
        models, slices = doc.get("models"), doc.get("slices")
        if (models is None) == (slices is None):
            imp.error("E244", "a config has either `models` or `slices`", doc.span)
            return
        self.base_ref = None
        bnode = doc.get("base_model")
        if bnode is not None:
            self.base_ref = bnode.value if bnode.kind == "scalar" else None
            self.base_name = imp.model(bnode)
        self.glob = self.params_of(doc.get("parameters"), "merge")
        if models is not None:
            expr, wheres = self.models_form(models)
        else:
            expr, wheres = self.slices_form(slices)
        options = self.options()
        if expr is None:
            return
        text = f"output {self.out_name} = {expr}"
        for sel, entries in wheres:
            text += f"\n    where {sel} {{ " + ", ".join(entries) + " }"
        if options:
            text += " {\n" + "\n".join(f"    {k} = {v}" for k, v in options) + "\n}"
        imp.body.append(text)
        if spec.random:
            imp.warn("W331", f"`{method}` draws random numbers: mergec's differ from "
                     "mergekit's, so the result agrees in distribution, not entry by entry",
                     mnode.span, help="`set seed = N` fixes mergec's numbers")
        self.numerics_warnings(method)

    # inputs
    def params_of(self, node: _Y | None, level: str) -> dict[str, tuple[list[Cond], Span]]:
        out: dict[str, tuple[list[Cond], Span]] = {}
        if node is None:
            return out
        if node.kind != "map":
            self.imp.error("E244", "`parameters` is a mapping of names to values", node.span)
            return out
        for k, ks, v in node.items:
            conds = self.imp.setting(v, level)
            if conds is not None:
                out[str(k)] = (conds, ks)
        return out

    def models_form(self, node: _Y):
        imp = self.imp
        if node.kind != "seq" or not node.children:
            imp.error("E244", "`models` is a list of `- model: ...` entries", node.span)
            return None, []
        inputs = []
        for item in node.children:
            if item.kind != "map" or item.get("model") is None:
                imp.error("E244", "each entry of `models` needs `model:`", item.span)
                continue
            for k, ks, _ in item.items:
                if k not in MODEL_KEYS:
                    imp.error("E241", f"unknown key `{k}` in a model entry", ks,
                              help="a model entry has `model` and `parameters`")
            m = item.get("model")
            name = imp.model(m)
            if name is None:
                continue
            inputs.append(_Input(name, str(m.value).strip(), item.get("parameters"), item.span))
        return self.call(inputs, None, one_block=False, level="models")

    def slices_form(self, node: _Y):
        imp, spec = self.imp, self.spec
        if node.kind != "seq" or not node.children:
            imp.error("E244", "`slices` is a list of `- sources: ...` entries", node.span)
            return None, []
        parts, wheres_all = [], []
        for si, sl in enumerate(node.children):
            if sl.kind != "map" or sl.get("sources") is None:
                imp.error("E244", "each slice needs `sources:`", sl.span)
                continue
            for k, ks, _ in sl.items:
                if k == "residual_weight":
                    imp.error("E241", "a slice's `residual_weight` has no mergec counterpart",
                              ks)
                elif k not in SLICE_KEYS:
                    imp.error("E241", f"unknown key `{k}` in a slice", ks,
                              help="a slice has `sources`, `parameters` and `base_model`")
            srcs = sl.get("sources")
            if srcs.kind != "seq" or not srcs.children:
                imp.error("E244", "`sources` is a list of `- model: ...` entries", srcs.span)
                continue
            inputs, lengths, ranges, n0 = [], set(), set(), len(imp.errors)
            for src in srcs.children:
                if src.kind != "map" or src.get("model") is None:
                    imp.error("E244", "each source needs `model:`", src.span)
                    continue
                for k, ks, _ in src.items:
                    if k not in SOURCE_KEYS:
                        imp.error("E241", f"unknown key `{k}` in a slice source", ks,
                                  help="a source has `model`, `layer_range` and `parameters`")
                m, lr = src.get("model"), src.get("layer_range")
                name = imp.model(m)
                rng = _layer_range(imp, lr, src)
                if name is None or rng is None:
                    continue
                if name != imp.model_names.get(str(m.value).strip(), name):
                    imp.error("E241", "a LoRA applied to a slice has no mergec counterpart "
                              "(an adapter cannot be sliced)", m.span)
                    continue
                lengths.add(rng[1] - rng[0])
                ranges.add(rng)
                inputs.append(_Input(f"{name}.layers[{rng[0]}:{rng[1]}]",
                                     str(m.value).strip(), src.get("parameters"), src.span))
            if len(lengths) > 1:
                imp.error("E244", "the sources of a slice cover different numbers of blocks",
                          srcs.span, help="every source of a slice has a layer range of the "
                          "same length")
            if len(imp.errors) > n0:
                continue
            base_node = sl.get("base_model")
            base_ref = None
            if base_node is not None:
                imp.model(base_node)
                base_ref = str(base_node.value).strip()
            slice_params = self.params_of(sl.get("parameters"), "slice")
            whole = None  # a merge with base=: of whole models, then sliced
            if spec.base in ("required", "optional") and (base_ref or self.base_ref):
                if len(ranges) != 1:
                    imp.error("E241", f"the sources of a `{self.spec_key()}` slice cover "
                              "different blocks: mergec takes `base=` as a whole model and "
                              "slices the merge (`ties(...).layers[a:b]`), so every source of "
                              "the slice needs the same `layer_range`", srcs.span)
                    continue
                if _has_gradient(sl.get("parameters")) or any(
                        _has_gradient(i.params) for i in inputs):
                    imp.error("E243", f"a gradient in a slice of `{self.spec_key()}`: mergec "
                              "merges the whole models and slices the result, so a ramp "
                              "would run over the model's blocks, not the slice's",
                              sl.span, help="give the slice constant values, or one slice "
                              "per value")
                    continue
                whole = next(iter(ranges))
                inputs = [_Input(i.expr.split(".layers[", 1)[0], i.ref, i.params, i.span)
                          for i in inputs]
            if spec.name == "passthrough" and len(inputs) == 1 and not any(
                    _has_params(i.params) for i in inputs) and not slice_params and not \
                    self.glob:
                parts.append(inputs[0].expr)
                continue
            expr, wheres = self.call(inputs, slice_params, one_block=lengths == {1},
                                     level="slice", base_ref=base_ref)
            if expr is None:
                continue
            if whole is not None:
                expr = f"{expr}.layers[{whole[0]}:{whole[1]}]"
            if wheres:
                let = imp.fresh(f"{self.out_name}_slice_{si}")
                text = f"let {let} = {expr}"
                for sel, entries in wheres:
                    text += f"\n    where {sel} {{ " + ", ".join(entries) + " }"
                imp.body.append(text)
                parts.append(let)
            else:
                parts.append(expr)
        if imp.errors:
            return None, []
        return "stack(" + ", ".join(parts) + ")", wheres_all

    def call(self, inputs: list[_Input], slice_params, *, one_block: bool, level: str,
             base_ref: str | None = None):
        """The mergec call for one set of inputs, and its where blocks."""
        imp, spec = self.imp, self.spec
        from mergec.methods import REGISTRY

        mm = REGISTRY[spec.name]
        n0 = len(imp.errors)
        base_ref = base_ref or self.base_ref
        base_expr = None
        if spec.base != "none" and base_ref is not None:
            match = [i for i in inputs if i.ref == base_ref]
            if spec.base == "first":
                if not match:
                    imp.error("E244", "slerp's `base_model` must be one of its two models",
                              self.doc.key_span("base_model"))
                    return None, []
                inputs = match[:1] + [i for i in inputs if i is not match[0]]
            else:
                if match:
                    base_expr = match[0].expr
                    inputs = [i for i in inputs if i.ref != base_ref]
                elif level == "slice":
                    imp.error("E244", "the base model of a slice must be one of its sources "
                              "(its layer range says which blocks)", self.doc.span)
                    return None, []
                else:
                    base_expr = imp.models[base_ref] if base_ref in imp.models else \
                        imp.outputs.get(base_ref)
        elif spec.base in ("required", "first") and base_ref is None:
            imp.error("E244", f"mergekit's `{self.spec_key()}` needs a `base_model`",
                      self.method_span, help="add `base_model:` to the config")
            return None, []
        if not inputs:
            imp.error("E244", "no model to merge besides the base model", self.method_span)
            return None, []
        if self.default_source is None:
            self.default_source = imp.model_names.get(
                base_ref if base_expr is not None else inputs[0].ref)
        # per parameter: the conditions of each input, in mergekit's lookup order
        per: dict[str, list[list[Cond]]] = {}
        given: set[str] = set()
        for idx, inp in enumerate(inputs):
            own = self.params_of(inp.params, "model")
            for k, (conds, ks) in own.items():
                if k not in spec.tensor:
                    if k in spec.glob:
                        imp.warn("W332", f"mergekit reads `{k}` from the merge's or the "
                                 "slice's parameters only, so it ignores it here", ks,
                                 help="move it to the `parameters:` of the merge")
                    else:
                        self.unknown(k, ks)
                    continue
            for mk, mc in list(spec.tensor.items()) + list(spec.glob.items()):
                conds: list[Cond] = []
                if mk in spec.tensor and mk in own:
                    conds += own[mk][0]
                for lvl in (slice_params or {}), self.glob:
                    if mk in lvl:
                        conds += lvl[mk][0]
                if conds:
                    given.add(mk)
                per.setdefault(mk, [[] for _ in inputs])[idx] = conds
        for lvl in (slice_params or {}), self.glob:
            for k, (_, ks) in lvl.items():
                if k not in spec.tensor and k not in spec.glob:
                    self.unknown(k, ks)
        for k in list(spec.glob):
            if spec.glob[k] is None:
                per.pop(k, None)
        if len(imp.errors) > n0:
            return None, []
        args = [i.expr for i in inputs]
        if base_expr is not None:
            args.append(f"base={base_expr}")
        wheres: list[tuple[str, list[str]]] = []
        values: dict[str, str] = {}
        for mk, lists in per.items():
            mc = spec.tensor.get(mk) or spec.glob.get(mk)
            p = mm.param(mc)
            if p is None:  # pragma: no cover - the tables above name real parameters
                continue
            default = spec.defaults.get(mc)
            transform = _transform(spec, mk)
            res = self.resolve(mk, lists, default, transform, p, one_block)
            if res is None:
                continue
            call_value, blocks = res
            if call_value is not None:
                values[mc] = call_value
            for sel, text in blocks:
                wheres.append((sel, [f"{mc} = {text}"]))
        for mc, v in spec.defaults.items():
            if mc not in values and mc not in {spec.tensor.get(k) or spec.glob.get(k)
                                               for k in given}:
                values.setdefault(mc, _num(v))
        for mc, v in spec.fixed.items():
            values[mc] = _num(v)
        if spec.name == "nuslerp" and values.get("flatten") == "false" and \
                "row_wise" not in values:
            values["row_wise"] = "true"  # mergekit's row_wise false: along the last axis
        if spec.name == "nuslerp" and values.get("flatten", "true") == "true":
            values.pop("row_wise", None)
        if spec.name.startswith("breadcrumbs"):
            self.breadcrumbs_gamma(values, len(inputs), bool(wheres))
        if spec.name == "passthrough" and "scale" not in values and len(inputs) == 1:
            return inputs[0].expr, wheres
        self.unequal |= len(inputs) > 2 or values.get("weight", "").startswith("[")
        args += [f"{k}={v}" for k, v in values.items()]
        return f"{spec.name}(" + ", ".join(args) + ")", _merge_blocks(wheres)

    def spec_key(self) -> str:
        n = self.doc.get("merge_method")
        return str(n.value) if n is not None else self.spec.name

    def unknown(self, k: str, ks: Span) -> None:
        names = list(self.spec.tensor) + [g for g in self.spec.glob]
        self.imp.error("E243", f"mergekit's `{self.spec_key()}` parameter `{k}` has no mergec "
                       "counterpart" if k in _KNOWN_ELSEWHERE else
                       f"`{self.spec_key()}` takes no parameter `{k}`", ks,
                       help="its parameters: " + ", ".join(f"`{n}`" for n in names))

    def resolve(self, mk: str, lists: list[list[Cond]], default, transform, p,
                one_block: bool):
        """(the call's value text, [(selector, value text)]) for one parameter."""
        imp = self.imp
        filters: list[str] = []
        for conds in lists:
            for c in conds:
                if c.filter is not None and c.filter not in filters:
                    filters.append(c.filter)
        if len(filters) > MAX_FILTERS:
            imp.error("E243", f"`{mk}` has {len(filters)} different filters; mergec's import "
                      f"handles at most {MAX_FILTERS}", lists[0][0].span if lists[0] else None)
            return None

        def value(conds: list[Cond], s: frozenset) -> Any:
            for c in conds:
                if c.filter is None or c.filter in s:
                    return c.value
            return default

        def row(s: frozenset) -> tuple:
            return tuple(transform(value(conds, s)) for conds in lists)

        def text(r: tuple, span: Span | None) -> str | None:
            if all(v is None for v in r):
                return None
            if any(v is None for v in r):
                if p.required:
                    imp.error("E244", f"`{mk}` is given for some models and not others",
                              span, help=f"give `{mk}` for every model")
                    return None
                r = tuple(p.default if v is None else v for v in r)
            texts = [_value(v, one_block) for v in r]
            if len(set(texts)) == 1:
                return texts[0]
            if not p.per_input:
                imp.error("E243", f"mergec's `{p.name}` is one value for the whole call, but "
                          f"the models give `{mk}` different values", span)
                return None
            return "[" + ", ".join(texts) + "]"

        span0 = next((c.span for conds in lists for c in conds), None)
        base_row = row(frozenset())
        call_text = text(base_row, span0)
        blocks: list[tuple[frozenset, tuple]] = []
        order = list(reversed(filters))  # later blocks win: mergekit's first filter last
        for k in range(1, len(order) + 1):
            for combo in itertools.combinations(order, k):
                s = frozenset(combo)
                current = base_row
                for bs, br in blocks:
                    if bs <= s:
                        current = br
                want = row(s)
                if want != current:
                    blocks.append((s, want))
        out = []
        for s, r in blocks:
            sel = " and ".join(_glob(f) for f in order if f in s)
            t = text(r, span0)
            if t is None:
                continue
            out.append((sel, t))
        return call_text, out

    def breadcrumbs_gamma(self, values: dict[str, str], n: int, has_where: bool) -> None:
        """mergekit skips breadcrumbs at density 1 and keeps the density when density +
        gamma > 1: mergec's gamma 0, and gamma 1 - density, say the same."""
        def vals(key, default):
            t = values.get(key)
            if t is None:
                return [default] * n
            items = t[1:-1].split(", ") if t.startswith("[") else [t] * n
            try:
                return [float(x) for x in items]
            except ValueError:
                return None

        d, g = vals("density", 1.0), vals("gamma", 0.01)
        if d is None or g is None or has_where:
            self.imp.warn("W330", "mergekit skips breadcrumbs where density is 1 and keeps "
                          "the density where density + gamma > 1; with gradients or filters "
                          "the import cannot write mergec's gamma for each case",
                          self.method_span, help="check `gamma` against docs/parity.md")
            return
        new = []
        for di, gi in zip(d, g):
            if di >= 1.0:
                new.append(0.0)
            elif di + gi > 1.0:
                new.append(1.0 - di)
            else:
                new.append(gi)
        if new != g:
            texts = [_num(x) for x in new]
            values["gamma"] = texts[0] if len(set(texts)) == 1 else \
                "[" + ", ".join(texts) + "]"

    def options(self) -> list[tuple[str, str]]:
        imp, doc = self.imp, self.doc
        out = []
        d, od = doc.get("dtype"), doc.get("out_dtype")
        for node in (od, d):
            if node is None:
                continue
            v = str(node.value)
            if v not in DTYPES:
                imp.error("E243", f"dtype `{v}` cannot be written by mergec", node.span,
                          help="mergec writes bfloat16, float16 or float32")
                return out
        store = od if od is not None else d
        if store is not None:
            out.append(("dtype", f'"{DTYPES[str(store.value)]}"'))
        if d is not None and DTYPES.get(str(d.value)) != "float32":
            imp.warn("W331", f"mergekit computes in {DTYPES.get(str(d.value))}; mergec "
                     "computes in float32 and rounds once, at the end, so the results "
                     "differ by the rounding of the intermediate values", d.span,
                     help="write `dtype: float32` with `out_dtype:` to compute as mergec does")
        tok = doc.get("tokenizer_source")
        tname = None
        if doc.get("tokenizer") is not None:
            imp.error("E245", "a `tokenizer:` block (merged vocabularies, added tokens) has no "
                      "mergec counterpart", doc.key_span("tokenizer"),
                      help="mergec copies one model's tokenizer: `tokenizer_source: MODEL`")
        if doc.get("chat_template") is not None:
            imp.error("E245", "`chat_template` has no mergec counterpart",
                      doc.key_span("chat_template"),
                      help="set the template in the written tokenizer_config.json")
        if tok is not None:
            if tok.value == "union":
                imp.error("E245", "`tokenizer_source: union` (a merged vocabulary) has no "
                          "mergec counterpart", tok.span,
                          help="mergec copies one model's tokenizer: `tokenizer_source: "
                          "base` or a model")
            elif tok.value == "base":
                if self.base_ref is None:
                    imp.error("E244", "`tokenizer_source: base` needs a `base_model`", tok.span)
                else:
                    tname = imp.model_names.get(self.base_ref)
            else:
                imp.model(tok)
                tname = imp.model_names.get(str(tok.value).strip())
        # mergekit's config (and tokenizer, unless told): the base model's, else the first's
        config = imp.model_names.get(self.base_ref) if self.base_ref is not None else None
        if tname is None and tok is None:
            tname = config
        if tname is not None and tname != self.default_source:
            out.append(("tokenizer", tname))
        if config is not None and config != self.default_source:
            out.append(("config", config))
        return out

    def numerics_warnings(self, method: str) -> None:
        imp, spec = self.imp, self.spec
        if spec.counts:  # sce: TIES and breadcrumbs take count="floor"
            for node in self.value_nodes("select_topk"):
                imp.warn("W330", "mergekit keeps `int(select_topk * m)` entries, m the entries "
                         "whose variance across the inputs is not 0; mergec "
                         "`round_half_up(select_topk * n)` of all n", node,
                         help="they agree where every entry changed; docs/parity.md has the "
                         "case of fine-tunes that leave entries unchanged")
                break
        if method == "multislerp" and self.unequal:
            imp.warn("W331", "mergekit 0.1.5's multislerp gives the normalized weighted mean "
                     "direction; mergec's takes a tangent-space step, the same only for two "
                     "inputs of equal weight", self.method_span)
        if method == "karcher":
            imp.warn("W331", "mergec takes the last Karcher step shorter than `tol`, mergekit "
                     "stops before it: the results differ by less than `tol` of the norm",
                     self.method_span)

    def value_nodes(self, key: str) -> list[Span]:
        """Spans of every `key:` in the document whose value is below 1 somewhere."""
        found = []

        def walk(node: _Y):
            if node.kind == "map":
                for k, ks, v in node.items:
                    if k == key and _below_one(v):
                        found.append(ks)
                    walk(v)
            elif node.kind == "seq":
                for c in node.children:
                    walk(c)
        walk(self.doc)
        return found


_KNOWN_ELSEWHERE = {"int8_mask", "rescale", "select_topk", "normalize_weights", "eps",
                    "embed_slerp", "consensus_method", "sparsification_method",
                    "vote_sgn", "apply_stock", "random_mask", "random_mask_seed",
                    "max_iter", "tol", "filter_wise", "t", "scale", "lambda"}


def _below_one(node: _Y) -> bool:
    if node.kind == "scalar":
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool) and \
            node.value < 1
    if node.kind == "seq":
        return any(_below_one(c) for c in node.children)
    if node.kind == "map":
        v = node.get("value")
        return v is not None and _below_one(v)
    return False


def _transform(spec: MethodMap, mk: str):
    if mk == "rescale":
        return lambda v: v if v is None else ("l1" if v is True else "none" if v is False
                                              else v)
    if spec.name == "nuslerp" and mk == "nuslerp_row_wise":
        return lambda v: v if not isinstance(v, bool) else not v
    return lambda v: v


def _has_gradient(node: _Y | None) -> bool:
    """Whether a parameters node holds a gradient (a list of numbers) anywhere."""
    if node is None or node.kind == "scalar":
        return False
    if node.kind == "seq":
        if node.children and all(c.kind == "scalar" for c in node.children):
            return True
        return any(_has_gradient(c) for c in node.children)
    return any(_has_gradient(v) for _, _, v in node.items)


def _has_params(node: _Y | None) -> bool:
    return node is not None and (node.kind != "map" or bool(node.items))


def _layer_range(imp: _Import, lr: _Y | None, src: _Y) -> tuple[int, int] | None:
    if lr is None:
        imp.error("E244", "a slice source needs `layer_range: [start, end]`", src.span)
        return None
    ok = lr.kind == "seq" and len(lr.children) == 2 and all(
        c.kind == "scalar" and isinstance(c.value, int) and not isinstance(c.value, bool)
        and c.value >= 0 for c in lr.children)
    if not ok or lr.children[0].value >= lr.children[1].value:
        imp.error("E244", "`layer_range` is `[start, end]`: whole numbers, start below end",
                  lr.span, help="blocks start to end - 1, as in mergec's `.layers[start:end]`")
        return None
    return lr.children[0].value, lr.children[1].value


def _merge_blocks(blocks: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Adjacent blocks with the same selector as one block."""
    out: list[tuple[str, list[str]]] = []
    for sel, entries in blocks:
        if out and out[-1][0] == sel:
            out[-1][1].extend(entries)
        else:
            out.append((sel, list(entries)))
    return out


# --- the command -----------------------------------------------------------------------


@dataclass
class Imported:
    text: str  # the formatted recipe
    warnings: list[Diagnostic]
    outputs: list[str]


def import_text(text: str, file: str, *, out_dir: Path, base_dir: Path,
                name: str | None = None) -> Imported:
    """Translate the mergekit config ``text`` (named ``file`` in diagnostics). Local model
    paths are resolved against ``base_dir`` (mergekit reads them from its working folder)
    and written relative to ``out_dir``, the recipe's folder. Raises MergecError with
    every problem found."""
    import yaml

    from mergec.lang.fmt import format_text

    imp = _Import(file, text, out_dir, base_dir)
    try:
        docs = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        span = None
        if mark is not None:
            span = Span(file, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2,
                        mark.index, mark.index + 1)
        problem = getattr(e, "problem", None) or str(e)
        raise MergecError(Diagnostic("E240", f"not valid YAML: {problem}", span,
                                     help="a mergekit config is a YAML file")) from None
    if not docs:
        raise MergecError(Diagnostic("E244", "the config is empty", Span(file, 1, 1, 1, 2),
                                     help="a mergekit config has at least `merge_method` "
                                     "and `models`"))
    nodes = [_Y(d, file, imp.lines) for d in docs]
    names = []
    for i, node in enumerate(nodes):
        doc_name = node.get("name") if node.kind == "map" else None
        if doc_name is not None and isinstance(doc_name.value, str):
            out = imp.fresh(doc_name.value)
        elif len(nodes) == 1:
            out = imp.fresh(name or "merged")
        else:
            out = imp.fresh(f"{name or 'merged'}_{i + 1}")
        _Doc(imp, node, out).run()
        if doc_name is not None and isinstance(doc_name.value, str):
            imp.outputs[doc_name.value] = out
        names.append(out)
    if imp.errors:
        raise MergecError(imp.errors + imp.warnings)
    header = [f"# imported from {Path(file).name} by `mergec import`"]
    recipe = "\n".join(header + imp.head + [""] + imp.body) + "\n"
    return Imported(format_text(recipe, "<imported>"), imp.warnings, names)


def import_file(path: Path, *, out: Path | None = None, base_dir: Path | None = None,
                name: str | None = None) -> Imported:
    """``import_text`` of the config file at ``path``."""
    from mergec.diagnostics import UsageError

    try:
        data = path.read_bytes()[:MAX_CONFIG_BYTES + 1]
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(Diagnostic("E501", f"cannot read config `{path}`: "
                                    f"{getattr(e, 'strerror', None) or e}")) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(Diagnostic("E504", f"config `{path}` is larger than 1 MB"))
    out_dir = (out.parent if out is not None else Path.cwd())
    return import_text(text, str(path), out_dir=out_dir,
                       base_dir=base_dir if base_dir is not None else Path.cwd(), name=name)
