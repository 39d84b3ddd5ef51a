"""mergec: a compiler for model-merging recipes.

Recipes are ``.merge`` files; ``mergec build recipe.merge`` checks them,
compiles a per-tensor plan and runs it on PyTorch or JAX, writing Hugging Face
checkpoints.
"""

__version__ = "0.1.0"
