"""Generate the reference pages that are derived from code.

    python -m mergec.docs_gen            # write docs/errors.md and docs/methods.md
    python -m mergec.docs_gen --check    # exit 1 if either file is stale, change nothing

``docs/errors.md`` comes from the diagnostic registry (``mergec.errors``) and
``docs/methods.md`` from the method registry (``mergec.ops.registry``), so the pages
cannot drift from what ``mergec explain`` and ``mergec methods`` print. ``make docs``
runs the first form; ``tests/test_docs.py`` fails when the files are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergec.errors import errors_markdown
from mergec.ops import registry

#: docs/ of the repository this module belongs to
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"

_GENERATED = ("This file is generated from `mergec/ops/registry.py` by `make docs` "
              "(`python -m mergec.docs_gen`); a test fails when it is stale. Edit the "
              "registry, not this file.")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code that survives backticks in ``text``."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _lit(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _type(p: registry.Param) -> str:
    return {"number": "number", "int": "whole number", "bool": "bool",
            "string": "string"}.get(p.type, p.type)


def _status(m: registry.Method) -> str:
    if m.name in registry.IMPLEMENTED:
        return "runs in this version"
    return "declared; runs in a later version"


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
    out += [f"- **Status:** {_status(m)}",
            f"- **Inputs:** {m.arity_text()}",
            f"- **Base:** {_base_text(m)}"]
    if m.random:
        out.append("- **Randomness:** draws random numbers, seeded per tensor from "
                   "(`set seed`, output name, tensor name): the result does not depend on "
                   "execution order, threads or sharding.")
    out += ["", "Formula:", "", "```text", m.formula, "```", ""]
    if m.params:
        out += ["| parameter | type | default | range | per input | doc |",
                "|---|---|---|---|---|---|"]
        for p in m.params:
            default = "required" if p.required else _code(_lit(p.default))
            rng = p.range_text()
            rng = "any" if rng == "any" else _code(rng)
            kind = _type(p)
            if p.type == "number" and p.rampable:
                kind += ", ramp"
            out.append(f"| `{p.name}` | {_cell(kind)} | {_cell(default)} | {_cell(rng)} | "
                       f"{'yes' if p.per_input else 'no'} | {_cell(p.doc)} |")
        out.append("")
    else:
        out += ["No parameters.", ""]
    if m.notes and not m.notes.startswith(_WITHOUT_BASE):
        out += [m.notes, ""]
    if m.references:
        out += ["References:", ""] + [f"- {r}" for r in m.references] + [""]
    return out


def methods_markdown() -> str:
    """docs/methods.md: one section per method of the registry, in registry order."""
    lines = ["# Merge methods", "",
             "Every merge method is a call whose name is the method's name: "
             "`slerp(a, b, t=0.5)`, `task_arithmetic(math, code, base=base, weight=[1, 0.5])`. "
             "Inputs are positional; parameters are passed by name. A parameter marked "
             "*per input* takes one value for all inputs or a list with one value per "
             "input, in input order. A parameter whose type says *ramp* may vary with "
             "depth: `t=ramp(0, 1)`. `mergec methods NAME` prints the same information.",
             "",
             "The builtins `stack(...)` (layer surgery) and `ramp(...)` (depth schedules) "
             "are not merge methods; [the language reference](language.md) describes them.",
             "", _GENERATED, "",
             "| method | status | inputs | summary |", "|---|---|---|---|"]
    for m in registry.METHODS:
        lines.append(f"| [`{m.name}`](#{m.name}) | {_status(m)} | {m.arity_text()} | "
                     f"{_cell(m.summary)} |")
    lines.append("")
    for m in registry.METHODS:
        lines += _method_section(m)
    return "\n".join(lines).rstrip("\n") + "\n"


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
