"""mergec: a compiler for model-merging recipes.

Recipes are ``.merge`` files; ``mergec build recipe.merge`` checks them,
compiles a per-tensor plan and runs it on PyTorch or JAX, writing Hugging Face
checkpoints.

Python API::

    import mergec
    mergec.check("recipe.merge")              # parse + check (headers only)
    mergec.compile("recipe.merge").plan       # + per-tensor IR and plan
    mergec.build("recipe.merge", "out")       # + run and write every output
"""

__version__ = "0.1.0"

__all__ = ["__version__", "parse", "check", "compile", "build", "Diagnostic", "MergecError"]


def parse(text: str, file: str = "<recipe>"):
    """Parse recipe text into a syntax tree (raises MergecError on syntax errors)."""
    from mergec.api import parse as _parse

    return _parse(text, file)


def check(recipe, **kwargs):
    """Parse and check a recipe and its inputs; reads no tensor data."""
    from mergec.api import check as _check

    return _check(recipe, **kwargs)


def compile(recipe, **kwargs):  # noqa: A001 - the public name
    """Check and lower a recipe to per-tensor IR with its plan."""
    from mergec.api import compile as _compile

    return _compile(recipe, **kwargs)


def build(recipe, out_dir="out", **kwargs):
    """Check, compile and build every output into ``out_dir/<output name>``."""
    from mergec.api import build as _build

    return _build(recipe, out_dir, **kwargs)


def __getattr__(name: str):
    # imported on first use, so that `import mergec` costs next to nothing: the command
    # line takes over Ctrl-C as early as it can (see mergec.cli)
    if name in ("Diagnostic", "MergecError"):
        from mergec import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(f"module 'mergec' has no attribute {name!r}")
