"""The runtime: the schedule that `mergec plan` shows, and the build that executes it.

* :mod:`.schedule` — the steps of every output from headers alone (and their costs);
* :mod:`.prepass` — statistics before the last pass, over a tensor or a whole model;
* :mod:`.interpreter` — one step on a backend, into the writer;
* :mod:`.parallel` — worker processes, threads, read-ahead;
* :mod:`.build` — one output: model statistics, every step, the files beside them.
"""
