"""Writing a `moe(...)` output: the routers, then every other tensor as a merge writes it.

The experts' and the base's tensors are ordinary IR (the lowering renames them into the
layout); what only a mixture of experts has is the router of each layer, a matrix
[experts, hidden] whose row i scores expert i for a token's hidden state x (logit_i =
row_i . x; the top `experts_per_token` are kept, their softmax weights renormalized). The
router is initialized by one of:

- `random`: rows drawn from N(0, 0.02^2), seeded per tensor from (seed, output, tensor);
- `cheap_embed`: for expert i, v_i = mean over its prompts of the mean of the base's token
  embeddings of the prompt's tokens (tokenized with the base's tokenizer.json, without
  special tokens), minus the same mean over its `negative` prompts when given; row_i =
  v_i / ||v_i||, the same in every layer. No forward pass.
- `hidden`: the same with, in place of the token embeddings, the input of each layer's MLP
  (the output of `post_attention_layernorm`, which is what the router reads), from a
  forward pass of the base model with transformers, per layer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from mergec import __version__
from mergec.check.program import CheckedProgram, MoeForm
from mergec.ir.lower import LoweredOutput

ROUTER_STD = 0.02


def prompt_ids(form: MoeForm, special: bool = False):
    """Token ids per expert per prompt: (positive, negative)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(form.base.checkpoint.root / "tokenizer.json"))

    def ids(groups):
        return [[tok.encode(p, add_special_tokens=special).ids for p in g] for g in groups]

    return ids(form.prompts), ids(form.negative)


def _unit(v):
    import numpy as np

    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def directions(pos, neg, mean_of):
    """Row i: the normalized mean over expert i's prompts of `mean_of(prompt)`, less the
    mean over its negative prompts."""
    import numpy as np

    rows = []
    for i, group in enumerate(pos):
        v = np.mean([mean_of(p) for p in group], axis=0)
        if neg and neg[i]:
            v = v - np.mean([mean_of(p) for p in neg[i]], axis=0)
        rows.append(_unit(v.astype(np.float64)))
    return np.stack(rows).astype(np.float32)


def cheap_embed_rows(form: MoeForm, embed):
    """[experts, hidden] from the token embedding table `embed` (numpy, float32)."""
    import numpy as np

    pos, neg = prompt_ids(form)
    for group in pos + neg:
        for p in group:
            if not p:
                raise ValueError("a prompt has no tokens")
            if max(p) >= embed.shape[0]:
                raise ValueError(f"token id {max(p)} is outside the embedding table")

    return directions(pos, neg, lambda p: embed[np.asarray(p)].astype(np.float64).mean(0))


def hidden_rows(form: MoeForm) -> dict:
    """Per layer, [experts, hidden] from the base model's MLP inputs on the prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    pos, neg = prompt_ids(form, special=True)
    model = AutoModelForCausalLM.from_pretrained(str(form.base.checkpoint.root),
                                                 dtype=torch.float32).eval()
    layers = model.model.layers
    cache: dict[tuple, list] = {}

    def run(p):
        key = tuple(p)
        if key not in cache:
            seen = []
            hooks = [layer.post_attention_layernorm.register_forward_hook(
                lambda mod, args, out: seen.append(out[0].double().mean(0).numpy()))
                for layer in layers]
            try:
                with torch.no_grad():
                    model(torch.tensor([p]))
            finally:
                for h in hooks:
                    h.remove()
            cache[key] = seen
        return cache[key]

    return {layer: directions(pos, neg, lambda p, l=layer: run(p)[l])
            for layer in range(len(layers))}


def router_values(lo: LoweredOutput, checked: CheckedProgram, backend) -> dict:
    """The router of each layer, by name: float32 numpy arrays [experts, hidden]."""
    import numpy as np

    from mergec.ops.random import derive_seed
    from mergec.runtime.interpreter import evaluate
    from mergec.runtime.prepass import host_f32

    form: MoeForm = lo.output.form
    out = {}
    if form.router == "random":
        for name, _, shape in form.routers:
            rng = np.random.default_rng(derive_seed(checked.settings.seed, lo.output.name,
                                                    name))
            out[name] = (rng.standard_normal(shape) * ROUTER_STD).astype(np.float32)
    elif form.router == "cheap_embed":
        node = next(t.node for t in lo.tensors if t.name == form.embed)
        embed = host_f32(backend, evaluate(node.args[0] if node.op == "cast" else node,
                                           checked, backend, for_kernel=True)) \
            if node.op not in ("copy", "convert") else \
            np.asarray(checked.source(node.attr("source")).read(node.attr("tensor")),
                       dtype=np.float32)
        rows = cheap_embed_rows(form, embed)
        out = {name: rows for name, _, _ in form.routers}
    else:
        try:
            per_layer = hidden_rows(form)
        except Exception as e:  # transformers cannot load or run this folder
            from mergec.diagnostics import Diagnostic, MergecError

            raise MergecError([Diagnostic(
                "E356", f"the `hidden` router could not run the base model: "
                f"{type(e).__name__}: {e}", lo.output.span,
                "check that transformers loads the base folder with AutoModelForCausalLM, "
                "or use `router=\"cheap_embed\"`")]) from None
        out = {name: per_layer[layer] for name, layer, _ in form.routers}
    return out


def build_moe(lo: LoweredOutput, checked: CheckedProgram, target: Path, backend, *,
              force: bool = False, shard_size: int, progress=None):
    """Routers first (in this process), then the other tensors step by step as the plan
    lists them, then config.json, the tokenizer files and the model card."""
    from mergec.io.dtypes import itemsize
    from mergec.io.writer import OutputWriter
    from mergec.runtime.build import BuildResult
    from mergec.runtime.interpreter import convert, evaluate, run_step
    from mergec.runtime.output_files import write_files
    from mergec.runtime.prepass import compute_model_stats, host_f32
    from mergec.runtime.schedule import dispatch_order, schedule

    t0 = time.perf_counter()
    form: MoeForm = lo.output.form
    routers = router_values(lo, checked, backend)
    steps = schedule(lo, on_cpu=True, workers=1, pool=None)
    tensors = [lo.tensors[i] for i in dispatch_order(lo)]
    stats = compute_model_stats(lo, lambda node: [host_f32(backend, evaluate(
        node, checked, backend, for_kernel=True))])
    decl = [(t.name, t.shape, t.dtype) for t in lo.tensors]
    decl += [(name, shape, form.router_dtype) for name, _, shape in form.routers]
    done, done_bytes = 0, 0
    with OutputWriter(target, decl, shard_size=shard_size, force=force,
                      metadata={"mergec_version": __version__}) as writer:
        for t, step in zip(tensors, steps):
            run_step(t, step, checked, backend, writer, stats, None)
            done += 1
            done_bytes += math.prod(t.shape) * itemsize(t.dtype)
            if progress:
                progress(lo.output.name, done, done_bytes)
        for name, _, shape in form.routers:
            writer.write(name, convert(routers[name], form.router_dtype))
            done += 1
            done_bytes += math.prod(shape) * itemsize(form.router_dtype)
            if progress:
                progress(lo.output.name, done, done_bytes)
        write_files(writer, lo, checked)
        path = writer.commit()
    nbytes = sum(math.prod(s) * itemsize(d) for _, s, d in decl)
    return BuildResult(lo.output.name, path, len(decl), nbytes, time.perf_counter() - t0)
