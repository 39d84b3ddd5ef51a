"""Generate the reference pages that are derived from code.

    python -m mergec.docs_gen            # write docs/errors.md and docs/methods.md
    python -m mergec.docs_gen --check    # exit 1 if either file is stale, change nothing

``docs/errors.md`` comes from the diagnostic registry (``mergec.errors``) and
``docs/methods.md`` from the method registry (``mergec.methods``), so the pages
cannot drift from what ``mergec explain`` and ``mergec methods`` print. ``make docs``
runs the first form; ``tests/test_docs.py`` fails when the files are stale.

methods.md also carries prose kept here: how the methods compute, the seeding rule, the
notes on TIES ``trim="model"``, and the table of parameters that reproduce mergekit
0.1.5 (a summary of docs/parity.md). Generation fails when that table misses a method of
the registry or names a parameter a method does not have.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mergec.check.program import DEFAULT_SEED
from mergec.errors import errors_markdown
from mergec import methods as registry
from mergec.lang.fmt import literal

#: docs/ of the repository this module belongs to
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"

_GENERATED = ("This file is generated from the method modules in `mergec/methods/` by `make docs` "
              "(`python -m mergec.docs_gen`); a test fails when it is stale. Edit the "
              "method modules, not this file.")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code that survives backticks in ``text``."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_WITHOUT_BASE = "Without base="


def _base_text(m: registry.Method) -> str:
    if m.base == "delta":
        without = ("Without it, the inputs must be Deltas (`a - base`) and the result is a "
                   "Delta.")
        if m.models_without_base:
            without = ("Without it, the inputs are merged as they are (all Models or all "
                       "Deltas) and the result has their kind.")
        return ("optional `base=`. With it, the inputs are models: each becomes a task "
                "vector `x - base`, the method merges the task vectors, and the result is "
                "`base + merged`, a Model. " + without)
    return ("does not take `base=`. The inputs are merged as they are — all Models, all "
            "Deltas or all layer runs of equal length — and the result has their kind.")


def _method_section(m: registry.Method) -> list[str]:
    out = [f"## `{m.name}`", "", m.summary, ""]
    out += [f"- **Inputs:** {m.arity_text()}",
            f"- **Base:** {_base_text(m)}"]
    if m.random:
        out.append("- **Randomness:** draws random numbers, seeded per tensor from "
                   "(`set seed`, output name, tensor name): the same on every run and "
                   "backend, whatever the execution order, threads or sharding "
                   "([randomness and seeds](#randomness-and-seeds)).")
    out += ["", "Formula:", "", "```text", m.formula, "```", ""]
    if m.params:
        out += ["| parameter | type | default | range | per input | doc |",
                "|---|---|---|---|---|---|"]
        for p in m.params:
            default = "required" if p.required else _code(literal(p.default, short=True))
            rng = p.range_text()
            rng = "any" if rng == "any" else _code(rng)
            kind = p.type_text
            if p.type == "number" and p.rampable:
                kind += ", ramp"
            out.append(f"| `{p.name}` | {_cell(kind)} | {_cell(default)} | {_cell(rng)} | "
                       f"{'yes' if p.per_input else 'no'} | {_cell(p.doc)} |")
        out.append("")
    else:
        out += ["No parameters.", ""]
    if m.notes and not m.notes.startswith(_WITHOUT_BASE):
        out += [m.notes, ""]
    out += _EXTRA.get(m.name, [])
    if m.references:
        out += ["References:", ""] + [f"- {r}" for r in m.references] + [""]
    return out


def methods_markdown() -> str:
    """docs/methods.md: one section per method of the registry, in registry order, with
    the shared rules (numbers, randomness) before them and the mergekit mapping after."""
    lines = ["# Merge methods", "",
             "Every merge method is a call whose name is the method's name: "
             "`slerp(a, b, t=0.5)`, `task_arithmetic(math, code, base=base, weight=[1, 0.5])`. "
             "Inputs are positional; parameters are passed by name. A parameter marked "
             "*per input* takes one value for all inputs or a list with one value per "
             "input, in input order. A parameter whose type says *ramp* may vary with "
             "depth: `t=ramp(0, 1)`. `mergec methods NAME` prints the same information.",
             "",
             "The builtins `stack(...)` (layer surgery) and `ramp(...)` (depth schedules) "
             "are not merge methods; [the language reference](language.md) describes them "
             "(`mergec methods stack` and `mergec methods ramp` print a summary).",
             ""]
    lines += ["Every method below runs, on every backend (`torch`, `jax` and the NumPy "
              "`reference`; see [backends.md](backends.md)).", ""]
    lines += [_GENERATED, ""]
    lines += ["| method | inputs | summary |", "|---|---|---|"]
    for m in registry.METHODS:
        lines.append(f"| [`{m.name}`](#{m.name}) | {m.arity_text()} | "
                     f"{_cell(m.summary)} |")
    lines.append("")
    lines += ["Also on this page: [how the methods compute](#how-the-methods-compute) · "
              "[randomness and seeds](#randomness-and-seeds) · "
              "[reproducing other tools](#reproducing-other-tools)", ""]
    lines += _COMPUTE + _RANDOM
    for m in registry.METHODS:
        lines += _method_section(m)
    lines += _parity_section()
    return "\n".join(lines).rstrip("\n") + "\n"


# Shared rules ---------------------------------------------------------------------------

_COMPUTE = [
    "## How the methods compute", "",
    "- **float32, one cast at the end.** Each input tensor is read in its stored dtype and "
    "widened to float32; the methods compute in float32, with their reductions (norms, dot "
    "products, L1 sums, the TIES sign vote) accumulated in float64. The result is cast "
    "once, at the end, to the output's storage dtype (round to nearest even).",
    "- **Weighted sums in float64.** Recipe arithmetic (`+`, `-`, scaling by a number) and "
    "the linear methods `linear`, `task_arithmetic` and `passthrough` are weighted sums. "
    "They are accumulated in float64, and a weighted sum that feeds another one stays in "
    "float64, so a chain of them is rounded to float32 once, where it meets a non-linear "
    "method or the output, however the recipe writes it. Before a build, mergec folds such "
    "chains into a single weighted sum (`mergec plan` shows it; see "
    "[the CLI reference](cli.md#mergec-plan)).",
    "- **Counts.** A method that keeps a fraction `f` of a tensor's `n` entries keeps "
    "`round_half_up(f * n)` of them, and at least one (`density=1` keeps all). `ties`, "
    "`breadcrumbs` and `breadcrumbs_ties` take `count=\"floor\"` to keep `int(f * n)`, "
    "as mergekit does.",
    "- **Ties in a ranking.** Top-k keeps the largest magnitudes; among equal magnitudes "
    "the lower flat index comes first. The same rule orders breadcrumbs and DELLA ranks.",
    "- **Task vectors.** With `base=`, each input `x` becomes `x - base` before the method "
    "sees it, and the result is `base + merged`. An [adapter](language.md#lora-adapters) "
    "is already a task vector; where it does not adapt a tensor, it is zero there.",
    "",
]

_RANDOM = [
    "## Randomness and seeds", "",
    "`dare_linear`, `dare_ties`, `della` and `della_linear` drop entries at random. Their "
    "random numbers are reproducible:",
    "",
    "- **Per tensor.** Each tensor gets its own seed, a hash of the recipe's seed "
    "(`set seed = N`), the output's name and the tensor's name (for a call over layer "
    "runs, the name with blocks counted from the start of the run). Each input of the "
    "call draws from its own stream of that seed.",
    f"- **Default seed.** Without `set seed`, the seed is {DEFAULT_SEED}. The seed used is "
    "written to the model card (`README.md`) of every output, so a build can be repeated.",
    "- **Independent of how the build runs.** The numbers do not depend on the order in "
    "which tensors are computed, on threads, on the shard size or on `--max-memory`.",
    "- **The same on every backend.** The numbers are drawn by one counter-based generator "
    "(Philox, in NumPy) and handed to the backend, so the masks are identical on the "
    "`reference`, `torch` and `jax` backends, on CPU and GPU.",
    "- **What changes them.** Another seed, or another output name, draws other numbers. "
    "The seed does not depend on the call: two random calls in one output that compute "
    "the same tensor name draw the same numbers for their first inputs, so "
    "`dare_linear(math - base, density=0.5) + dare_linear(code - base, density=0.5)` drops "
    "the same entries from both task vectors. Merge them in one call "
    "(`dare_linear(math, code, base=base, density=0.5)`), "
    "where each input has its own stream.",
    "",
]

#: extra paragraphs at the end of a method's section (before its references)
_EXTRA: dict[str, list[str]] = {
    "ties": [
        "**`trim=\"model\"`.** By default each tensor of a task vector keeps its own top "
        "`density` fraction. With `trim=\"model\"` the top `density` fraction is taken over "
        "every tensor of the output at once, so tensors that changed more keep more entries. "
        "The threshold is exact: before writing the output, mergec streams over each task "
        "vector twice, one tensor at a time (a histogram of the magnitudes, then the one "
        "histogram bucket that holds the k-th largest), without sorting and without holding "
        "the model in memory. Those two passes read the inputs again; the `read` figure of "
        "`mergec plan` does not count them. When the density varies by tensor (a `ramp` or "
        "a `where`), the tensors that share a density value are ranked together.",
        "",
    ],
}


# Reproducing mergekit -------------------------------------------------------------------

_NAME_RE = re.compile(r"\b([a-z_]+)=")

#: method -> (mergec parameters that reproduce mergekit 0.1.5, remaining differences).
#: Every `name=` in the first column must be a parameter of the method (checked).
_PARITY: tuple[tuple[str, str, str], ...] = (
    ("linear", "the same parameters and defaults", ""),
    ("task_arithmetic", "the same parameters and defaults (`normalize=false`, `lambda=1`)", ""),
    ("slerp", "mergekit's `base_model` is the first input: `slerp(a, b, t=...)`. A "
     "gradient `[v0, ..., vk]` is `ramp(v0, ..., vk)`; a `filter` (a substring of the name, "
     "the first match wins) becomes a `where` glob (the whole name, the last match wins)",
     "over a slice of a single block, mergekit evaluates a gradient at its last value and "
     "mergec a ramp at its first: write that block's `t=` out"),
    ("nuslerp", "`flatten=false, row_wise=true` for `nuslerp_flatten: false` with "
     "`nuslerp_row_wise: false`, and `row_wise=false` for `nuslerp_row_wise: true`: the "
     "two flags name opposite axes; `lerp_threshold=1`",
     "with mergec's default `lerp_threshold` (0.9995), nearly parallel tensors are "
     "interpolated linearly by mergec and spherically by mergekit: below 1e-4 relative"),
    ("multislerp", "the same parameters",
     "the same result for two inputs of equal weight only; otherwise mergekit 0.1.5 gives "
     "the normalized weighted mean direction, and no mergec parameter reproduces it"),
    ("karcher", "the same parameters (`max_iter`, `tol`; equal weights)",
     "mergec takes the last step shorter than `tol`, mergekit stops before it: less than "
     "`tol` of the norm"),
    ("ties", "`weighted_elect=true, count=\"floor\"`, and write `density=` out "
     "(mergekit's default is 1, mergec's 0.2)",
     "nothing beyond float32 rounding (`count=\"floor\"`: mergekit keeps "
     "`int(density * n)` entries, mergec's default rounds half up)"),
    ("dare_linear", "`rescale=\"l1\"` (mergekit's `rescale: false` is `rescale=\"none\"`)",
     "random: other random numbers, the same distribution"),
    ("dare_ties", "`rescale=\"l1\", normalize=false, weighted_elect=true`",
     "random: other random numbers, the same distribution"),
    ("breadcrumbs", "at `density=1` (mergekit's default) write `gamma=0.0`; where "
     "density + gamma > 1, write `gamma=` with the value 1 - density; `count=\"floor\"`",
     "nothing beyond float32 rounding"),
    ("breadcrumbs_ties", "`normalize=false, weighted_elect=true`, and as for breadcrumbs",
     "nothing beyond float32 rounding"),
    ("della", "`rescale=\"l1\", weighted_elect=true`",
     "random: other random numbers, the same distribution"),
    ("della_linear", "`rescale=\"l1\"`", "random: other random numbers, the same distribution"),
    ("model_stock", "`model_stock(a, b, c, base=base)` (mergekit lists the base among its "
     "models)", ""),
    ("sce", "the same parameters",
     "mergekit uses equal weights when the task vectors are tiny (sum of mean squares below "
     "1e-6) and counts `select_topk` over the entries whose variance is not zero"),
    ("nearswap", "`nearswap(a, base=base, t=...)`", ""),
    ("passthrough", "the same `scale`; mergekit's layer `slices` are `stack(...)`", ""),
)


_AGREE = "nothing beyond float32 rounding"


def _parity_section() -> list[str]:
    covered = {name for name, _, _ in _PARITY}
    missing = [m.name for m in registry.METHODS if m.name not in covered]
    out = ["## Reproducing other tools", "",
           "The optional parity suite (`tests/parity/`) builds the same merges with mergekit "
           "0.1.5 and with mergec and compares every tensor. Written with the parameters "
           "below, every deterministic method agrees with mergekit to float32 rounding "
           "(within 1e-5 relative) on the suite's models, except where the last column "
           "says otherwise; the random methods agree in distribution, since the two tools "
           "draw different random numbers. [parity.md](parity.md) has the measurements, "
           "the mapping of every mergekit option and the reason for each difference.",
           "",
           "| method | to reproduce mergekit 0.1.5 | what still differs |", "|---|---|---|"]
    for name, args, diff in _PARITY:
        m = registry.get(name)
        if m is None:
            raise ValueError(f"docs_gen._PARITY names `{name}`, which is not a method")
        for p in _NAME_RE.findall(args):
            if p != "base" and m.param(p) is None:
                raise ValueError(f"docs_gen._PARITY: `{name}` has no parameter `{p}`")
        lines_args = _cell(args)
        out.append(f"| [`{name}`](#{name}) | {lines_args} | {_cell(diff) or _AGREE} |")
    for name in missing:  # methods mergekit 0.1.5 does not offer
        out.append(f"| [`{name}`](#{name}) | not offered by mergekit 0.1.5 | |")
    out += ["",
            "Two mergec options have no mergekit counterpart: `elect=\"count\"` (a majority "
            "vote of signs) and `trim=\"model\"` (TIES over the whole model).",
            ""]
    return out


def pages() -> dict[str, str]:
    """File name (inside docs/) -> generated text."""
    errors = errors_markdown()
    return {"errors.md": errors.rstrip("\n") + "\n", "methods.md": methods_markdown()}


def stale(docs_dir: Path = DOCS_DIR) -> list[Path]:
    """The generated files under ``docs_dir`` that are missing or differ from the code."""
    out = []
    for name, text in pages().items():
        p = docs_dir / name
        try:
            current = p.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            out.append(p)
    return out


def write(docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Write every generated file that changed; return the ones written."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in stale(docs_dir):
        p.write_text(pages()[p.name], encoding="utf-8")
        written.append(p)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mergec.docs_gen",
                                 description="Write docs/errors.md and docs/methods.md "
                                             "from the registries.")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a generated file is stale; write nothing")
    ap.add_argument("--docs-dir", type=Path, default=DOCS_DIR,
                    help=f"folder of the generated files (default: {DOCS_DIR})")
    args = ap.parse_args(argv)
    if args.check:
        old = stale(args.docs_dir)
        for p in old:
            print(f"stale: {p} (run `make docs`)", file=sys.stderr)
        if not old:
            print("generated docs are up to date")
        return 1 if old else 0
    for p in write(args.docs_dir):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
