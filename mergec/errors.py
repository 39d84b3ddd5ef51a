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
             "operators (a chain of `+`/`-` or `*`/`/` counts as one level; E110 bounds its "
             "length). No real recipe comes near it; the limit keeps a hostile or generated "
             "recipe from exhausting the checker. Name inner parts with `let` statements: "
             "`let m1 = ties(...)`."),
    "E108": ("number literal too large",
             "A number is written with at most 100 characters and its magnitude is at most "
             "1e308 (the largest double). `1e999` or an integer of thousands of digits "
             "would overflow to infinity, which is never a valid weight or parameter. A "
             "block index in `.layers[a:b]` or `where layers[a:b]` has at most 9 digits."),
    "E110": ("expression too long",
             "One chain of `+` and `-` (or of `*` and `/`) has at most 1,000 terms: "
             "`0.01 * m1 + 0.01 * m2 + ...` merges up to a thousand models in one "
             "expression, and such a chain counts as one level of nesting (E107). Beyond "
             "that, build partial sums with `let` statements, or use `linear(...)` with a "
             "weight list."),
    "E109": ("values nested too deeply",
             "A statement's value may be built from at most 4,000 nested values (merge calls, "
             "arithmetic, slices, stacks), counted through the `let` statements it uses "
             "(1,500 on Python 3.10). `let a1 = linear(a0, b)`, `let a2 = linear(a1, b)`, "
             "... nests one level per statement. No real recipe comes near it; the limit "
             "bounds the recursion of the stages after the checker."),
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
             "`set` takes: seed, backend, device, shard_size, max_memory, allow_nonfinite, "
             "heads, vocab, vocab_fill, pad_to_multiple_of."),
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
    "E260": ("invalid `lowrank` call",
             "`output NAME = lowrank(DELTA, rank=R)` writes a Delta as a PEFT LoRA adapter; "
             "`energy=E` instead of `rank` keeps, per module, the fewest singular values that "
             "hold the share E of its squared norm. The call takes one Delta (`tuned - base`, "
             "a merge of task vectors, an adapter) and exactly one of `rank` (a whole number "
             ">= 1) and `energy` (in (0, 1]): `lowrank(code - base, rank=16)`."),
    "E261": ("an adapter or mixture of experts used as a value",
             "`lowrank(...)` (and `moe(...)`) make an output written in another form than a "
             "model, so they are the whole value of an `output` statement, and that output's "
             "name cannot be used by later statements. Name the expression with `let` and "
             "use the name in both places: `let code_tv = code - base` then `output "
             "code_lora = lowrank(code_tv, rank=16)`."),
    "E262": ("invalid option of an adapter output",
             "An adapter output (`lowrank`) takes the options `dtype` (of the factors), "
             "`others` and `base`. `others = \"save\"` (the default) writes the tensors of "
             "the delta that are not factored (embeddings, norms) whole, in PEFT's "
             "`modules_to_save`, when they changed; that needs the model the adapter applies "
             "to, found from `tuned - base` or named with `base = MODEL`. `others = "
             "\"drop\"` leaves them out (warning W350)."),
    "E263": ("nothing to factor",
             "`lowrank` factors the delta of each 2-D weight matrix (`*.weight` of linear "
             "layers). This delta has none: it is made of 1-D tensors or embeddings only."),
    "W350": ("tensors left out of an adapter",
             "With `others = \"drop\"` the tensors of the delta that are not factored "
             "(embeddings, norms, other 1-D tensors) are not written, so the adapter does "
             "not change them. `others = \"save\"` writes those that changed whole."),
    "W351": ("biases left out of an adapter",
             "A LoRA pair changes the weight of its module, not the bias; the delta of the "
             "biases of factored modules (Qwen2's q/k/v projections, GPT-2's layers) is not "
             "written. Merge the full model instead when the bias update matters."),
    "E350": ("experts that do not fit together",
             "`moe(EXPERT, ..., base=BASE)` makes each layer's MLP of every expert an expert "
             "of that layer and takes every other tensor from the base, so the experts (and "
             "`shared=`) are Models with exactly the base's tensor names and shapes: "
             "fine-tunes of one dense model. `moe(math, code, base=base)`."),
    "E351": ("a mixture-of-experts layout that cannot hold these experts",
             "`layout=\"mixtral\"` (the default for Llama and Mistral) is assembled from "
             "Llama or Mistral experts without attention biases; `layout=\"qwen2_moe\"` "
             "(the default for Qwen2) from Llama, Mistral or Qwen2 experts, and is the one "
             "with a shared expert (`shared=`). The base must have "
             "`model.layers.N.mlp.gate_proj/up_proj/down_proj` in every layer."),
    "E352": ("wrong number of experts or experts per token",
             "`moe` takes at least two experts, and `experts_per_token` is a whole number "
             "from 1 to the number of experts (Mixtral uses 2)."),
    "E353": ("unknown router initialization",
             "`router` is `\"random\"` (seeded from `set seed`), `\"cheap_embed\"` (the "
             "token embeddings of each expert's prompts) or `\"hidden\"` (the base model's "
             "MLP inputs on the prompts, with torch and transformers): "
             "`moe(math, code, base=base, router=\"cheap_embed\", prompts=[\"solve\", "
             "\"def\"])`."),
    "E354": ("invalid router prompts",
             "The `cheap_embed` and `hidden` routers need `prompts=`: a list with one entry "
             "per expert, in the order of the experts, each a non-empty string or a list of "
             "them; `negative=` has the same form and pushes each router row away from those "
             "prompts. Every prompt must give at least one token with the base model's "
             "tokenizer, inside its embedding table."),
    "E355": ("no tokenizer for the router's prompts",
             "The `cheap_embed` and `hidden` routers tokenize their prompts with the "
             "`tokenizer.json` of the base model's folder (the model `base=` is made from). "
             "That folder has none: use one with tokenizer files, or `router=\"random\"`."),
    "E356": ("the `hidden` router cannot run the base model",
             "`router=\"hidden\"` runs the base model on the prompts with torch and "
             "transformers, so `base=` must name a `model` input (a folder transformers can "
             "load), and torch and transformers must be installed. `cheap_embed` needs "
             "neither."),
    "E357": ("`where` after a `moe` output",
             "A `moe` output renames the tensors of its experts, so a `where` selector would "
             "have no one set of names to match. Give the experts their per-tensor "
             "parameters where they are made: `let math2 = ties(math, base=base, "
             "density=0.5) where \"*.mlp.*\" { density = 0.3 }`, then "
             "`moe(math2, code, base=base)`."),
    "W352": ("prompts given to the random router",
             "`router=\"random\"` (the default) draws the router rows from the seed and does "
             "not read `prompts=` or `negative=`. Choose `router=\"cheap_embed\"` or "
             "`router=\"hidden\"` to route by the prompts."),
    "W353": ("an SVD larger than the memory limit",
             "Under `--max-memory` (or `set max_memory`), `lowrank` decomposes a module "
             "whose whole SVD does not fit (about 28 bytes per entry) through its Gram "
             "matrix, a block of rows at a time. This warning names the modules where that "
             "is not possible either: the Gram matrix alone (24 bytes per entry of "
             "min(out, in) squared) exceeds the limit, or the delta cannot be computed in "
             "blocks of rows (a LoRA input). Those are decomposed whole and the build needs "
             "more memory than the limit; raise it, or leave it unset."),
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
    "E250": ("statistics given the wrong way",
             "The methods that read statistics (`fisher`, `regmean`) take `stats=[...]`: a "
             "list with one `stats` value per input, in the order of the inputs, each "
             "declared with `stats NAME = \"folder\"`, and merge whole models. Other "
             "methods take no `stats=` or `fallback=`. Example: `stats fa = \"stats/a\"` "
             "... `fisher(a, b, stats=[fa, fb], fallback=linear(a, b))`."),
    "E251": ("statistics of the wrong kind",
             "Fisher merging needs Fisher statistics (`mergec stats MODEL --kind fisher`) "
             "and RegMean needs Gram matrices (`--kind gram`). The `kind` in the folder's "
             "stats.json says which it holds."),
    "E252": ("tensors without statistics and no fallback",
             "Some tensors of the merge have no statistics in every folder: RegMean computes "
             "only linear weights [out, in] from their Gram matrices (biases, norms and "
             "embeddings have none), and Fisher statistics may leave tensors out. Say how to "
             "merge them with `fallback=`, a Model made from the same inputs, for example "
             "`regmean(a, b, stats=[ga, gb], fallback=linear(a, b))`."),
    "E253": ("fallback that does not fit",
             "`fallback=` is a Model (a merge of the same inputs, such as `linear(a, b)` or "
             "`ties(a, b, base=base)`) that has every tensor the statistics do not cover, "
             "with the same shape."),
    "E340": ("statistics computed on another model",
             "A statistics folder's stats.json names the model it was computed on by a "
             "fingerprint of its tensor names and shapes (docs/stats.md). The input it is "
             "paired with has another fingerprint: another architecture or size. Compute "
             "the statistics on this model with `mergec stats`, or pair each input with its "
             "own statistics. The fingerprint cannot tell apart fine-tunes of one base "
             "model, which share every name and shape: keep the order of `stats=[...]` "
             "that of the inputs."),
    "E341": ("statistics of tensors the model does not have",
             "A statistics folder holds tensors whose names are not tensors of the input "
             "it is paired with. Statistics are named after the model's own tensors "
             "(`model.layers.0.mlp.up_proj.weight`); they were computed on another model, "
             "or under other names."),
    "E342": ("statistics of the wrong shape",
             "Fisher statistics have the shape of their tensor; the Gram matrix of a linear "
             "weight of shape [out, in] has shape [in, in], and only 2-D weights have one. "
             "Example: for `lin.weight` of shape [3, 8] the Gram matrix is [8, 8]. The "
             "statistics were computed on another model, or written in another layout."),
    "E450": ("statistics folder that cannot be read",
             "A `stats` statement names a folder that does not exist, has no stats.json, or "
             "whose stats.json is not the documented format (`kind` \"fisher\" or "
             "\"gram\", `examples` a whole number >= 1, `model` a fingerprint of 64 hex "
             "digits), or whose tensors are not float32 safetensors. docs/stats.md has the "
             "format; `mergec stats` writes it."),
    "E451": ("data file for statistics that cannot be used",
             "`mergec stats --data` reads a .jsonl file (one JSON object per line) or a .csv "
             "file with a header row. Each example needs a non-empty text (the field `text`, "
             "or `--text-field`); `--fisher empirical` on a classifier needs a label for "
             "every example (`label`, or `--label-field`): a class number or one of the "
             "model's label names. Example line: `{\"text\": \"the cat sat\", "
             "\"label\": 1}`."),
    "E452": ("model that cannot give these statistics",
             "`mergec stats` loads the model with transformers (torch), which must be "
             "installed (`pip install 'mergec[data]'`) and able to load the folder (config, "
             "weights and tokenizer files). Fisher statistics need a model with a head "
             "that makes predictions (logits): a classifier or a language model; for an "
             "encoder without one, compute Gram statistics."),
    "E453": ("invalid option of `mergec stats`",
             "`--kind` is fisher or gram, `--fisher` sampled or empirical, `--max-examples`, "
             "`--batch-size` and `--max-length` are at least 1, and `--device` is cpu, "
             "cuda, cuda:N or auto (a CUDA device must be present)."),
    "W340": ("the same statistics for two inputs",
             "A statistics folder is given for two inputs of one call. Each model needs the "
             "statistics of its own data; with the same statistics, Fisher merging and "
             "RegMean weigh the models alike where they should not."),
    "W342": ("statistics for some inputs only",
             "A tensor has statistics in some of a call's folders but not in all, so the "
             "method cannot use them and the tensor takes `fallback=`. The folders were "
             "probably computed with other settings (another model class, a head left "
             "out); compute every input's statistics the same way."),
    "W341": ("a fallback that is never used",
             "Every tensor of the merge has statistics, so `fallback=` computes nothing. It "
             "is harmless; remove it or keep it for other statistics."),
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
             "linear methods, nearswap, copies and conversions; `ties`, breadcrumbs, the "
             "DARE methods and the DELLA methods (DELLA ranks within rows; their thresholds "
             "and L1 norms come from passes over the blocks first); slerp, nuslerp, "
             "multislerp, karcher and model_stock (their inner products likewise). With "
             "`--max-memory` (or `set max_memory`) the blocks are also kept within the "
             "limit. The methods that rank or select within a whole tensor at once (sce, "
             "nuslerp over columns of a matrix) and "
             "LoRA updates still hold their whole tensors in this version; the warning "
             "names the largest such tensor and how much memory it needs."),
    "E270": ("empty sweep",
             "A sweep needs at least one value. `param alpha = sweep()` and `--set alpha=0.1,,0.3` "
             "(an empty value between two commas) are refused. Example: "
             "`param alpha = sweep(0.1, 0.2, 0.3)`."),
    "E271": ("invalid sweep value",
             "The values of `sweep(...)` are literals of one kind: numbers (`0.1`, `-2`), "
             "strings (`\"model\"`) or `true`/`false`, written out in the call; a name, an "
             "expression or a `name=value` is refused, and so is a mix of kinds such as "
             "`sweep(0.1, \"a\")`. Example: `param density = sweep(0.2, 0.4, 0.6)`."),
    "E272": ("sweep used where it is not allowed",
             "`sweep(...)` is the whole value of a `param` statement and nothing else: not an "
             "argument of a merge call, not part of arithmetic, not a `set` or a `where` "
             "value. Declare the sweep once and use the param: `param w = sweep(0.2, 0.4)` "
             "then `linear(a, b, weight=[w, 1 - w])`. Every point is built as its own "
             "output. A swept param may set the seed (`set seed = s`), but not the "
             "settings the whole sweep is built with: `backend`, `device`, `shard_size`, "
             "`max_memory`."),
    "E273": ("too many sweep points",
             "Several swept params make the cartesian product of their values (the first "
             "declared param varies slowest), and one build makes at most 64 points: "
             "`sweep` of 10 values times `sweep` of 10 values is 100 points, refused. Sweep "
             "fewer values, or split the sweep into several builds with `--set` (a `--set` "
             "replaces the recipe's sweep: `--set alpha=0.1,0.2`)."),
    "E274": ("`--set` sweep value of the wrong kind",
             "`--set name=v1,v2,...` sweeps a param; each value must be of the param's kind. "
             "For `param alpha = 0.5`, `--set alpha=0.2,x` is refused: `x` is not a Number. "
             "Strings are written in double quotes when they hold a comma "
             "(`--set mode='\"a,b\",c'`)."),
    "E275": ("sweep value given twice",
             "Each point of a sweep is built once, into a folder named after it, so a value "
             "may appear only once: `sweep(0.1, 0.2, 0.1)` is refused (`1` and `1.0` are the "
             "same value)."),
    "E360": ("two sweep outputs in one folder",
             "Every output of a sweep is written to `OUT_DIR/<output>-<param>=<value>...`, "
             "with strings written there with every character other than letters, digits "
             "and `. _ + -` replaced by `_`: `sweep(\"a b\", \"a_b\")` would give two "
             "points the same folder. Sweep values that differ in letters or digits."),
    "E361": ("sweep folder name too long",
             "A point's folder name (`<output>-<param>=<value>...`) is at most 200 bytes, "
             "well within what file systems allow (255). Sweep shorter strings, fewer params "
             "at once, or give the output a shorter name."),
    "W360": ("sweep of one value",
             "`sweep(0.5)` builds one point, into `OUT_DIR/<output>-<param>=0.5`. Write "
             "`param x = 0.5` for a plain build into `OUT_DIR/<output>`."),
    "W361": ("no output depends on the sweep",
             "Every tensor of every output is the same at every point of the sweep: the "
             "swept param is not used by any merge call (or only where its value cancels). "
             "The build would write the same model once per point. Use the param in a merge "
             "call, or build once without the sweep."),
    "E421": ("a merge produced NaN or infinite values",
             "A computed output tensor holds NaN or infinite values that none of the input "
             "tensors it reads has: a method divided by zero or overflowed (weights of a "
             "huge magnitude, a slerp between a zero and a non-zero tensor, ...), or values "
             "are beyond the range of the output's storage dtype (float16 ends at 65504). The "
             "build stops and writes nothing for that output. Values an input already has "
             "are carried through without this error. Check the weights, store the output "
             "in a wider dtype (`{ dtype = \"bfloat16\" }`), or, if such values are meant, "
             "`set allow_nonfinite = true`."),
    "E470": ("Ray is not installed",
             "`mergec build --executor ray` runs the steps of the build as Ray tasks, and "
             "needs the `ray` package: `pip install 'mergec[ray]'`. Without it, build with "
             "the local executor (the default)."),
    "E471": ("cannot start or join Ray",
             "`--executor ray` starts a local Ray instance (`ray.init`) or, with `--address`, "
             "joins a running cluster. That failed: the message says why (no cluster at the "
             "address, a version mismatch between this Ray and the cluster's, no room to start "
             "a local instance). Check `ray status` on the cluster, or build locally."),
    "E472": ("a Ray task failed",
             "A step of the build failed on a Ray worker after its retries (a worker that "
             "dies is retried up to 3 times; an error raised by mergec itself, such as an "
             "unreadable input, is not retried). Nothing was written at the target: each "
             "output is committed by the driver only once every tensor is in its staging "
             "folder. The message names the tensor and the cause. On a cluster, every "
             "worker must see the inputs and the output folder at the same paths (shared "
             "storage) and have the same mergec version."),
    "E473": ("invalid executor",
             "`--executor` is `local` (the default: this machine's processes) or `ray`, and "
             "`--address` (a Ray cluster to join) is given only with `--executor ray`."),
    "E474": ("task memory larger than the Ray cluster's",
             "With `--executor ray`, `--max-memory SIZE` is each task's Ray `memory` "
             "requirement, so that Ray places no more tasks on a node than it can hold. A "
             "task that asks for more memory than the whole cluster offers could never be "
             "placed: the build stops before it starts. Give a smaller `--max-memory` (the "
             "steps are then computed in smaller row blocks), or add nodes."),
    "E240": ("mergekit config is not valid YAML",
             "`mergec import` reads a mergekit YAML config and could not parse it; the "
             "position is where the YAML parser stopped. Example: a tab used for "
             "indentation, or `models:` followed by an unindented `- model: x`."),
    "E241": ("mergekit config key that cannot be imported",
             "`mergec import` found a key it does not know, or one with no mergec "
             "counterpart: `modules` (per-module merges of multimodal models), a slice's "
             "`residual_weight`, a LoRA applied to a slice (an adapter cannot be sliced). "
             "Nothing is dropped silently: remove the key, or merge that part with mergekit. "
             "Example: `merge_methd: ties` (a typo) is reported at its line."),
    "E242": ("mergekit merge method without a mergec counterpart",
             "The config's `merge_method` is not one mergec imports. mergec imports linear, "
             "task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, "
             "della, della_linear, sce, slerp, nuslerp, multislerp, karcher, model_stock, "
             "nearswap and passthrough. Example: `merge_method: arcee_fusion`."),
    "E243": ("mergekit parameter that cannot be imported",
             "A parameter the method does not take (in mergekit or in mergec), or a value "
             "mergec cannot express: a gradient of strings or true/false values, a value "
             "that is not a finite number, different values per model of a parameter mergec "
             "takes once per call (`lambda`), more than 6 filters of one parameter. "
             "Example: `parameters: {t: [\"a\", \"b\"]}`."),
    "E244": ("malformed mergekit config",
             "The config does not have the shape mergekit requires: no `merge_method`, both "
             "or neither of `models` and `slices`, a model entry without `model:`, a "
             "`layer_range` that is not `[start, end]`, a method that needs `base_model` "
             "without one (task_arithmetic, ties, ...), a weight given for some models and "
             "not for others. Example: `merge_method: ties` with no `base_model`."),
    "E245": ("mergekit tokenizer setting that cannot be imported",
             "mergec copies one model's tokenizer files (`tokenizer = NAME` in the output's "
             "option block). `tokenizer_source: union`, a `tokenizer:` block (merged "
             "vocabularies, added tokens) and `chat_template` build a new tokenizer, which "
             "mergec does not. Example: `tokenizer_source: union`; write `tokenizer_source: "
             "base` or a model instead."),
    "W330": ("mergekit counts kept entries differently",
             "`mergec import` writes `count=\"floor\"` for TIES and breadcrumbs, which "
             "counts kept entries as mergekit does (`int(density * n)`). Two cases remain "
             "that it warns about: sce's `select_topk`, which mergekit counts over the "
             "entries whose variance across the inputs is not zero (mergec: over all "
             "entries), and breadcrumbs whose density or gamma vary by tensor (gradients, "
             "filters), where the import cannot write mergec's `gamma` for mergekit's "
             "density-1 and density + gamma > 1 cases. Example: `merge_method: sce` with "
             "`select_topk: 0.5`."),
    "W331": ("mergekit computes this differently",
             "The imported recipe runs the same method, but the numbers will differ from "
             "mergekit's by a known amount: random methods draw other random numbers (the "
             "same distribution), mergekit computing in bfloat16 or float16 (`dtype:`) where "
             "mergec computes in float32, "
             "multislerp with more than two inputs, karcher's last step. docs/parity.md "
             "measures each. Example: `dtype: bfloat16` without `out_dtype`."),
    "W332": ("mergekit ignores this parameter here",
             "A parameter that mergekit reads only from the merge's (or a slice's) "
             "`parameters:` is given for one model, where mergekit does not look; the "
             "imported recipe ignores it too. Example: `normalize: false` under one model of "
             "a ties merge."),
    "E440": ("input differs from the lock file",
             "`mergec build --locked` (and `mergec lock --check`) compare every input of the "
             "recipe with `RECIPE.lock`, written by `mergec lock`, before computing anything, "
             "and report each difference: a file whose content (sha256), size or "
             "safetensors header changed, a file that is new or gone, an input whose source "
             "changed or that the lock does not have, a hub revision that points to another "
             "commit than the locked one. Nothing is built. Run `mergec lock RECIPE` when the "
             "change is meant. Example: one byte of `ckpt/math/model.safetensors` changed "
             "since the lock was written."),
    "E441": ("lock file missing or unreadable",
             "`--locked` and `mergec lock --check` need `RECIPE.lock` next to the recipe; "
             "a lock file that is not valid TOML, or of another version, is refused. Write it "
             "with `mergec lock RECIPE`. Example: `mergec build r.merge --locked` with no "
             "`r.merge.lock`."),
    "E442": ("input cannot be fingerprinted",
             "`mergec lock` records a sha256 for every file of every input. A hub file is "
             "fingerprinted from the hub's metadata (the Git LFS object id of the weights) "
             "or, when it is downloaded, from its bytes; a file that is neither downloaded nor "
             "described by the hub (offline, unreachable) cannot be locked. Example: a hub "
             "model checked from remote headers, locked with `HF_HUB_OFFLINE=1`."),
    "W333": ("input differs from the lock file",
             "A build of a recipe with a `RECIPE.lock` compares the inputs' file sizes and "
             "safetensors headers with it, and warns about each difference (the file content "
             "is compared by `--locked`, which stops instead). Hub inputs are built at the "
             "locked commit, whatever their revision points to now. Example: a shard added "
             "to a local model folder since `mergec lock`."),
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
    "E317": ("a tokenizer with more tokens than the embedding has rows",
             "With `set vocab`, every model's tokens are read from its tokenizer.json and "
             "matched by their text; a token id must be a row of the model's embedding and "
             "head. A tokenizer whose ids reach past those rows belongs to another model "
             "(for example a fine-tune's tokenizer, with `<|im_start|>` added, saved beside "
             "the base's weights). Checked on the headers, before any weight is read."),
    "E318": ("no tokenizer.json for `set vocab`",
             "`set vocab` matches the models' tokens by their text, so every model needs a "
             "fast tokenizer file, `tokenizer.json`, that the `tokenizers` library reads. "
             "A model with only a slow tokenizer (`vocab.txt`, `tokenizer.model`) can be "
             "given one with transformers: `AutoTokenizer.from_pretrained(path)"
             ".save_pretrained(path)`."),
    "E319": ("`set vocab` names no model",
             "`set vocab` takes `\"union\"` (the tokens of every model) or the name of a "
             "`model` statement whose vocabulary the outputs have: `set vocab = \"base\"`. "
             "The help line suggests the closest name."),
    "E320": ("`vocab_fill = \"base\"` with a union",
             "`set vocab_fill = \"base\"` reads the rows of the tokens an input lacks from "
             "the model named by `set vocab`. A union has tokens that no single model has, "
             "so it needs another fill: `\"others\"` (the default: the mean of the rows the "
             "other inputs have), `\"zero\"` or `\"mean\"` (the mean of the input's own "
             "rows)."),
    "W315": ("a vocabulary setting without `set vocab`",
             "`set vocab_fill` and `set pad_to_multiple_of` say how the rows of the output "
             "vocabulary chosen by `set vocab` are made; without `set vocab` the inputs are "
             "read as stored and these settings change nothing. Example: `set "
             "pad_to_multiple_of = 64` alone does not pad a model's embeddings."),
    "E321": ("`set vocab` with an adapter or mixture-of-experts output",
             "`set vocab` changes the rows of the inputs' embeddings and heads and writes a "
             "tokenizer for dense model outputs. Outputs written as a LoRA adapter "
             "(`lowrank(...)`) or a mixture of experts (`moe(...)`) are built on one "
             "model's vocabulary, so they cannot be in a recipe with `set vocab`: merge the "
             "vocabularies in one recipe, then build the adapter or the mixture from that "
             "output in another."),
    "W313": ("an input lacks some of the output's tokens",
             "With `set vocab`, an input's embedding and head are read with one row per "
             "output token. For a token the input lacks, the row is a fill, as `set "
             "vocab_fill` says: the mean of the other inputs' rows for that token (the "
             "default, `\"others\"`: a token only one input has then keeps that input's row "
             "under linear, task-vector and interpolating merges), zeros, the mean of the "
             "input's own rows, or the row of the model `set vocab` names. The warning "
             "counts the tokens filled, per input."),
    "W314": ("embedding rows not in the output's vocabulary",
             "With `set vocab = \"NAME\"`, the tokens other inputs have and NAME lacks are "
             "not in the output, and their rows are not used; rows past an input's "
             "tokenizer (a vocabulary padded to a multiple of 64) are padding and are not "
             "used either. `set vocab = \"union\"` keeps every token; `set "
             "pad_to_multiple_of` pads the output again (with zero rows)."),
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
