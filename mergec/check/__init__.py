"""Checking: syntax tree -> checked program (`mergec.check.checker.check_program`).

Public API for the other packages:

* `mergec.check.checker.check_program` — check a parsed recipe.
* `mergec.check.program` — the checked nodes (`CheckedProgram`, `Output`, `CExpr`...).
* `mergec.check.walk` — traversal of checked expressions: `walk`, `part_model`,
  `first_input`.
* `mergec.check.output_config.derive_output_config` — an output's config.json.

The other modules are the checker's own, one concern each: `scope` (names), `inputs`
(`model` and `adapter` statements), `exprs` (expressions and kinds), `calls` (method
calls and the built-ins), `wheres` (`where` blocks), `tables` (tensor tables), `settings`
(`set`, `param` and `--set`), `outputs` (`output` statements and their options), `report`
(diagnostics), `methods` (the method registry), `suggest` (did-you-mean).
"""
