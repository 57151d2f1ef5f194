"""Dispatch tables shipped with leetbench: `<device>.json`, made from the published leaderboards' results.csv
(results/gpu-<device>/) by `python -m leetbench.dispatch_tables results/gpu-<device>/results.csv`, and read
by `leetbench.dispatch.Dispatcher`."""
