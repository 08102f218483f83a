"""Search: the third stage, in three parts.

- `search.spaces`: the search spaces (`nb201`, `mbv3`, `resnet`) and their registry;
- `search.accuracy`: accuracy estimation (data, zero-cost proxies, supernet, rank-ensemble
  estimator, re-ranking by short training);
- the engine, the modules at this level: `problem` (candidates, formulations, the evaluator),
  `algorithms` (NSGA-II, random), `models` (latency/accuracy adapters), `verify` (on-device
  verification), `benchmark` (benchmark mode), `frontier` and `report` (outputs), `wiring`
  (building the pieces from a configuration) and `run` (the search itself).
"""
