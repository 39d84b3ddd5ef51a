"""Commands that treat recipes as source code: `mergec import` (mergekit YAML configs to
recipes), `mergec diff` (checkpoints and recipes) and `mergec lock` (pinned inputs).

Each command's logic is one module here; the command line keeps a thin function each.
"""
