"""The checked program: typed, resolved expressions over whole models.

The checker turns the syntax tree into these nodes. Every tensor-valued node knows its
kind (Model, Delta, Layers) and, when the inputs' headers could be read, the table of
tensors it produces (name -> shape, dtype) — that is how shapes are checked before any
tensor byte is read. The lowering (`mergec.ir.lower`) turns them into per-tensor IR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Union

from mergec.check.methods import Method
from mergec.diagnostics import Span

MODEL, DELTA, LAYERS = "Model", "Delta", "Layers"


def kinds_text(kind: str) -> str:
    """The plural of a value kind in messages: Models, Deltas, Layers."""
    return kind if kind.endswith("s") else kind + "s"


def kind_text(kind: str) -> str:
    """A value kind with its article in messages: a Model, a Delta, a run of Layers."""
    return "a run of Layers" if kind == LAYERS else f"a {kind}"
NUMBER, BOOL, STRING, LIST, RAMP = "Number", "Bool", "String", "List", "Ramp"
#: the value of an output written in another form than a dense model (`lowrank(...)`,
#: `moe(...)`); such an output is not a value later statements can use
FORM = "output form"
STATS = "Stats"  # a `stats` declaration: statistics of a model's data
SCALED = "scaled model"  # an operand inside a linear combination, weight not 0 or 1
ERROR = "<error>"


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str


# Parameter values -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ramp:
    anchors: tuple[float, ...]

    def at(self, block: int | None, n_blocks: int | None) -> float:
        """Value for block `block` of `n_blocks`; tensors outside the blocks take v0."""
        a = self.anchors
        if block is None or not n_blocks or len(a) == 1:
            return float(a[0])
        x = block / (n_blocks - 1) if n_blocks > 1 else 0.0
        pos = x * (len(a) - 1)
        i = min(int(pos), len(a) - 2)
        f = pos - i
        return float(a[i] * (1 - f) + a[i + 1] * f)


#: A parameter value: a constant (number, bool, str), a Ramp, or a tuple of those
#: (one per input).
ParamValue = Union[float, int, bool, str, Ramp, tuple]


@dataclass(frozen=True)
class Override:
    """One `where` block: selectors joined with `and`, then parameter values."""

    globs: tuple[str, ...]
    layers: tuple[tuple[int | None, int | None], ...]
    values: tuple[tuple[str, ParamValue], ...]
    span: Span

    def matches(self, name: str, block: int | None) -> bool:
        if not all(fnmatchcase(name, g) for g in self.globs):
            return False
        for a, b in self.layers:
            if block is None:
                return False
            if a is not None and block < a:
                return False
            if b is not None and block >= b:
                return False
        return True


# Tensor-valued expressions ----------------------------------------------------------------


@dataclass(eq=False)
class CExpr:
    kind: str
    span: Span
    tensors: dict[str, TensorMeta] | None = field(default=None, repr=False)
    n_layers: int | None = None
    #: the table covers only some tensors of a model; the others are zero (LoRA deltas)
    sparse: bool = False


@dataclass(eq=False)
class CInput(CExpr):
    name: str = ""
    checkpoint: Any = None  # mergec.io.checkpoint.Checkpoint | None
    config: dict | None = None
    #: tensors of the table that the checkpoint stores under another name (the head of a
    #: tied model, untied by `set heads = "untie"`): table name -> stored name
    aliases: dict[str, str] = field(default_factory=dict)

    def stored_name(self, name: str) -> str:
        return self.aliases.get(name, name)


@dataclass(eq=False)
class CAdapter(CExpr):
    """A LoRA adapter: a Delta over the tensors its modules adapt (zero elsewhere)."""

    name: str = ""
    adapter: Any = None  # mergec.io.adapter.Adapter


@dataclass(eq=False)
class CStats:
    """A `stats` declaration: an opened statistics folder (docs/stats.md)."""

    name: str
    span: Span
    folder: Any = None  # mergec.io.stats_files.StatsFolder


@dataclass(eq=False)
class CLinear(CExpr):
    """sum_i c_i x_i over tensor-valued terms (arithmetic, folded)."""

    terms: tuple[tuple[CExpr, float], ...] = ()
    weight: float = 0.0  # sum of the coefficients of the Model terms
    term_spans: tuple = ()  # where each term is written, for diagnostics


@dataclass(eq=False)
class CCall(CExpr):
    method: Method | None = None
    inputs: tuple[CExpr, ...] = ()
    base: CExpr | None = None
    params: dict[str, ParamValue] = field(default_factory=dict)  # every param, defaults filled
    overrides: tuple[Override, ...] = ()
    #: for a method with statistics: one per input, and what the tensors the statistics do
    #: not cover are
    stats: tuple[CStats, ...] = ()
    fallback: CExpr | None = None


@dataclass(eq=False)
class CSlice(CExpr):
    target: CExpr | None = None
    start: int = 0
    stop: int = 0
    #: the layer stack sliced (`encoder.block.`), None where the model's blocks have none
    prefix: str | None = None


@dataclass(eq=False)
class CStack(CExpr):
    parts: tuple[CExpr, ...] = ()
    embed: CExpr | None = None
    head: CExpr | None = None
    #: output tensor -> (the value it comes from, its name there): `check.stacks.layout`
    routes: dict | None = field(default=None, repr=False)
    #: block count of every stack of the result (prefix -> count)
    counts: dict | None = None


@dataclass(eq=False)
class CMoe(CExpr):
    """A mixture of experts assembled from dense models: every tensor of the output comes
    from one of `parts` (the experts in order, then the base, then the shared expert) under
    another name; `mapping` gives, per output tensor, (part index, tensor name in that
    part), part -1 being a zero tensor. The routers are not in the table (MoeForm)."""

    parts: tuple[CExpr, ...] = ()
    mapping: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class MoeForm:
    """An output written as a mixture of experts (`moe(...)`): its layout, config, and the
    router of each layer, computed by the build from `router`."""

    layout: str  # "mixtral" | "qwen2_moe"
    n_experts: int
    experts_per_token: int
    router: str  # "random" | "cheap_embed" | "hidden"
    prompts: tuple[tuple[str, ...], ...]  # per expert
    negative: tuple[tuple[str, ...], ...]  # per expert (empty tuples when none)
    routers: tuple[tuple[str, int, tuple[int, int]], ...]  # (name, layer, [experts, hidden])
    router_dtype: str
    config: dict = field(hash=False, compare=False, default_factory=dict)
    base: CInput | None = None  # the model whose embeddings, tokenizer (and forward) it uses
    embed: str = "model.embed_tokens.weight"


@dataclass(frozen=True)
class LowRankForm:
    """An output written as a PEFT LoRA adapter: the truncated SVD of the delta of each
    2-D weight (`lora`); the other tensors of the delta are written whole as PEFT's
    `modules_to_save` when the build finds them changed (`saved`, the value `base + delta`),
    or left out (`dropped`)."""

    rank: int | None  # a fixed rank (at most min(out, in) per module), or
    energy: float | None  # the smallest rank keeping this share of the squared norm
    base: CInput | None  # the model the adapter applies to
    lora: tuple[str, ...]
    saved: tuple[str, ...]
    dropped: tuple[str, ...]
    #: the model stores its linear weights as [in, out] (GPT-2's Conv1D): PEFT's
    #: `fan_in_fan_out`, the factors are those of the transposed delta
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class Output:
    name: str
    expr: CExpr
    dtype: str | None  # storage dtype from the option block, if any
    config_from: CInput | None
    tokenizer_from: CInput | None
    span: Span
    #: None: a dense model; else how the output is written (LowRankForm, MoeForm)
    form: Any = None
    #: the input the auxiliary files come from (sentence-transformers modules,
    #: generation_config.json, processor configs): `files =`, else the tokenizer's input
    files_from: CInput | None = None
    #: the choice for inputs with and without a tied output head: "tie", "untie" or None
    tie: str | None = None
    #: the output vocabulary of `set vocab` (mergec.io.vocab.VocabPlan), or None
    vocab: Any = None


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    seed_explicit: bool = False
    backend: str = "auto"
    device: str = "auto"
    shard_size: int | None = None
    max_memory: int | None = None
    #: write NaN and infinite values a merge produces (by default they stop the build: E421)
    allow_nonfinite: bool = False


DEFAULT_SEED = 0x6D657267  # used and recorded in the model card when no `set seed` is given


@dataclass
class CheckedProgram:
    file: str
    text: str
    inputs: dict[str, Any]  # name -> CInput or CAdapter
    params: dict[str, Any]
    settings: Settings
    outputs: list[Output]
    program: Any = None  # the ast.Program
    overrides: dict[str, str] = field(default_factory=dict)  # --set name=value given
    warnings: list = field(default_factory=list)  # Diagnostics with severity "warning"
    #: the point of a sweep this program is checked at (mergec.check.sweeps.Point), or None
    point: Any = None
    stats: dict[str, CStats] = field(default_factory=dict)  # name -> `stats` declaration

    def source(self, name: str):
        """The opened checkpoint (or adapter, or statistics folder) of input `name`."""
        if name not in self.inputs and name in self.stats:
            return self.stats[name].folder
        inp = self.inputs[name]
        return inp.checkpoint if hasattr(inp, "checkpoint") else inp.adapter
