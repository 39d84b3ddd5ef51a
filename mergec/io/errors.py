"""The one error type of the checkpoint I/O layer.

Every problem met while finding, reading or writing checkpoints is raised as a
``CheckpointError`` with an E4xx code, a one-line message that names the file, folder
or hub repository involved, and (when mergec knows one) a help text saying how to fix
it. Public functions of ``mergec.io`` never let ``OSError``, ``json.JSONDecodeError``
or ``KeyError`` escape: they are turned into a ``CheckpointError`` here.

``IO_ERRORS`` lists every code used by this package with a short title and a longer
explanation; the project's error registry imports it for ``mergec explain``.
"""

from __future__ import annotations

from mergec.diagnostics import Diagnostic, MergecError, Span

# Codes used by mergec.io, grouped by what they are about.
E_SOURCE_MISSING = "E401"
E_SOURCE_INVALID = "E402"
E_HUB_UNAVAILABLE = "E403"
E_HUB_NOT_FOUND = "E404"
E_HUB_ACCESS = "E405"
E_NO_WEIGHTS = "E406"
E_CORRUPT_HEADER = "E407"
E_TRUNCATED = "E408"
E_INDEX = "E409"
E_BIN_LOAD = "E410"
E_CONFIG = "E411"
E_READ = "E412"
E_TARGET_EXISTS = "E413"
E_WRITER_USAGE = "E414"
E_WRITE_FAILED = "E415"
E_BAD_SIZE = "E416"
E_DTYPE = "E417"
E_CONFIG_DERIVE = "E418"
E_ADAPTER = "E419"
E_JSON_DEPTH = "E420"

#: the deepest nesting of objects and lists read from a checkpoint's JSON (config.json, the
#: index, a safetensors header): real files nest a few levels
MAX_JSON_DEPTH = 64

IO_ERRORS: dict[str, tuple[str, str]] = {
    E_SOURCE_MISSING: (
        "local model folder not found",
        "A model source written as a local path (it starts with `./`, `../`, `/` or `~`) "
        "does not exist or is not a directory. Relative paths are resolved against the "
        "folder that holds the recipe file, not the current directory. Point the source at "
        "the folder that contains `config.json` and the weight files.",
    ),
    E_SOURCE_INVALID: (
        "invalid model source",
        "A model source that is not a local path is read as a Hugging Face Hub repository "
        "id: `name` or `owner/name`, optionally followed by `@revision`. Ids use letters, "
        "digits, `-`, `_` and `.`, have at most one `/`, contain no `--` or `..`, do not "
        "start or end with `-` or `.`, and are at most 96 characters long. To use a local "
        "folder, start the path with `./` (for example `./ckpt/a/b`).",
    ),
    E_HUB_UNAVAILABLE: (
        "hub model not in the local cache and the hub cannot be reached",
        "The model is a Hugging Face Hub repository whose files are not in the local "
        "Hugging Face cache, and mergec could not download them: the machine is offline, "
        "`HF_HUB_OFFLINE=1` is set, downloads were disabled, or the hub did not answer. "
        "Download the model once while online (for example `hf download owner/name`), "
        "unset `HF_HUB_OFFLINE`, or point the recipe at a local copy (`./path`).",
    ),
    E_HUB_NOT_FOUND: (
        "hub repository or revision not found",
        "The Hugging Face Hub answered that the repository (or the requested revision) "
        "does not exist. Check the spelling of `owner/name` and of the `@revision`. A "
        "private repository also looks missing when you are not logged in.",
    ),
    E_HUB_ACCESS: (
        "hub repository requires access",
        "The repository is gated or private and the hub refused the download. Accept the "
        "model's conditions on its hub page and log in (`hf auth login`) or set `HF_TOKEN`.",
    ),
    E_NO_WEIGHTS: (
        "no weights in model folder",
        "mergec reads `model.safetensors`, sharded safetensors with "
        "`model.safetensors.index.json`, `pytorch_model.bin`, or sharded `.bin` files "
        "with `pytorch_model.bin.index.json`. None of these was found. A folder with "
        "`adapter_config.json` is a LoRA adapter: declare it with `adapter` instead.",
    ),
    E_CORRUPT_HEADER: (
        "corrupt safetensors header",
        "A safetensors file starts with an 8-byte little-endian header length followed by "
        "a JSON header describing each tensor (dtype, shape, data offsets). This file's "
        "header is not valid: the length is impossible, the JSON does not parse, or a "
        "tensor entry is malformed or inconsistent. The file is damaged; download or "
        "export it again.",
    ),
    E_TRUNCATED: (
        "truncated weights file",
        "The file is shorter than its header says: the tensor data ends past the end of "
        "the file. This usually means an interrupted download or copy. Delete the file "
        "and download it again.",
    ),
    E_INDEX: (
        "bad shard index",
        "Sharded checkpoints list in `*.index.json` which shard file holds each tensor. "
        "The index is not valid JSON, has no `weight_map`, names a shard file that is "
        "missing, or names a tensor that its shard does not contain. Download the "
        "checkpoint again, or fix the index file.",
    ),
    E_BIN_LOAD: (
        "cannot load PyTorch weights file",
        "A `.bin` weights file could not be loaded with `torch.load(weights_only=True)`. "
        "It may be truncated or corrupt, or it may contain Python objects other than "
        "tensors, which mergec refuses to unpickle. Download it again or convert the "
        "checkpoint to safetensors.",
    ),
    E_CONFIG: (
        "invalid config.json",
        "The model folder's `config.json` is not a valid JSON object, or its block count "
        "(`num_hidden_layers`, `n_layer`, `num_layers` or `n_layers`) is not a whole "
        "number >= 1 or is larger than the number of blocks in the weights. Restore it "
        "from the original model.",
    ),
    E_READ: (
        "cannot read checkpoint data",
        "Reading a tensor's data failed: the tensor does not exist in the checkpoint, the "
        "file changed or shrank since it was opened, only the headers of a hub model are "
        "known (its weights were not downloaded), or the operating system reported an error.",
    ),
    E_TARGET_EXISTS: (
        "output path already exists",
        "mergec never overwrites an existing output by accident. The output folder exists "
        "and is not empty (use `--force` to replace it; the old folder is removed only "
        "after the new one is complete), or the output path is an existing file.",
    ),
    E_WRITER_USAGE: (
        "invalid output write",
        "The output checkpoint writer was used inconsistently: a tensor was written that "
        "was not declared, written twice, written with another shape or dtype than "
        "declared, or the output was committed before every declared tensor was written. "
        "This is a bug in the stage that drives the writer.",
    ),
    E_WRITE_FAILED: (
        "cannot write output",
        "The operating system refused a write while creating the output checkpoint "
        "(no space left, no permission, read-only file system...). Nothing was placed at "
        "the output path; free space or choose another output folder and run again.",
    ),
    E_BAD_SIZE: (
        "invalid size",
        "Sizes are written as a number with an optional unit: `4096` (bytes), `500MB`, "
        "`5GB` (decimal, powers of 1000), `512MiB`, `1.5GiB` (binary, powers of 1024), or "
        "single letters `K`, `M`, `G`, `T` (binary). Units are case-insensitive.",
    ),
    E_DTYPE: (
        "unsupported dtype",
        "mergec handles float32, float16, bfloat16, float64, int64, int32, int16, int8, "
        "uint8, bool, float8_e4m3fn and float8_e5m2 tensors. The file holds a tensor of "
        "another type, or a dtype name was not recognised.",
    ),
    E_CONFIG_DERIVE: (
        "cannot adapt config.json",
        "mergec writes the output `config.json` from an input's config, changing the dtype "
        "and, when the layer count changes, the layer count and per-layer lists such as "
        "`layer_types`. A per-layer list whose entries differ cannot be shortened or "
        "extended automatically, or the config has no known layer-count key.",
    ),
    E_ADAPTER: (
        "invalid or unsupported LoRA adapter",
        "An `adapter` source must be a PEFT LoRA adapter folder: `adapter_config.json` "
        "(with `r`, `lora_alpha`, optionally `use_rslora`, `alpha_pattern`, "
        "`fan_in_fan_out`) and `adapter_model.safetensors` holding `lora_A`/`lora_B` pairs "
        "(or `lora_embedding_A`/`lora_embedding_B` for embeddings). DoRA adapters, adapters "
        "with trained biases, and other PEFT methods (IA3, prefix tuning, ...) are not LoRA "
        "deltas mergec can apply; merge them into their base with PEFT's "
        "`merge_and_unload` and declare the result with `model`.",
    ),
    E_JSON_DEPTH: (
        "JSON nested too deeply",
        f"A JSON file of a checkpoint (config.json, adapter_config.json, the "
        f"`.index.json` of a sharded checkpoint, or the header of a safetensors file) nests "
        f"objects or lists more than {MAX_JSON_DEPTH} levels deep. Real files nest a few "
        "levels; such a file is corrupt or hostile. Restore it from the original model.",
    ),
}


def load_json(data: str | bytes, path) -> object:
    """``json.loads(data)``, with E420 when objects or lists nest deeper than
    MAX_JSON_DEPTH (where Python's parser would otherwise hit its recursion limit).
    Invalid JSON raises ValueError as ``json.loads`` does."""
    import json

    too_deep = CheckpointError(
        E_JSON_DEPTH, f"{path} nests JSON objects or lists more than {MAX_JSON_DEPTH} "
        "levels deep", "the file is corrupt: restore it from the original model")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise too_deep from None
    todo = [(obj, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        todo.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return obj


class CheckpointError(Exception):
    """An I/O problem, reported as one diagnostic.

    ``code`` is one of ``IO_ERRORS`` (E401..E449), ``message`` a one-line description
    naming the file or repository, ``help`` an optional hint on how to fix it.
    """

    def __init__(self, code: str, message: str, help: str | None = None):
        self.code = code
        self.message = message
        self.help = help
        super().__init__(f"{code} {message}")

    def to_diagnostic(self, span: Span | None = None) -> Diagnostic:
        return Diagnostic(code=self.code, message=self.message, span=span, help=self.help)

    def to_mergec_error(self, span: Span | None = None) -> MergecError:
        return MergecError(self.to_diagnostic(span))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, help={self.help!r})"

    def __reduce__(self):  # picklable across process pools
        return (_rebuild, (type(self), self.code, self.message, self.help))


def _rebuild(cls, code, message, help):
    err = Exception.__new__(cls)
    CheckpointError.__init__(err, code, message, help)
    return err


class SizeError(CheckpointError, ValueError):
    """A size string that does not parse (also a ``ValueError``)."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__(E_BAD_SIZE, message, help)
