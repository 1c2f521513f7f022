"""The pieces the benchmark scripts of loadtests/ are built from.

- ``settings``: the options every script shares, the settings of one run, progress lines.
- ``loads``: the load generators (wrk, or a built-in closed loop), closed or paced.
- ``payloads``: the requests (each protocol's body for the demo models) and how an answer
  is judged.
- ``stacks``: the reference apps, the scratch store with the demo models, memory (PSS).
- ``peers``: MLflow's own scoring server, when `make bench-peers` installed it.
- ``rounds``: one round of `make bench`, stack after stack.
- ``rows``: figures to table rows and goals.
- ``report``: the table, the JSON file, and the ``main`` every script shares.

The scripts (bench.py, worker_models.py, worker_cpu.py, shadow_cost.py, soak.py,
instance_memory.py) run as ``.venv/bin/python loadtests/<script>.py`` and import
``benchlib`` from their own directory.
"""
