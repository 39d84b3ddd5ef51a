"""The files of an output besides its tensors: config.json, the tokenizer files and the
model card, written through the output's writer after the tensors."""

from __future__ import annotations

import json
from pathlib import Path

from mergec import __version__
from mergec.check.output_config import derive_output_config
from mergec.check.program import CheckedProgram
from mergec.check.walk import walk
from mergec.io import hf_files
from mergec.ir.lower import LoweredOutput


def file_names(lo: LoweredOutput) -> list[str]:
    """The files written beside the tensors, in order."""
    out = lo.output
    names = ["config.json"] if derive_output_config(out) is not None else []
    if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
        names += [f.name for f in hf_files.carry_over_files(out.tokenizer_from.checkpoint.root)]
    return names + ["README.md"]


def write_files(writer, lo: LoweredOutput, checked: CheckedProgram) -> None:
    """config.json (derived at compile time, so it cannot fail here), the tokenizer files
    of the output's tokenizer input, and the model card."""
    out = lo.output
    cfg = derive_output_config(out)
    if cfg is not None:
        writer.add_file("config.json", json.dumps(cfg, indent=2) + "\n")
    if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
        for f in hf_files.carry_over_files(out.tokenizer_from.checkpoint.root):
            writer.copy_file(f.name, f)
    writer.add_file("README.md", model_card(lo, checked))


def model_card(lo: LoweredOutput, checked: CheckedProgram) -> str:
    inputs = []
    bases = []
    # the inputs the output's expression names (a zero weight is still provenance)
    used = {getattr(x, "name", None) for x in walk(lo.output.expr)}
    for o in (lo.output.config_from, lo.output.tokenizer_from):
        if o is not None:
            used.add(o.name)
    for name in [n for n in checked.inputs if n in used]:
        ck = checked.source(name)
        ref = getattr(ck, "ref", None)
        src = ref.raw if ref is not None else str(ck.root)
        if ref is not None and not ref.local:
            bases.append(ref.repo_id)
        inputs.append({"name": name, "source": src, "fingerprint": ck.content_fingerprint()})
    point = checked.point
    swept = dict(point.values) if point is not None else {}
    notes = {k: f"swept: point {point.index + 1} of {point.count} (`{point.label()}`)"
             for k in swept}
    return hf_files.model_card(
        output_name=point.folder(lo.output.name) if swept else lo.output.name,
        recipe_text=checked.text, notes=notes,
        recipe_path=Path(checked.file).name, inputs=inputs, mergec_version=__version__,
        seed=checked.settings.seed, base_models=bases, params=checked.params,
        overridden=tuple(checked.overrides))
