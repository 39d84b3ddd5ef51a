"""`output NAME = moe(EXPERT, ..., base=MODEL, ...)`: dense models assembled into a mixture
of experts.

Each expert is a Model expression (an input, a merge, ...) of one dense architecture
(Llama, Mistral or Qwen2); its MLP of every layer becomes that layer's expert. Everything
else — embeddings, attention, norms, head — comes from `base` (any Model expression too).
Checked from config.json files and headers alone: the experts and the base have the same
tensors; the layout can hold them; `experts_per_token` fits; the router's prompts are there
(one string or list of strings per expert) and, for the routers that read them, the base has
a tokenizer (and, for `hidden`, is a model folder the build can run).
"""

from __future__ import annotations

import importlib.util
import re

from mergec.check.exprs import Exprs
from mergec.check.program import (
    DELTA, FORM, LIST, MODEL, NUMBER, STRING, CExpr, CInput, CMoe, MoeForm, Output,
    TensorMeta,
)
from mergec.check.scope import Const, is_error
from mergec.check.suggest import did_you_mean, known_entries
from mergec.check.walk import first_input
from mergec.io.dtypes import MERGE_DTYPES, normalize_dtype
from mergec.lang import ast

PARAMS = ("base", "shared", "experts_per_token", "router", "prompts", "negative", "layout")
ROUTERS = ("random", "cheap_embed", "hidden")
LAYOUTS = {"mixtral": ("llama", "mistral"), "qwen2_moe": ("llama", "mistral", "qwen2")}
OPTIONS = ("dtype",)
_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")
_MIXTRAL_W = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
EMBED = "model.embed_tokens.weight"


def is_moe(e: ast.Expr) -> bool:
    return isinstance(e, ast.Call) and e.func.name == "moe"


def _strings(v, what: str, n: int, span, err) -> tuple[tuple[str, ...], ...] | None:
    """Per-expert prompt lists from a list of strings or of lists of strings."""
    if not isinstance(v, Const) or v.kind != LIST:
        err("E354", f"`{what}` must be a list with one prompt (or a list of prompts) per "
            "expert", span, f'for example `{what}=["solve for x", ["def f(x):", "import"]]`')
        return None
    if len(v.value) != n:
        got = len(v.value)
        err("E354", f"`{what}` has {got} {'entry' if got == 1 else 'entries'} for {n} "
            "experts", span,
            "give one prompt, or a list of prompts, per expert, in the order of the experts")
        return None
    out = []
    for item in v.value:
        items = item.value if isinstance(item, Const) and item.kind == LIST else [item]
        texts = []
        for x in items:
            if not isinstance(x, Const) or x.kind != STRING or not x.value.strip():
                err("E354", f"the prompts of `{what}` are non-empty strings", x.span,
                    'for example `"write a python function"`')
                return None
            texts.append(x.value)
        if not texts:
            err("E354", f"an expert of `{what}` has no prompt", item.span,
                "give at least one string per expert")
            return None
        out.append(tuple(texts))
    return tuple(out)


def _untokenizable(path, groups, vocab: int) -> tuple[str, str] | None:
    """A prompt the tokenizer gives no token for, or a token outside the embeddings."""
    from tokenizers import Tokenizer  # only for a router that reads prompts

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # a file the tokenizers library cannot read
        return (str(path), f"cannot be read by the tokenizers library: {e}")
    for group in groups:
        for p in group:
            ids = tok.encode(p, add_special_tokens=False).ids
            if not ids:
                return (p, "has no tokens")
            if max(ids) >= vocab:
                return (p, f"has token id {max(ids)}, outside the {vocab} embeddings")
    return None


def check_moe_output(exprs: Exprs, st: ast.OutputStmt) -> tuple[CExpr, Output | None]:
    err, warn = exprs.report.error, exprs.report.warn
    call: ast.Call = st.expr
    marker = CExpr(FORM, st.span)
    ok = True
    experts = []
    for a in call.args:
        v = exprs.whole(exprs.value(a))
        if is_error(v):
            ok = False
        elif isinstance(v, Const) or v.kind != MODEL:
            err("E350", f"an expert is a Model, found a {v.kind}", a.span,
                "add a delta to its base first: `base + (tuned - base)`" if
                getattr(v, "kind", None) == DELTA else None)
            ok = False
        experts.append(v)
    if len(call.args) < 2:
        err("E352", f"`moe` takes at least 2 experts, got {len(call.args)}", call.span,
            "list the dense models to assemble: `moe(math, code, base=base)`")
        ok = False
    given, good = known_entries(call.kwargs, PARAMS, err, kind="parameter", code="E205",
                                unknown="for `moe`", takes="`moe` takes")
    ok = ok and good
    kw: dict[str, ast.Kwarg] = {k.name.name: k for k in given}
    if st.wheres:
        err("E357", "`where` blocks cannot follow a `moe` output", st.wheres[0].span,
            "put them after the `let` statements of the experts: `let math2 = ties(...) "
            "where ...`, then `moe(math2, ...)`")
        ok = False
    if "base" not in kw:
        err("E209", "`moe` needs `base=`, the model of the tensors the experts share "
            "(embeddings, attention, norms, head)", call.span,
            "for example `moe(math, code, base=base)`")
        return marker, None

    def model_param(key):
        v = exprs.whole(exprs.value(kw[key].value))
        if is_error(v):
            return None
        if isinstance(v, Const) or v.kind != MODEL:
            err("E207", f"`{key}=` expects a Model, found a {v.kind}", kw[key].value.span)
            return None
        return v

    base = model_param("base")
    shared = model_param("shared") if "shared" in kw else None
    ok = ok and base is not None and ("shared" not in kw or shared is not None)

    def const(key, default):
        if key not in kw:
            return default, None
        v = exprs.value(kw[key].value)
        return (None if is_error(v) or isinstance(v, CExpr) else v), kw[key].value.span

    n = len(experts)
    k, k_span = const("experts_per_token", None)
    per_token = 2 if n >= 2 else 1
    if k is not None:
        x = k if not isinstance(k, Const) else k.value
        if not isinstance(k, Const) or k.kind != NUMBER or isinstance(x, bool) or \
                float(x) != int(x) or not 1 <= x <= max(n, 1):
            err("E352", f"`experts_per_token` must be a whole number from 1 to {n} (the "
                f"number of experts), found {x!r}", k_span, "Mixtral uses 2")
            ok = False
        else:
            per_token = int(x)
    r, r_span = const("router", None)
    router = "random"
    if r is not None:
        if r.kind != STRING or r.value not in ROUTERS:
            err("E353", f"`router` must be one of {', '.join(repr(x) for x in ROUTERS)}",
                r_span, did_you_mean(str(r.value), ROUTERS, "routers are") if
                r.kind == STRING else None)
            ok = False
        else:
            router = r.value
    prompts = negative = ()
    p, p_span = const("prompts", None)
    q, q_span = const("negative", None)
    if router == "random":
        if p is not None or q is not None:
            warn("W352", "the random router does not read prompts", p_span or q_span,
                 'use `router="cheap_embed"` or `router="hidden"` to route by the prompts')
    else:
        if p is None:
            err("E354", f"the `{router}` router needs `prompts=`, one prompt (or list of "
                "prompts) per expert", call.span,
                'for example `prompts=["solve for x", "def f(x):"]`')
            ok = False
        elif n:
            prompts = _strings(p, "prompts", n, p_span, err)
            ok = ok and prompts is not None
        if q is not None and n:
            negative = _strings(q, "negative", n, q_span, err)
            ok = ok and negative is not None
    lay, lay_span = const("layout", None)
    dtype = None
    options, good = known_entries(st.options or (), OPTIONS, err, kind="option", code="E219",
                                  unknown="for a mixture of experts",
                                  takes="a `moe` output takes")
    ok = ok and good
    for e in options:  # `dtype`, the one option
        v = exprs.const(e.value)
        try:
            d = normalize_dtype(str(v.value)) if v is not None and v.kind == STRING else None
        except ValueError:
            d = None
        if d not in ("float32", "float16", "bfloat16"):
            err("E208", "`dtype` must be \"bfloat16\", \"float16\" or \"float32\"",
                e.value.span, 'for example `dtype = "bfloat16"`')
            ok = False
        dtype = d
    if not ok or any(x.tensors is None for x in experts + [base]) or \
            (shared is not None and shared.tensors is None):
        return marker, None
    # the architecture, from the config of the base's model
    src = first_input(base)
    cfg = (src.config or {}) if src is not None else {}
    mtype = cfg.get("model_type")
    layout = "qwen2_moe" if mtype == "qwen2" else "mixtral"
    if lay is not None:
        if lay.kind != STRING or lay.value not in LAYOUTS:
            err("E351", f"`layout` must be one of {', '.join(repr(x) for x in LAYOUTS)}",
                lay_span, '"mixtral" (Mixtral) or "qwen2_moe" (Qwen2-MoE, with a shared '
                "expert)")
            return marker, None
        layout = lay.value
    if mtype not in LAYOUTS[layout]:
        err("E351", f"a {layout} model is assembled from {' or '.join(LAYOUTS[layout])} "
            f"experts; the base's config says `model_type: {mtype}`", kw["base"].value.span,
            "the experts and the base must be dense models of one of those architectures")
        return marker, None
    if layout == "mixtral" and cfg.get("attention_bias"):
        err("E351", "Mixtral's attention has no biases, but this model's has "
            "(`attention_bias: true`)", kw["base"].value.span, 'use `layout="qwen2_moe"`')
        return marker, None
    if shared is not None and layout != "qwen2_moe":
        err("E351", "only the qwen2_moe layout has a shared expert", kw["shared"].span,
            'add `layout="qwen2_moe"`, or remove `shared=`')
        return marker, None
    # every expert (and the shared expert) has the base's tensors, in the same shapes
    table = base.tensors
    named = [(x, a.span) for x, a in zip(experts, call.args)]
    if shared is not None:
        named.append((shared, kw["shared"].value.span))
    for x, span in named:
        diff = sorted(set(table) ^ set(x.tensors))
        if diff:
            where = "the base" if diff[0] in table else "this expert"
            err("E350", f"this model's tensors differ from the base's: `{diff[0]}` is only in "
                f"{where}", span, "experts are fine-tunes of one architecture and size")
            return marker, None
        bad = next((t for t in table if tuple(table[t].shape) != tuple(x.tensors[t].shape)),
                   None)
        if bad:
            err("E350", f"`{bad}` is {list(x.tensors[bad].shape)} here but "
                f"{list(table[bad].shape)} in the base", span,
                "experts are fine-tunes of one architecture and size")
            return marker, None
    mlp = {t: _MLP.match(t) for t in table}
    layers = sorted({int(m.group(1)) for m in mlp.values() if m})
    n_layers = base.n_layers
    if not layers or (n_layers is not None and layers != list(range(n_layers))) or \
            EMBED not in table:
        err("E351", "the base has no `model.layers.N.mlp.{gate,up,down}_proj.weight` in every "
            "layer (or no `model.embed_tokens.weight`)", kw["base"].value.span,
            "experts are Llama, Mistral or Qwen2 models")
        return marker, None
    if router != "random":
        if src is None or src.checkpoint is None or \
                not (src.checkpoint.root / "tokenizer.json").is_file():
            err("E355", f"the `{router}` router tokenizes its prompts with the base model's "
                "tokenizer.json, which it does not have", kw["base"].value.span,
                "use a base folder with tokenizer files, or `router=\"random\"`")
            return marker, None
        bad = _untokenizable(src.checkpoint.root / "tokenizer.json", prompts + negative,
                             table[EMBED].shape[0])
        if bad:
            err("E354", f"the prompt {bad[0]!r} {bad[1]}", p_span or call.span,
                "prompts are text the base model's tokenizer turns into known tokens")
            return marker, None
    if router == "hidden":
        if not isinstance(base, CInput):
            err("E356", "the `hidden` router runs the base model on its prompts, so `base=` "
                "must name a `model` input", kw["base"].value.span,
                "write the base model to a folder first, or use `router=\"cheap_embed\"`")
            return marker, None
        missing = [m for m in ("torch", "transformers")
                   if importlib.util.find_spec(m) is None]
        if missing:
            err("E356", f"the `hidden` router needs {' and '.join(missing)}, which is not "
                "installed", r_span, "install `mergec[torch]` and transformers, or use "
                "`router=\"cheap_embed\"`")
            return marker, None
    hidden = table[EMBED].shape[1]
    e_count = len(experts)
    parts = tuple(experts) + (base,) + ((shared or base,) if layout == "qwen2_moe" else ())
    mapping: dict[str, tuple[int, str]] = {}
    out_table: dict[str, TensorMeta] = {}
    routers = []
    for t, meta in table.items():
        m = mlp[t]
        if not m:
            mapping[t] = (e_count, t)
            out_table[t] = meta
            continue
        layer, proj = m.group(1), m.group(2)
        for i in range(e_count):
            name = (f"model.layers.{layer}.block_sparse_moe.experts.{i}.{_MIXTRAL_W[proj]}.weight"
                    if layout == "mixtral" else
                    f"model.layers.{layer}.mlp.experts.{i}.{proj}.weight")
            mapping[name] = (i, t)
            out_table[name] = meta
        if layout == "qwen2_moe":
            name = f"model.layers.{layer}.mlp.shared_expert.{proj}.weight"
            mapping[name] = (e_count + 1, t)
            out_table[name] = meta
            if proj == "gate_proj":  # sigmoid(0) = 1/2: the shared expert at half weight
                gate = f"model.layers.{layer}.mlp.shared_expert_gate.weight"
                mapping[gate] = (-1, gate)
                out_table[gate] = TensorMeta((1, hidden), meta.dtype)
        if proj == "gate_proj":
            name = (f"model.layers.{layer}.block_sparse_moe.gate.weight" if layout == "mixtral"
                    else f"model.layers.{layer}.mlp.gate.weight")
            routers.append((name, int(layer), (e_count, hidden)))
    floats = [m.dtype for m in table.values() if m.dtype in MERGE_DTYPES]
    cdt = cfg.get("torch_dtype") or cfg.get("dtype")
    router_dtype = dtype or (cdt if cdt in MERGE_DTYPES else floats[0])
    config = moe_config(cfg, layout, e_count, per_token, table, shared is not None or
                        layout == "qwen2_moe")
    form = MoeForm(layout, e_count, per_token, router, prompts or (), negative or (),
                   tuple(sorted(routers, key=lambda r: r[1])), router_dtype, config,
                   src if isinstance(src, CInput) else None)
    expr = CMoe(MODEL, call.span, out_table, base.n_layers, parts=parts, mapping=mapping)
    return marker, Output(st.name.name, expr, dtype, src, src, st.span, form=form)


def moe_config(cfg: dict, layout: str, n: int, k: int, table, shared: bool) -> dict:
    """The config.json of the assembled model, from the dense experts' config."""
    out = {key: v for key, v in cfg.items()
           if key not in ("architectures", "model_type", "mlp_bias", "attention_bias",
                          "pretraining_tp", "transformers_version", "auto_map")}
    inter = cfg.get("intermediate_size")
    if layout == "mixtral":
        out.update(architectures=["MixtralForCausalLM"], model_type="mixtral",
                   num_local_experts=n, num_experts_per_tok=k, router_jitter_noise=0.0,
                   output_router_logits=False, router_aux_loss_coef=0.001)
        out.setdefault("sliding_window", None)
    else:
        qkv = any(t.endswith("self_attn.q_proj.bias") for t in table)
        out.update(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe",
                   num_experts=n, num_experts_per_tok=k, moe_intermediate_size=inter,
                   shared_expert_intermediate_size=inter, decoder_sparse_step=1,
                   mlp_only_layers=[], norm_topk_prob=True, output_router_logits=False,
                   router_aux_loss_coef=0.001, qkv_bias=qkv)
    return out
