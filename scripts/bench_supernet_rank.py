"""How well the baseline space's supernet ranks architectures, against short standalone trainings.

On the bundled digits (resized, as the demo does) or another `search --data` source, it draws
``--archs`` architectures of the ``--baseline`` space (the baseline itself first), and for each:

(a) the accuracy of its subnet in the trained `search.accuracy.supernet.BaselineSupernet`
    (trained as a search trains it: `search.wiring.supernet_train_config`, BN recalibrated);
(b) the zero-cost proxies' estimate (the search's default ensemble, a percentile among
    ``--reference`` random architectures);
(c) the held-out accuracy after a short standalone training (the `train` command's recipe,
    ``--train-epochs`` epochs, one training per ``--seeds`` seed; their mean is the ground truth).

It prints Kendall's tau and Spearman's rho of (a), (b) and the combined estimator (the search's
rank ensemble at several supernet weights) against (c), and the seed-to-seed agreement of (c),
the ceiling any estimator can reach. Everything expensive is cached under ``--cache`` (the
supernet checkpoint resumes; each standalone training is one JSON line), so a killed run
continues where it stopped.

    taskset -c 0 python -m scripts.bench_supernet_rank --archs 20 --out /tmp/rank.json
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

WEIGHTS = (0.0, 0.25, 1.0, 4.0)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--baseline", default="resnet20", show_default=True, help="The baseline whose space is sampled.")
@click.option("--data", default="digits", show_default=True, help="As `search --data`: digits, an .npz or an image folder.")
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True,
              help="Images are resized to this size (the demo's 32).")
@click.option("--max-per-class", type=click.IntRange(min=2), default=500, show_default=True,
              help="Images per class loaded (as `search --data-max-per-class`).")
@click.option("--archs", type=click.IntRange(min=3), default=20, show_default=True,
              help="Architectures scored and trained, the baseline included.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Standalone trainings per architecture (their mean is the ground truth).")
@click.option("--train-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Epochs of each standalone training (the `train` recipe otherwise).")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True,
              help="Batch size of each standalone training (its learning rate scales with it).")
@click.option("--supernet-epochs", type=click.FloatRange(min=0.1), default=8.0, show_default=True,
              help="Supernet training epochs (a search's default is 8).")
@click.option("--reference", type=click.IntRange(min=4), default=32, show_default=True,
              help="Random architectures the rank ensemble's percentiles are taken in (a search: 64).")
@click.option("--proxy-batch", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the architectures and seeds the supernet.")
@click.option("--supernet-seed", type=int, help="Seeds the supernet's initialisation and training (default: --seed); "
              "another value repeats (a) and (c) on the same architectures and standalone trainings.")
@click.option("--from-end", is_flag=True, help="Train the standalone networks from the end of the list: a second "
              "run sharing --cache (e.g. with another --supernet-seed) then meets the first halfway.")
@click.option("--cache", type=click.Path(file_okay=False), default="/tmp/hwnas-supernet-rank", show_default=True,
              help="Supernet checkpoint and standalone results (a rerun resumes from them).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write every figure and per-architecture row as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result instead of the table.")
def main(baseline, data, image_size, max_per_class, archs, seeds, train_epochs, batch_size, supernet_epochs, reference,
         proxy_batch, seed, supernet_seed, from_end, cache, out, as_json):
    """Rank correlation of the baseline space's supernet, the proxies and their ensemble with the
    held-out accuracy of short standalone trainings (see the module docstring)."""
    from scripts.cli import cli_errors, set_torch_threads
    set_torch_threads(1)
    with cli_errors():
        result = run(baseline, data, image_size, max_per_class, archs, seeds, train_epochs, batch_size, supernet_epochs,
                     reference, proxy_batch, seed, Path(cache), supernet_seed, from_end, log=lambda s: click.echo(s, err=True))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"\n{result['setup']}")
    click.echo(f"{'estimator':34s} {'Kendall':>8s} {'Spearman':>9s}  baseline rank")
    for name, r in result["correlations"].items():
        click.echo(f"{name:34s} {r['kendall']:8.3f} {r['spearman']:9.3f}  {r['baseline_rank']}/{result['n_archs']}")
    click.echo(f"{'ground truth: seed vs seed':34s} {result['seed_agreement']['kendall']:8.3f} "
               f"{result['seed_agreement']['spearman']:9.3f}" if result["seed_agreement"] else "")
    click.echo(f"baseline: standalone {result['rows'][0]['standalone']:.2f}% (rank {result['truth_baseline_rank']}), "
               f"supernet {result['rows'][0]['supernet_acc']:.2f}%")


def run(baseline: str, data_spec: str, image_size: int, max_per_class: int, n_archs: int, seeds: int,
        train_epochs: int, batch_size: int, supernet_epochs: float, reference: int, proxy_batch: int, seed: int, cache: Path,
        supernet_seed: int | None, from_end: bool, log) -> dict:
    import torch
    from scipy.stats import kendalltau, spearmanr

    from search.accuracy.estimator import SUPERNET_COLUMN, AccuracyEstimator, RankEnsemble
    from search.accuracy.supernet import build_supernet
    from search.baseline_search import baseline_space_options
    from search.config import SupernetConfig
    from search.models import cache_name
    from search.run import DEFAULT_PROXIES
    from search.training import TrainRecipe, train_model
    from search.wiring import load_data, make_space, supernet_train_config

    t0 = time.monotonic()
    data = load_data(data_spec, seed=0, max_per_class=max_per_class, image_size=image_size)
    name, opts = baseline_space_options(baseline, data)
    space = make_space("baseline", data, opts)
    rng = np.random.default_rng(seed)
    archs = [space.baseline_arch]
    while len(archs) < n_archs:
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
    keys = [space.to_string(a) for a in archs]
    cache.mkdir(parents=True, exist_ok=True)

    # (a) the supernet, trained as a search trains it (resumable checkpoint)
    sn_seed = seed if supernet_seed is None else supernet_seed
    tc = supernet_train_config(SupernetConfig(epochs=supernet_epochs), data, seed=sn_seed)
    ckpt = cache / f"supernet-{cache_name(repr(space), data.name, repr(tc))}.pt"
    torch.manual_seed(sn_seed)
    sn = build_supernet(space)
    log(f"supernet: {sum(p.numel() for p in sn.parameters()):,} weights; training {supernet_epochs:g} epochs on "
        f"{len(data.train)} images ({ckpt})")
    info = sn.fit(data.train, tc, checkpoint=ckpt, log=log)
    sn.eval()

    # (a) + (b): the search's estimator, with the supernet column
    inputs, targets = data.train.batch(min(proxy_batch, len(data.train)), seed=seed)
    est = AccuracyEstimator(space, inputs, targets, DEFAULT_PROXIES, supernet=sn, val=data.val, calib=data.train,
                            reference_size=reference, seed=seed)
    t_eval = time.monotonic()
    feats = est.features(archs)
    per_arch_s = (time.monotonic() - t_eval) / len(archs)
    ref_rng = np.random.default_rng(seed + 1)
    ref_feats = est.features([space.sample(ref_rng) for _ in range(reference)])
    log(f"scored {len(archs)} architectures and a reference of {reference} ({per_arch_s:.1f} s per architecture)")

    # (c) ground truth: short standalone trainings, one JSON line each
    recipe_of = {s: TrainRecipe(epochs=train_epochs, batch_size=batch_size, seed=s, hflip=False) for s in range(seeds)}
    gt_file = cache / f"standalone-{cache_name(repr(space), data.name, recipe_of[0])}.jsonl"
    done: dict[tuple[str, int], float] = {}

    def read_done() -> None:  # another run sharing the cache may have trained some meanwhile
        if gt_file.exists():
            for line in gt_file.read_text().splitlines():
                try:
                    d = json.loads(line)
                    done[(d["arch"], int(d["seed"]))] = float(d["accuracy"])
                except (ValueError, KeyError):
                    continue

    read_done()
    # every architecture's first seed before any second one: a run cut short still ranks them all
    todo = [(a, k, s) for s in range(seeds) for a, k in zip(archs, keys) if (k, s) not in done]
    if from_end:
        todo.reverse()
    t_train = time.monotonic()
    for i, (a, k, s) in enumerate(todo):
        read_done()
        if (k, s) in done:
            continue
        torch.manual_seed(s)
        net = space.build(a)
        r = train_model(net, data.train, data.val, recipe_of[s], progress=False)
        done[(k, s)] = r.test_accuracy
        with gt_file.open("a") as f:
            f.write(json.dumps({"arch": k, "seed": s, "accuracy": r.test_accuracy, "seconds": r.seconds}) + "\n")
        el = time.monotonic() - t_train
        log(f"standalone {i + 1}/{len(todo)}: {k} seed {s}: {r.test_accuracy:.2f}% ({el:.0f} s, about "
            f"{el / (i + 1) * (len(todo) - i - 1):.0f} s left)")
    truth = np.array([np.mean([done[(k, s)] for s in range(seeds)]) for k in keys])

    def corr(pred) -> dict:
        pred = np.asarray(pred, float)
        order = (-pred).argsort().argsort() + 1  # 1 = best
        return {"kendall": float(kendalltau(pred, truth).statistic),
                "spearman": float(spearmanr(pred, truth).statistic), "baseline_rank": int(order[0])}

    correlations = {"(a) supernet accuracy": corr(feats[SUPERNET_COLUMN])}
    for p in est.proxies:
        correlations[f"proxy {p}"] = corr(feats[p])
    for w in WEIGHTS:
        ens = RankEnsemble(list(est.proxies) + [SUPERNET_COLUMN],
                           [1.0 / len(est.proxies)] * len(est.proxies) + [w]).fit(ref_feats)
        label = "(b) proxies' ensemble" if w == 0 else f"(c) combined, supernet weight {w:g}"
        correlations[label] = corr(ens.predict(feats))
    seed_agreement = None
    if seeds >= 2:
        a0 = [done[(k, 0)] for k in keys]
        a1 = [done[(k, 1)] for k in keys]
        seed_agreement = {"kendall": float(kendalltau(a0, a1).statistic), "spearman": float(spearmanr(a0, a1).statistic)}
    rows = [{"arch": k, "standalone": float(t), "per_seed": [done[(k, s)] for s in range(seeds)],
             "supernet_acc": float(feats[SUPERNET_COLUMN].iloc[i]),
             **{p: float(feats[p].iloc[i]) for p in est.proxies}, "params": space.size_of(a)[0]}
            for i, (a, k, t) in enumerate(zip(archs, keys, truth))]
    setup = (f"{name} space on {data.name} ({len(data.train)} train / {len(data.val)} held-out), "
             f"{len(archs)} architectures (the baseline first), supernet {supernet_epochs:g} epochs, seed {sn_seed} "
             f"({info['steps']} steps), standalone {train_epochs} epochs (batch {batch_size}) x {seeds} seed(s), "
             f"reference {reference}")
    return {"setup": setup, "n_archs": len(archs), "correlations": correlations, "seed_agreement": seed_agreement,
            "truth_baseline_rank": int((-truth).argsort().argsort()[0] + 1), "rows": rows,
            "supernet_seconds_per_arch": per_arch_s, "supernet_train": info,
            "seconds": time.monotonic() - t0}


if __name__ == "__main__":
    main()
