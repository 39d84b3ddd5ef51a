"""The registry of diagnostic codes: a title and an explanation for each.

Codes by stage: E1xx syntax, E2xx names, types and parameters, E3xx inputs and planning,
E4xx I/O and backends, E5xx usage. `mergec explain CODE` prints an entry and
`docs/errors.md` is generated from this table.
"""

from __future__ import annotations

from mergec.io.errors import IO_ERRORS

STAGES = {
    "1": "Syntax",
    "2": "Names, types and parameters",
    "3": "Inputs and planning",
    "4": "I/O and backends",
    "5": "Usage",
}

ERRORS: dict[str, tuple[str, str]] = {
    "E101": ("unexpected token",
             "The parser met a word or symbol where the grammar does not allow it. The "
             "message names what it found and the help line what it expected there. A "
             "frequent cause is a keyword (`model`, `let`, `output`, `where`, ...) used as "
             "a name, or a missing `=`, `,` or closing bracket on the line before."),
    "E102": ("unexpected character",
             "The recipe contains a character that is not part of the language, such as `'` "
             "(strings use double quotes), `;` or `$`."),
    "E103": ("unexpected end of file",
             "The recipe ends in the middle of a statement: an unclosed `(`, `[` or `{`, or a "
             "statement without its value."),
    "E104": ("unterminated string",
             "A string opened with `\"` is not closed on the same line."),
    "E105": ("unknown attribute or selector",
             "The only attribute is `.layers[a:b]`, which takes a run of transformer blocks "
             "of a model (`.encoder.layers[a:b]` and the like for a model with several "
             "layer stacks), and the only indexed selector in a `where` is `layers[a:b]`."),
    "E106": ("positional argument after a keyword argument",
             "In a call, the inputs come first and the `name=value` parameters after them: "
             "`ties(a, b, base=base, density=0.5)`."),
    "E107": ("expression nested too deeply",
             "An expression may nest at most 100 levels of calls, brackets, lists and "
             "operators (a sum of many terms counts one level per `+`). No real recipe comes "
             "near it; the limit keeps a hostile or generated recipe from exhausting the "
             "checker. Name inner parts with `let` statements: `let m1 = ties(...)`."),
    "E108": ("number literal too large",
             "A number is written with at most 100 characters and its magnitude is at most "
             "1e308 (the largest double). `1e999` or an integer of thousands of digits "
             "would overflow to infinity, which is never a valid weight or parameter. A "
             "block index in `.layers[a:b]` or `where layers[a:b]` has at most 9 digits."),
    "E201": ("unknown name",
             "The name is not defined by any `model`, `adapter`, `param`, `let` or `output` "
             "statement. Names are case-sensitive; the help line suggests the closest one."),
    "E202": ("defined twice",
             "Every name is defined once in a recipe. Rename one of the two definitions."),
    "E203": ("used before it is defined",
             "A recipe reads top to bottom: a name can be used only after the statement that "
             "defines it. Move the definition up."),
    "E204": ("unknown merge method",
             "A call names a function that is neither a merge method nor a builtin (`stack`, "
             "`ramp`). `mergec methods` lists the methods."),
    "E205": ("unknown parameter",
             "The method does not take a parameter of this name. `mergec methods NAME` lists "
             "its parameters; the help line suggests the closest one."),
    "E206": ("wrong number of inputs",
             "The method takes a fixed number of inputs (slerp: exactly 2; nearswap: 1; "
             "model_stock: at least 2)."),
    "E207": ("wrong type",
             "A value of one type is used where another is needed: a Delta where a Model is "
             "needed, a string for a number parameter, a list for a single value, ..."),
    "E208": ("value out of range",
             "A parameter or setting has a value outside what it accepts (for example "
             "`density` in (0, 1], `t` in [0, 1]). The message gives the accepted range."),
    "E209": ("missing required parameter",
             "The method needs this parameter and has no default for it (for example `t` of "
             "`slerp`)."),
    "E210": ("per-input list of the wrong length",
             "A per-input parameter given as a list needs one value per input, in the order "
             "of the inputs. Give a single value to use it for every input."),
    "E211": ("unknown setting",
             "`set` takes: seed, backend, device, shard_size, max_memory, heads."),
    "E212": ("`--set` of an unknown param",
             "`--set name=value` overrides a `param` declared in the recipe. The recipe has "
             "no param of that name; declare it with `param name = default`."),
    "E213": ("`--set` value of the wrong type",
             "The value given with `--set` has a different type than the param's default "
             "in the recipe (a string for a number, ...)."),
    "E214": ("output is not a Model",
             "An `output` is written as a checkpoint, so it must be a Model: a merge with "
             "`base=`, a linear combination of models whose weights sum to 1, `base + delta`, "
             "or `stack(...)`. A Delta must be added to a base first."),
    "E215": ("neither a Model nor a Delta",
             "Arithmetic on models must give either a Model (the weights of the models sum "
             "to 1, such as `0.5 * a + 0.5 * b` or `base + (a - base)`) or a Delta (they sum "
             "to 0, such as `a - base`). `2 * a` or `a + b` is neither."),
    "E216": ("`base=` not accepted, or needed",
             "Task-vector methods (task_arithmetic, ties, dare_*, breadcrumbs*, della*, "
             "model_stock, sce, nearswap) take `base=` and then return a Model, or take Deltas "
             "(`a - base`) without it and return a Delta. Methods that merge their inputs as "
             "they are (linear, slerp, karcher, passthrough) do not take `base=`."),
    "E217": ("`where` key not taken by any call",
             "A `where` block overrides parameters of the merge calls in its statement. No "
             "call in the statement has a parameter of this name."),
    "E218": ("invalid ramp",
             "`ramp(v0, ..., vk)` takes one or more numbers and may only be a parameter value."),
    "E219": ("unknown output option",
             "The option block of an `output` takes `dtype`, `tokenizer`, `config` and `files`."),
    "E220": ("given twice",
             "A parameter or option is given twice in the same call or block."),
    "E221": ("invalid arithmetic",
             "Arithmetic on tensor values is `+` and `-` between models/deltas and `*` or "
             "`/` by a number. Numbers cannot be added to models, and models cannot be "
             "multiplied together. Arithmetic whose result is not a finite number (it "
             "overflows, as `1e300 * 1e300`, or divides by zero) is rejected too: no weight "
             "or parameter may be infinite or NaN."),
    "E222": ("param value is not a literal",
             "A `param` is a number, true/false or a string, so that `--set` can override it."),
    "E223": ("mixed input kinds",
             "The inputs of a call must all be models, all deltas, or all layer runs."),
    "E224": ("no output",
             "The recipe defines nothing to write. Add an `output` statement."),
    "E301": ("layer range out of bounds",
             "`x.layers[a:b]` takes blocks a to b-1; b may be at most the model's block count "
             "(num_hidden_layers in config.json)."),
    "E302": ("empty layer range",
             "Layer ranges are half-open: `[a:b]` needs b > a."),
    "E303": ("inputs with different tensors",
             "Merged inputs must have the same tensor names. This usually means the models "
             "are of different architectures, or one checkpoint is incomplete."),
    "E304": ("shape mismatch",
             "Merged inputs must have the same shape for every tensor. This usually means the "
             "models are of different sizes."),
    "E305": ("vocabulary size mismatch",
             "The embedding or output-head tensors of the inputs have different vocabulary "
             "sizes. mergec never truncates or pads embeddings silently. Make the "
             "vocabularies equal first (for example with transformers' "
             "`resize_token_embeddings` on the smaller model, after adding the same tokens), "
             "or merge only models that share a tokenizer."),
    "E306": ("tensor of a dtype that cannot be merged",
             "Only tensors of float32, float16, bfloat16 or float64 can be merged. Integer "
             "and boolean buffers are carried over when every input holds the same one "
             "(E310, E311); this error is for a tensor that is floating-point in one input "
             "and not in another. float8 checkpoints (e4m3fn, e5m2) are read but not "
             "merged: dequantize them first."),
    "E308": ("model without numbered blocks",
             "`.layers[a:b]` and `stack` need tensor names with a block index such as "
             "`model.layers.3.`; this model has none."),
    "E310": ("non-float tensor that differs between the inputs",
             "Integer and boolean tensors (buffers such as BERT's `embeddings.position_ids` "
             "or `token_type_ids`) are not merged: the output carries the buffer over, for "
             "every method (linear, TIES, ...), when all inputs hold the same one. Here the "
             "inputs give the named tensor different dtypes or shapes (`int64[1, 512]` in "
             "one, `int32[1, 512]` in the other), or one input stores it as floats. Merge "
             "models of the same architecture and version, or convert the buffer first."),
    "E311": ("non-float tensor with different values in the inputs",
             "A buffer that the output carries over (see E310) has the same dtype and shape "
             "in every input, but different values: the build compares its bytes before it "
             "writes anything and stops, naming the tensor and the two inputs. Taking either "
             "would silently change the other model's behaviour. Make the buffers equal "
             "first, or merge only models that agree on them."),
    "W301": ("`where` selector matches no tensor",
             "No tensor of the merge calls a `where` block applies to matches its selector, "
             "so the block changes nothing. Check the glob against the tensor names "
             "(`mergec plan RECIPE --tensors` lists them); globs match the full name, so "
             "`\"mlp.*\"` matches nothing where `\"*.mlp.*\"` matches every MLP tensor."),
    "W302": ("tensors that cannot be split to fit the memory limit",
             "On a CPU every tensor of two or more dimensions is computed and written a "
             "block of rows at a time when its computation allows it: weighted sums, "
             "linear methods, nearswap, copies and conversions; `ties` and the DARE "
             "methods (their thresholds and L1 norms come from passes over the blocks "
             "first); slerp, nuslerp, multislerp, karcher and model_stock (their inner "
             "products likewise). With `--max-memory` (or `set max_memory`) the blocks are "
             "also kept within the limit. The methods that rank or select within a whole "
             "tensor at once (breadcrumbs, della, sce, nuslerp over columns of a matrix) and "
             "LoRA updates still hold their whole tensors in this version; the warning "
             "names the largest such tensor and how much memory it needs."),
    "E312": ("no output of that name",
             "`mergec build --output NAME` (and `plan --output NAME`) build or plan only the "
             "named outputs; NAME must be the name of an `output` statement of the recipe. "
             "The help line suggests the closest one or lists them."),
    "E313": ("tied and untied inputs",
             "One input ties its output head to its input embeddings (its checkpoint has "
             "`model.embed_tokens.weight` but no `lm_head.weight`, `tie_word_embeddings: "
             "true`) and another has a head of its own. mergec does not pick silently: "
             "`set heads = \"untie\"` reads the head of every tied input from its "
             "embeddings and gives the output a head of its own (`tie_word_embeddings: "
             "false`); `set heads = \"tie\"` does not use the untied heads and ties the "
             "output's head (`tie_word_embeddings: true`). W312 says what was done to "
             "each input."),
    "E314": ("layer stack not named",
             "The model has more than one layer stack (an encoder and a decoder, a vision "
             "and a text tower), so `m.layers[a:b]` does not say whose blocks to take. "
             "Name the stack: `m.encoder.layers[0:2]`, `m.decoder.layers[0:3]`, "
             "`m.vision.layers[0:6]`, `m.text.layers[0:4]`. The message lists the model's "
             "stacks; `mergec/arch.py` holds the stacks mergec knows."),
    "E315": ("output tensors that its config does not imply",
             "The tensors of an output must be those its config.json describes, so that "
             "`from_pretrained` finds no missing or unexpected keys: every layer stack "
             "must have as many blocks as the config declares, and a tensor that only a "
             "stack's first block has (T5's relative attention bias) must stay in the "
             "first block. A `stack(...)` whose first run of a stack does not start at "
             "that stack's block 0, or that puts such a block later, stops here instead "
             "of writing a model that loads wrong."),
    "E316": ("unknown layer stack",
             "`m.NAME.layers[a:b]` names a layer stack the model does not have. The help "
             "line suggests the closest one or lists the model's stacks (`encoder`, "
             "`decoder`, `vision`, `text`; a model with one stack calls it `layers`)."),
    "W310": ("inputs disagree on their sentence-transformers modules",
             "An output carries its auxiliary files (`modules.json`, `1_Pooling/`, "
             "`2_Normalize/`, ...) from one input, its `files` (default: the tokenizer's "
             "input, which defaults to the base). The inputs it merges have different "
             "modules or module settings (mean pooling in one, CLS in the other; "
             "normalization in one only), which change the embeddings without changing a "
             "weight. The warning says whose the output takes; choose explicitly with "
             "`output m = linear(a, b) { files = b }`."),
    "W311": ("sentence-transformers dense layers copied, not merged",
             "The `files` input has `Dense` modules (a projection after pooling, stored in "
             "its own folder such as `2_Dense/`). They are merged like the transformer "
             "when every input of the output has the module with the same tensors and the "
             "output merges whole models; here one of those does not hold (the message "
             "says which), so the module is copied from the `files` input and the "
             "projection is that input's alone."),
    "W312": ("a tied or untied head changed by `set heads`",
             "`set heads = \"untie\"`: an input that ties its output head to its "
             "embeddings is read with a head equal to its embeddings, and outputs are "
             "written with a head of their own. `set heads = \"tie\"`: an input with a "
             "head of its own is read without it, and outputs tie their head to their "
             "embeddings. The warning names each input changed; it is there so the choice "
             "is visible in every check and build."),
    "E501": ("recipe file not found",
             "The recipe path given on the command line does not exist or cannot be read. "
             "It must be a regular file of UTF-8 text: a device, a pipe or a folder is "
             "refused before it is opened."),
    "E504": ("recipe file too large",
             "A recipe is read only when it is at most 10 MB. Recipes are short text "
             "files; a larger one is most likely the wrong path (a checkpoint, a log)."),
    "E502": ("invalid command-line value",
             "A command-line option has a value mergec cannot use (a size such as `5GB`, a "
             "`--set name=value` pair, a backend or device name). Sizes are at least 1 "
             "byte, on the command line (`--max-memory`, `--shard-size`) as in `set` and in "
             "the arguments of the Python API (`max_memory=`, `shard_size=`)."),
    "E503": ("backend not available",
             "The backend asked for is not installed. Install it with `pip install "
             "'mergec[torch]'` or `pip install 'mergec[jax]'`."),
    "E599": ("internal error",
             "mergec hit a bug. Run again with `MERGEC_DEBUG=1` to see the traceback, and "
             "report it with the recipe."),
}
ERRORS.update(IO_ERRORS)
ERRORS = dict(sorted(ERRORS.items()))


def explain(code: str) -> str | None:
    code = code.strip().upper()
    if not code[:1] in ("E", "W"):
        code = "E" + code
    entry = ERRORS.get(code)
    if entry is None:
        return None
    title, text = entry
    return f"{code}: {title}\n\n{text}\n"


def errors_markdown() -> str:
    lines = ["# Diagnostic codes", "",
             "Every problem mergec reports has a code. `mergec explain CODE` prints the "
             "entry below. Codes are grouped by the stage that finds them.", "",
             "This file is generated from `mergec/errors.py` by `make docs`; a test fails "
             "when it is stale.", ""]
    stage = None
    for code, (title, text) in ERRORS.items():
        if code[:2] != stage:
            stage = code[:2]
            if code[0] == "W":
                lines += ["## Warnings (Wxxx)", "",
                          "A warning does not stop a build; it points at something that is "
                          "probably not what the recipe means.", ""]
            else:
                lines += [f"## {STAGES.get(stage[1], 'Other')} (E{stage[1]}xx)", ""]
        lines += [f"### {code}: {title}", "", text, ""]
    return "\n".join(lines)
