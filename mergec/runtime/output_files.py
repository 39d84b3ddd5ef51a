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


def carried_files(out) -> list[tuple[str, Path]]:
    """The files an output copies from its inputs, as (name in the output, path): the
    tokenizer files of its tokenizer input, then the auxiliary files (generation config,
    processor configs, sentence-transformers modules) of its `files` input."""
    found: list[tuple[str, Path]] = []
    if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
        found += [(f.name, f) for f in hf_files.tokenizer_files(out.tokenizer_from.checkpoint.root)
                  if out.vocab is None or f.name not in VOCAB_WRITTEN + VOCAB_DROPPED]
    src = out.files_from
    if src is not None and src.checkpoint is not None:
        names = {n for n, _ in found}
        found += [(n, p) for n, p in hf_files.aux_files(src.checkpoint.root) if n not in names]
    return found


#: with `set vocab`, the tokenizer files mergec writes for the output's vocabulary, and
#: those of the tokenizer input it does not carry (slow tokenizers' vocabularies, which
#: would disagree with tokenizer.json)
VOCAB_WRITTEN = ("tokenizer.json", "tokenizer_config.json")
VOCAB_DROPPED = ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                 "spiece.model", "vocab.txt")


def file_names(lo: LoweredOutput) -> list[str]:
    """The files written beside the tensors, in order."""
    out = lo.output
    names = ["config.json"] if derive_output_config(out) is not None else []
    names += list(VOCAB_WRITTEN) if out.vocab is not None else []
    return names + [n for n, _ in carried_files(out)] + ["README.md"]


def write_files(writer, lo: LoweredOutput, checked: CheckedProgram,
                merged: dict | None = None) -> None:
    """config.json (derived at compile time, so it cannot fail here), the files carried
    from the inputs (`carried_files`) and the merged files that replace some of them
    (`merged`: name -> file; a module folder's weights), and the model card."""
    out = lo.output
    merged = merged or {}
    cfg = derive_output_config(out)
    if cfg is not None:
        writer.add_file("config.json", json.dumps(cfg, indent=2) + "\n")
    if out.vocab is not None:  # `set vocab`: the output's own tokenizer
        from mergec.io.vocab import tokenizer_config

        src = out.tokenizer_from.checkpoint.root if out.tokenizer_from is not None and \
            out.tokenizer_from.checkpoint is not None else None
        writer.add_file("tokenizer.json", out.vocab.tokenizer_json())
        writer.add_file("tokenizer_config.json", tokenizer_config(out.vocab, src))
    folders = {name.rsplit("/", 1)[0] for name in merged}
    for name, path in carried_files(out):
        folder, _, base = name.rpartition("/")
        if folder in folders and base in ("model.safetensors", "pytorch_model.bin"):
            continue
        writer.copy_file(name, path)
    for name, path in merged.items():
        writer.copy_file(name, path)
    writer.add_file("README.md", model_card(lo, checked))


def model_card(lo: LoweredOutput, checked: CheckedProgram) -> str:
    inputs = []
    bases = []
    # the inputs the output's expression names (a zero weight is still provenance)
    used = {getattr(x, "name", None) for x in walk(lo.output.expr)}
    for o in (lo.output.config_from, lo.output.tokenizer_from, lo.output.files_from):
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
