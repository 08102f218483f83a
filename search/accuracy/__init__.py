"""Accuracy estimation without full training: one of the three parts of `search/`.

- `data`: the user's images (folder, ``.npz`` or the bundled digits), split and normalised;
- `proxies`: zero-cost proxies of an untrained network;
- `supernet`: a weight-sharing supernet per space, trained once on the data;
- `estimator`: the unsupervised rank ensemble of proxies and supernet accuracy;
- `rerank`: a short stand-alone training of the best-estimated candidates;
- `tasks`: where those evaluations run: in this process, or as Ray tasks (`ray_address`).

The other two parts are `search.spaces` (what can be built) and the engine at the top of
`search` (problem, algorithms, run, verify, frontier, report, wiring).
"""
