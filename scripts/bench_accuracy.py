"""Accuracy-estimation benchmarks: zero-cost proxies and the supernet on NAS-Bench-201 / CIFAR-10.

Needs the reference data at ``../shared`` (see ``../shared/README.md``). Expensive results are
cached as CSV files under ``--cache`` (default ``/tmp/hwnas-accbench``), so a rerun only prints.

    taskset -c 0 python -m scripts.bench_accuracy proxies   # 11 proxies on 1,000 NB201 cells
    taskset -c 0 python -m scripts.bench_accuracy supernet  # supernet ranking (Kendall tau)
    taskset -c 0 python -m scripts.bench_accuracy report    # prints every figure from the caches
    taskset -c 0 python -m scripts.bench_accuracy supervised-dev  # supervised estimators on the other reference cells
    taskset -c 0 python -m scripts.bench_accuracy supernet-weight  # the supernet's weight in the rank ensemble

Subcommands ``proxies`` and ``supernet`` also print their figures when done. On a GPU machine,
``--device cuda`` trains and evaluates there, and ``--shared DIR`` points at a copy of the
reference data (the command of each session-4 run is in ``docs/accuracy.md`` section 7).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import json
import sys
from typing import Sequence
import tarfile
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NB201_CSV = SHARED / "nb201" / "nb201_cifar10.csv"
ZC_CSV = SHARED / "nb201" / "nb201_zc_proxies_cifar10.csv"
CIFAR_TGZ = SHARED / "cifar10" / "cifar10-jpeg.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: our proxy name -> the reference table's column
REF_COLUMN = {"flops": "flops", "params": "params", "synflow": "synflow", "nwot": "nwot", "jacob_cov": "jacov",
              "snip": "snip", "grad_norm": "grad_norm", "fisher": "fisher", "grasp": "grasp", "zen": "zen"}


def _need_shared(subcommand: str | None = None) -> None:
    needed = (NB201_CSV, CIFAR_TGZ) if subcommand in ("supernet", "standalone") else (NB201_CSV, ZC_CSV, CIFAR_TGZ)
    missing = [p for p in needed if not p.exists()]
    if missing:
        sys.exit(f"reference data missing: {', '.join(map(str, missing))} (expected ../shared, see shared/README.md)")


def cifar_dir(cache: Path) -> Path:
    """CIFAR-10 extracted once under the cache directory (never inside the repository)."""
    d = cache / "cifar10"
    if not (d / "train").is_dir():
        d.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR_TGZ) as tf:
            tf.extractall(d, filter="data")
    if not (d / "train").is_dir():  # the archive may hold a top-level folder
        sub = [p for p in d.iterdir() if (p / "train").is_dir()]
        if sub:
            return sub[0]
    return d


def proxy_batch(cache: Path, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from search.accuracy.data import load_dataset
    ds = load_dataset(cifar_dir(cache), split="train", max_per_class=50, seed=seed).normalized(CIFAR_MEAN, CIFAR_STD)
    return ds.batch(n, seed=seed)


def bench_cells(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random cells of the reference proxy table joined with their accuracies."""
    ref = pd.read_csv(ZC_CSV)
    acc = pd.read_csv(NB201_CSV, usecols=["arch", "val_acc", "test_acc"])
    df = ref.merge(acc, on="arch")
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


#: computed on every cell first (the ensemble's proxies and the cheap ones), then the rest
PHASES: tuple[tuple[str, ...], ...] = (("params", "flops", "synflow", "jacob_cov"), ("nwot",),
                                       ("snip", "grad_norm", "fisher", "zico", "zen"))


def run_proxies(cache: Path, n_cells: int, grasp_cells: int, batch: int, budget_s: float, timing_cells: int = 10,
                phase_cells: Sequence[int] = (1000, 1000, 1000)) -> Path:
    """Fill the cache phase by phase (see PHASES), so an interrupted run still holds every
    cheap proxy on all cells; each cell's proxies come from one seeded network."""
    from search.accuracy.proxies import compute_proxies
    from search.spaces import get_space
    torch.set_num_threads(1)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"nb201_proxies_b{batch}.csv"
    cells = bench_cells(n_cells)
    table = pd.read_csv(out).set_index("arch") if out.exists() else pd.DataFrame(index=pd.Index([], name="arch"))
    x, y = proxy_batch(cache, batch)
    space = get_space("nb201")
    t_start = time.time()

    def save() -> None:
        table.reset_index().to_csv(out, index=False)

    def get(arch: str, col: str) -> float:
        return table.at[arch, col] if arch in table.index and col in table.columns else float("nan")

    phases = [(names, n) for names, n in zip(PHASES, phase_cells)] + [(("grasp",), grasp_cells)]
    for names, n in phases:
        done = 0
        for k, arch in enumerate(cells["arch"][:n]):
            todo = [p for p in names if pd.isna(get(arch, p))]
            if not todo:
                continue
            if time.time() - t_start > budget_s:
                save()
                click.echo(f"time budget reached in phase {names}")
                return out
            torch.manual_seed(0)
            net = space.build(space.from_string(arch))
            if k < timing_cells:  # each proxy on its own, timed
                for p in todo:
                    t = time.perf_counter()
                    table.loc[arch, p] = compute_proxies(net, x, y, [p], seed=0)[p]
                    table.loc[arch, f"t_{p}"] = time.perf_counter() - t
            else:
                vals = compute_proxies(net, x, y, todo, seed=0)
                for p, v in vals.items():
                    table.loc[arch, p] = v
            done += 1
            if done % 25 == 0:
                save()
                click.echo(f"phase {names}: cell {k + 1}/{n}, {time.time() - t_start:.0f} s")
        save()
    return out


def proxy_report(cache: Path, batch: int, n_cells: int = 1000, n_labels: int = 100, reps: int = 10) -> dict:
    from search.accuracy.estimator import DEFAULT_ENSEMBLE, RankEnsemble, SupervisedEstimator, structure_features
    from search.spaces import get_space
    path = cache / f"nb201_proxies_b{batch}.csv"
    if not path.exists():
        sys.exit(f"no cached proxies at {path}; run the 'proxies' subcommand first")
    mine = pd.read_csv(path)
    ref_cols = ["epe_nas", "fisher", "flops", "grad_norm", "grasp", "jacov", "l2_norm", "nwot", "params", "plain",
                "snip", "synflow", "zen"]
    cells = bench_cells(n_cells).rename(columns={c: "ref_" + c for c in ref_cols})
    df = cells.merge(mine, on="arch")
    click.echo(f"NB201 CIFAR-10: {len(df)} cells (fully reachable), one CIFAR-10 batch of {batch}")
    click.echo(f"{'proxy':<10} {'n':>5} {'rho(ref)':>9} {'rho(val) ours':>14} {'rho(val) ref':>13} {'ms/arch':>8}")
    res: dict = {"cells": len(df), "proxies": {}}
    for p in list(REF_COLUMN) + ["zico"]:
        if p not in df or not df[p].notna().any():
            continue
        sub = df[df[p].notna()]
        ref_col = sub["ref_" + REF_COLUMN[p]] if p in REF_COLUMN else None
        r_ref = spearmanr(sub[p], ref_col, nan_policy="omit").statistic if ref_col is not None else float("nan")
        r_val = spearmanr(sub[p], sub["val_acc"], nan_policy="omit").statistic
        r_val_ref = spearmanr(ref_col, sub["val_acc"], nan_policy="omit").statistic if ref_col is not None else float("nan")
        ms = 1000 * sub[f"t_{p}"].mean()  # timed on the first cells only
        res["proxies"][p] = {"n": len(sub), "spearman_ref": float(r_ref), "spearman_val": float(r_val),
                             "ref_spearman_val": float(r_val_ref), "ms": float(ms)}
        click.echo(f"{p:<10} {len(sub):>5} {r_ref:>9.3f} {r_val:>14.3f} {r_val_ref:>13.3f} {ms:>8.0f}")
    ens_df = df.dropna(subset=list(DEFAULT_ENSEMBLE))
    r_ens = spearmanr(RankEnsemble(DEFAULT_ENSEMBLE).predict(ens_df), ens_df["val_acc"]).statistic
    ref_ens = ens_df.assign(jacob_cov=ens_df["ref_jacov"], params=ens_df["ref_params"])
    r_ens_ref = spearmanr(RankEnsemble(DEFAULT_ENSEMBLE).predict(ref_ens), ens_df["val_acc"]).statistic
    click.echo(f"unsupervised rank ensemble {DEFAULT_ENSEMBLE} on {len(ens_df)} cells: Spearman with val_acc = "
               f"{r_ens:.3f} (same ensemble of the reference scores: {r_ens_ref:.3f})")
    res["ensemble"] = {"columns": list(DEFAULT_ENSEMBLE), "cells": len(ens_df), "spearman_val": float(r_ens),
                       "reference_scores_spearman_val": float(r_ens_ref)}
    # supervised: n_labels random cells with val_acc as labels, scored on the rest; features are
    # the proxies computed on (nearly) every cell, plus the encoding
    space = get_space("nb201")
    feats = [p for p in list(REF_COLUMN) + ["zico"] if p in ens_df and ens_df[p].notna().mean() > 0.95]
    sup = ens_df.dropna(subset=feats).reset_index(drop=True)
    archs = [space.from_string(a) for a in sup["arch"]]
    enc, struct = space.arch_features_batch(archs), structure_features(space, archs)
    res["supervised"] = {"labels": n_labels, "features": feats, "cells": len(sup)}
    descr = {"average": "mean of ridge, GP and LightGBM-on-the-ensemble-residual on proxy percentiles + ensemble "
                        "score + structure (+ arch features for the trees)",
             "lightgbm": "LightGBM on the proxies + arch features, blended with the ensemble"}
    for method in ("lightgbm", "average"):
        rhos = []
        for rep in range(reps):
            rng = np.random.default_rng(rep)
            idx = rng.permutation(len(sup))
            tr, te = idx[:n_labels], idx[n_labels:]
            est = SupervisedEstimator(seed=rep, method=method)
            est.fit(sup.iloc[tr][feats], sup.iloc[tr]["val_acc"].to_numpy(), encodings=enc[tr],
                    structure=None if method == "lightgbm" else struct[tr],
                    reference=sup[feats])  # unlabelled proxies of all cells
            pred = est.predict(sup.iloc[te][feats], encodings=enc[te],
                               structure=None if method == "lightgbm" else struct[te])
            rhos.append(spearmanr(pred, sup.iloc[te]["val_acc"]).statistic)
        click.echo(f"supervised, method={method} ({descr[method]}) on {feats}, {n_labels} labels, scored on the other "
                   f"{len(sup) - n_labels}: Spearman {np.mean(rhos):.3f} +- {np.std(rhos):.3f} over {reps} draws")
        res["supervised"][method] = {"spearman_mean": float(np.mean(rhos)), "spearman_std": float(np.std(rhos)),
                                     "per_draw": [float(r) for r in rhos]}
    total_ms = sum(v["ms"] for v in res["proxies"].values())
    click.echo(f"all {len(res['proxies'])} proxies: {total_ms / 1000:.2f} s per architecture "
               f"(1 core, batch {batch}, each proxy computed separately)")
    return res


def supervised_dev_check(n_cells: int = 1000, n_labels: int = 100, reps: int = 10, samples: Sequence[int] = (1, 2)) -> dict:
    """The supervised estimators on cells the benchmark does not score: ``n_cells`` random cells
    of the other reference cells (their reference proxies), ``n_labels`` labelled, scored on the
    rest, as in :func:`proxy_report`. This is where the design of ``method="average"`` can be
    checked without touching the benchmark's 1,000 cells."""
    from search.accuracy.estimator import SupervisedEstimator, structure_features
    from search.spaces import get_space
    feats = ["flops", "params", "synflow", "nwot", "jacob_cov"]
    bench = set(bench_cells(n_cells)["arch"])
    ref = pd.read_csv(ZC_CSV).merge(pd.read_csv(NB201_CSV, usecols=["arch", "val_acc"]), on="arch")
    ref = ref[~ref["arch"].isin(bench)].rename(columns={"jacov": "jacob_cov"})
    space = get_space("nb201")
    res: dict = {}
    for sample in samples:
        df = ref.sample(n_cells, random_state=sample).reset_index(drop=True)
        archs = [space.from_string(a) for a in df["arch"]]
        enc, struct = space.arch_features_batch(archs), structure_features(space, archs)
        y = df["val_acc"].to_numpy()
        for method in ("lightgbm", "average"):
            st = None if method == "lightgbm" else struct
            rhos = []
            for rep in range(reps):
                idx = np.random.default_rng(rep).permutation(len(df))
                tr, te = idx[:n_labels], idx[n_labels:]
                est = SupervisedEstimator(seed=rep, method=method).fit(
                    df.iloc[tr][feats], y[tr], encodings=enc[tr], structure=None if st is None else st[tr],
                    reference=df[feats])
                pred = est.predict(df.iloc[te][feats], encodings=enc[te], structure=None if st is None else st[te])
                rhos.append(spearmanr(pred, y[te]).statistic)
            click.echo(f"other reference cells, sample {sample} ({len(df)} of {len(ref)}), method={method}: "
                       f"Spearman {np.mean(rhos):.3f} +- {np.std(rhos):.3f} over {reps} draws of {n_labels} labels")
            res[f"{sample}/{method}"] = {"spearman_mean": float(np.mean(rhos)), "spearman_std": float(np.std(rhos))}
    return res


def _supernet_data(cache: Path, per_class: int, val_per_class: int, size: int, seed: int = 0):
    """The CIFAR-10 subset of the supernet benchmark: ``per_class`` training images per class and
    ``val_per_class`` images per class of the test split (1,000 = the whole test split), resized to
    ``size``, normalised with the training subset's statistics."""
    from search.accuracy.data import load_dataset
    root = cifar_dir(cache)
    t = time.time()
    train = load_dataset(root, split="train", image_size=size, max_per_class=per_class, seed=seed)
    val = load_dataset(root, split="test", image_size=size, max_per_class=val_per_class, seed=seed)
    mean, std = train.stats()
    train, val = train.normalized(mean, std), val.normalized(mean, std)
    click.echo(f"CIFAR-10 subset: {len(train)} train / {len(val)} held-out (test split) images at {size}x{size} "
               f"(loaded in {time.time() - t:.0f} s)")
    return train, val


def _bench_subnets(space, n_subnets: int, seed: int = 0) -> list:
    """The subnets scored by the benchmark, fixed by ``seed`` before anything is trained: uniform
    over the cells without dead edges (and not all-``none``)."""
    pool = [a for a in space.all_archs() if space.is_fully_reachable(a) and any(o != "none" for o in a)]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), n_subnets, replace=False)]


def _recipe_tag(batch_size: int, lr: float | None = None) -> str:
    """File-name suffix of a non-default batch size and (if given) learning rate; the CPU runs'
    caches, made with the defaults, keep their names."""
    return ("" if batch_size == 64 else f"_b{batch_size}") + ("" if lr in (None, 0.05) else f"_lr{lr}")


def _standalone_path(work: Path, C: int, N: int, size: int, epochs: float, per_class: int, val_per_class: int,
                     batch_size: int = 64, lr: float = 0.05) -> Path:
    return work / (f"standalone_C{C}N{N}_r{size}_e{epochs}_pc{per_class}_v{val_per_class}"
                   f"{_recipe_tag(batch_size, lr)}.csv")


def _locked_rows(path: Path, row: dict | None = None) -> pd.DataFrame:
    """Read the stand-alone cache (and append ``row``) under a file lock, so that several
    processes can fill it at once (e.g. one per core share, one walking the subnets backwards)."""
    import fcntl
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sa = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["arch", "seed", "acc", "seconds"])
        if row is not None:
            sa = pd.concat([sa, pd.DataFrame([row])], ignore_index=True)
            tmp = path.with_suffix(".tmp")
            sa.to_csv(tmp, index=False)
            os.replace(tmp, path)
    sa["seed"] = sa["seed"].astype(int)
    return sa


def run_standalone(cache: Path, n_subnets: int, per_class: int, val_per_class: int, size: int, C: int, N: int,
                   epochs: float, seeds: int, data=None, seed: int = 0, reverse: bool = False,
                   device: str = "cpu", batch_size: int = 64, lr: float = 0.05,
                   shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Train every benchmark subnet from scratch ``seeds`` times (seed s: initialisation, data order
    and augmentation), caching one row per (arch, seed); returns the rows of the benchmark subnets.
    ``reverse`` walks the subnets backwards (a second process can then fill the cache from the other end);
    ``shard=(k, n)`` trains only the k-th of every n (arch, seed) runs, for n processes side by side."""
    from search.spaces import get_space
    from search.accuracy.supernet import TrainConfig, accuracy, train_standalone
    torch.set_num_threads(1)
    work = cache / "supernet"
    work.mkdir(parents=True, exist_ok=True)
    train, val = data if data is not None else _supernet_data(cache, per_class, val_per_class, size, seed)
    space = get_space("nb201", C=C, N=N, resolution=size)
    archs = [space.to_string(a) for a in _bench_subnets(space, n_subnets, seed)]
    path = _standalone_path(work, C, N, size, epochs, per_class, val_per_class, batch_size, lr)
    runs = [(s, key) for s in range(seeds) for key in (archs[::-1] if reverse else archs)]
    for s, key in runs[shard[0]::shard[1]]:
        sa = _locked_rows(path)
        if ((sa["arch"] == key) & (sa["seed"] == s)).any():
            continue
        torch.manual_seed(s)
        t = time.perf_counter()
        net = train_standalone(space.build(space.from_string(key)).to(device), train,
                               TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, hflip=True, seed=s))
        acc = accuracy(net, val)
        row = {"arch": key, "seed": s, "acc": acc, "seconds": time.perf_counter() - t}
        _locked_rows(path, row)
        click.echo(f"  stand-alone seed {s} {key}  {acc:5.2f}  ({row['seconds']:.0f} s)")
    sa = _locked_rows(path).drop_duplicates(["arch", "seed"])
    return sa[sa["arch"].isin(archs) & (sa["seed"] < seeds)]


def _trained_bench_supernet(work: Path, space, train, C: int, N: int, size: int, sn_pc: int, supernet_epochs: float,
                            sampling: str, n_random: int, lr: float, seed: int, device: str, batch_size: int,
                            few_shot_edge: int | None, few_shot_epochs: float, few_shot_lr: float,
                            few_shot_ops: Sequence[str] | None):
    """The benchmark's supernet, trained (or resumed, or loaded) from its checkpoint under ``work``
    and, with ``few_shot_edge``, split into fine-tuned parts. Returns ``(supernet, tag, info,
    paths per step, training seconds, few-shot seconds)``, or None when ``few_shot_ops`` trained
    only some parts."""
    from search.accuracy.supernet import FewShotNB201Supernet, TrainConfig, build_supernet
    cfg_s = TrainConfig(epochs=supernet_epochs, batch_size=batch_size, lr=lr, n_random=n_random, sampling=sampling,
                        hflip=True, checkpoint_every=100, seed=seed)
    paths = cfg_s.paths_per_step(space)
    sn = build_supernet(space).to(device)
    tag = f"nb201_C{C}N{N}_r{size}_pc{sn_pc}_e{supernet_epochs}_{sampling}{paths}_lr{lr}{_recipe_tag(batch_size)}"
    info = sn.fit(train, cfg_s, checkpoint=work / f"{tag}.pt", log=lambda m: click.echo("  supernet " + m))
    timing = work / f"{tag}.seconds.json"  # the training time of the run that built the checkpoint
    if info["resumed_from"] == 0:
        timing.write_text(json.dumps({"seconds": info["seconds"]}))
    train_s = json.loads(timing.read_text())["seconds"] if timing.exists() else None
    click.echo(f"supernet: {info['steps']} steps ({supernet_epochs} epochs x {paths} paths, sampling={sampling}), "
               f"{info['seconds']:.0f} s this run")
    few_shot_s = None
    if few_shot_edge is not None:  # split the trained supernet on one edge and fine-tune the parts
        fs = FewShotNB201Supernet(sn, few_shot_edge)
        cfg_f = dataclasses.replace(cfg_s, epochs=few_shot_epochs, lr=few_shot_lr)
        ftag = f"{tag}_fs{few_shot_edge}_e{few_shot_epochs}_lr{few_shot_lr}"
        parts = fs.fit(train, cfg_f, checkpoint=work / f"{ftag}.pt", ops=few_shot_ops,
                       log=lambda m: click.echo("  few-shot " + m))
        def part_timing(op: str) -> Path:  # one file per part: processes training parts side by side never share one
            return work / f"{ftag}_{op}.seconds.json"
        for op, part in parts.items():
            if part["resumed_from"] == 0:
                part_timing(op).write_text(json.dumps({"seconds": part["seconds"]}))
        if few_shot_ops:  # only some parts trained here (other processes train the rest)
            return None
        times = [json.loads(part_timing(op).read_text())["seconds"] for op in fs.parts if part_timing(op).exists()]
        few_shot_s = sum(times) if len(times) == len(fs.parts) else None
        sn, tag = fs, ftag
    return sn, tag, info, paths, train_s, few_shot_s


def run_supernet(cache: Path, n_subnets: int, per_class: int, val_per_class: int, size: int, C: int, N: int,
                 supernet_epochs: float, standalone_epochs: float, standalone_seeds: int, sampling: str = "fair",
                 n_random: int = 2, lr: float = 0.05, calib_images: int = 2000, seed: int = 0,
                 with_standalone: bool = True, supernet_per_class: int | None = None, device: str = "cpu",
                 batch_size: int = 64, standalone_lr: float = 0.05, few_shot_edge: int | None = None,
                 few_shot_epochs: float = 15.0, few_shot_lr: float = 0.02,
                 few_shot_ops: Sequence[str] | None = None) -> dict:
    """Supernet ranking: inherited-weight accuracy vs stand-alone training on a CIFAR-10 subset,
    and both against NB201's 200-epoch ``val_acc`` of the same cells."""
    from search.spaces import get_space
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    work = cache / "supernet"
    work.mkdir(parents=True, exist_ok=True)
    data = _supernet_data(cache, per_class, val_per_class, size, seed)  # the stand-alone runs' data
    sn_pc = supernet_per_class or per_class
    train, val = data if sn_pc == per_class else _supernet_data(cache, sn_pc, val_per_class, size, seed)
    space = get_space("nb201", C=C, N=N, resolution=size)
    archs = _bench_subnets(space, n_subnets, seed)
    trained = _trained_bench_supernet(work, space, train, C, N, size, sn_pc, supernet_epochs, sampling, n_random, lr,
                                      seed, device, batch_size, few_shot_edge, few_shot_epochs, few_shot_lr, few_shot_ops)
    if trained is None:  # only some few-shot parts trained here (other processes train the rest)
        return {}
    sn, tag, info, paths, train_s, few_shot_s = trained
    rows = []
    for a in archs:
        t = time.perf_counter()
        acc_sn = sn.evaluate(a, val, calib=train, calib_images=calib_images)
        rows.append({"arch": space.to_string(a), "supernet_acc": acc_sn, "eval_s": time.perf_counter() - t})
    df = pd.DataFrame(rows)
    if with_standalone:
        sa = run_standalone(cache, n_subnets, per_class, val_per_class, size, C, N, standalone_epochs,
                            standalone_seeds, data=data, seed=seed, device=device, batch_size=batch_size,
                            lr=standalone_lr)
        df["standalone_acc"] = df["arch"].map(sa.groupby("arch")["acc"].mean())
        for s in range(standalone_seeds):
            df[f"standalone_seed{s}"] = df["arch"].map(sa[sa["seed"] == s].set_index("arch")["acc"])
    for r in df.itertuples():
        click.echo(f"  {r.arch}  supernet {r.supernet_acc:5.2f}" +
                   (f"  stand-alone {r.standalone_acc:5.2f}" if with_standalone else "") + f"  eval {r.eval_s:.1f} s")
    nb = pd.read_csv(NB201_CSV, usecols=["arch", "val_acc"])
    df = df.merge(nb, on="arch", how="left")

    def tau(a: str, b: str) -> float:
        return float(kendalltau(df[a], df[b]).statistic)

    res = {
        "subnets": len(df), "supernet_train_images": len(train), "standalone_train_images": len(data[0]),
        "val_images": len(val), "image_size": size,
        "space": f"nb201 C={C} N={N}", "supernet_epochs": supernet_epochs, "supernet_steps": info["steps"],
        "sampling": sampling, "paths_per_step": paths, "lr": lr, "batch_size": batch_size,
        "calib_images": calib_images, "device": str(torch.device(device)) + (
            f" ({torch.cuda.get_device_name(device)})" if torch.device(device).type == "cuda" else ""),
        "kendall_supernet_vs_nb201": tau("supernet_acc", "val_acc"),
        "eval_seconds_mean": float(df["eval_s"].mean()), "supernet_train_seconds": train_s,
    }
    if few_shot_edge is not None:
        res.update({"few_shot_edge": few_shot_edge, "few_shot_epochs": few_shot_epochs, "few_shot_lr": few_shot_lr,
                    "few_shot_train_seconds": few_shot_s})
    if with_standalone:
        res.update({
            "standalone_epochs": standalone_epochs, "standalone_seeds": standalone_seeds, "standalone_lr": standalone_lr,
            "kendall_supernet_vs_standalone": tau("supernet_acc", "standalone_acc"),
            "kendall_standalone_vs_nb201": tau("standalone_acc", "val_acc"),
            "standalone_seconds_mean": float(sa["seconds"].astype(float).mean())})
    if with_standalone and standalone_seeds >= 2:  # how well the reference agrees with itself
        res["kendall_standalone_seed0_vs_seed1"] = tau("standalone_seed0", "standalone_seed1")
        res["kendall_supernet_vs_standalone_seed0"] = tau("supernet_acc", "standalone_seed0")
        res["kendall_supernet_vs_standalone_seed1"] = tau("supernet_acc", "standalone_seed1")
    (work / f"result_{tag}.json").write_text(json.dumps(res, indent=1))
    df.to_csv(work / f"subnets_{tag}.csv", index=False)
    if with_standalone:  # what 'report' prints
        (work / "result.json").write_text(json.dumps(res, indent=1))
        df.to_csv(work / "subnets.csv", index=False)
    click.echo(json.dumps(res, indent=1))
    return res


def run_supernet_weight(cache: Path, cells: int, per_class: int, size: int, C: int, N: int, supernet_epochs: float,
                        lr: float, calib_images: int, val_images: int, weights: Sequence[float], device: str,
                        few_shot_edge: int | None, few_shot_epochs: float, few_shot_lr: float,
                        seed: int = 0) -> pd.DataFrame:
    """How much the supernet should weigh in the unsupervised rank ensemble: the benchmark
    supernet's inherited-weight accuracy on ``cells`` random NB201 cells joins the reference
    table's ``jacov`` and ``params`` (the default ensemble, each weighted 1/2) with each weight of
    ``weights``; Spearman and Kendall with NB201's ``val_acc``, on all cells and on the top 20 %
    by ``val_acc`` (where a search's choice is made)."""
    from search.accuracy.estimator import RankEnsemble
    from search.spaces import get_space
    torch.set_num_threads(1)
    work = cache / "supernet"
    work.mkdir(parents=True, exist_ok=True)
    train, val = _supernet_data(cache, per_class, 1000, size, 0)
    val = val.subset(np.random.default_rng(seed).permutation(len(val))[:val_images])
    space = get_space("nb201", C=C, N=N, resolution=size)
    sn, tag, *_ = _trained_bench_supernet(work, space, train, C, N, size, per_class, supernet_epochs, "fair", 2, lr,
                                          0, device, 64, few_shot_edge, few_shot_epochs, few_shot_lr, None)
    ref = pd.read_csv(ZC_CSV, usecols=["arch", "jacov", "params"]).drop_duplicates("arch")
    ref = ref.merge(pd.read_csv(NB201_CSV, usecols=["arch", "val_acc"]), on="arch")
    live = ref["arch"].map(lambda k: space.is_fully_reachable(space.from_string(k)))
    ref = ref[live].sample(cells, random_state=seed).rename(columns={"jacov": "jacob_cov"})
    path = work / f"cells_{tag}_c{calib_images}_v{val_images}.csv"  # resumable: one row per scored cell
    done = set(pd.read_csv(path)["arch"]) if path.exists() else set()
    t0, n = time.perf_counter(), 0
    with path.open("a") as f:
        if not done:
            f.write("arch,supernet_acc\n")
        for key in ref["arch"]:
            if key in done:
                continue
            acc = sn.evaluate(space.from_string(key), val, calib=train, calib_images=calib_images)
            f.write(f"{key},{acc}\n")
            f.flush()
            n += 1
            if n % 100 == 0:
                click.echo(f"  {n} cells scored ({(time.perf_counter() - t0) / n:.2f} s each)")
    df = ref.merge(pd.read_csv(path).drop_duplicates("arch"), on="arch")
    top = df["val_acc"] >= df["val_acc"].quantile(0.8)
    cols = ["jacob_cov", "params", "supernet_acc"]
    click.echo(f"{len(df)} random NB201 cells, supernet {tag} ({calib_images} calibration images, {len(val)} test "
               f"images); the supernet alone: Spearman {spearmanr(df['supernet_acc'], df['val_acc']).statistic:.3f}, "
               f"Kendall {kendalltau(df['supernet_acc'], df['val_acc']).statistic:.3f}")
    click.echo("| supernet weight (proxies: 1/2 each) | Spearman | Kendall | Kendall, top 20 % |")
    click.echo("| --- | --- | --- | --- |")
    rows = []
    for w in weights:
        ens = RankEnsemble(cols, [0.5, 0.5, w]).fit(df[cols])
        score = ens.predict(df[cols])
        row = {"weight": w, "spearman": spearmanr(score, df["val_acc"]).statistic,
               "kendall": kendalltau(score, df["val_acc"]).statistic,
               "kendall_top20": kendalltau(score[top.to_numpy()], df.loc[top, "val_acc"]).statistic}
        rows.append(row)
        click.echo(f"| {w:g} | {row['spearman']:.3f} | {row['kendall']:.3f} | {row['kendall_top20']:.3f} |")
    return pd.DataFrame(rows)


def _use_shared(root: Path) -> None:
    """Point the benchmark at another copy of the reference data (e.g. one carried to a GPU machine)."""
    global SHARED, NB201_CSV, ZC_CSV, CIFAR_TGZ
    SHARED = root / "data"
    NB201_CSV = SHARED / "nb201" / "nb201_cifar10.csv"
    ZC_CSV = SHARED / "nb201" / "nb201_zc_proxies_cifar10.csv"
    CIFAR_TGZ = SHARED / "cifar10" / "cifar10-jpeg.tar.gz"


@click.group()
@click.option("--shared", type=click.Path(path_type=Path, file_okay=False), default=SHARED.parent, show_default=True,
              help="the reference data folder (see ../shared/README.md)")
@click.pass_context
def main(ctx: click.Context, shared: Path) -> None:
    """Accuracy-estimation benchmarks (see the module docstring)."""
    _use_shared(shared)
    _need_shared(ctx.invoked_subcommand)


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path("/tmp/hwnas-accbench"), show_default=True)
@click.option("--cells", default=1000, show_default=True, help="NB201 cells (from the reference proxy table)")
@click.option("--grasp-cells", default=100, show_default=True, help="grasp (the costliest proxy) on the first N cells only")
@click.option("--batch", default=64, show_default=True)
@click.option("--budget-s", default=1e9, help="stop computing after this many seconds (cached rows are kept)")
def proxies(cache: Path, cells: int, grasp_cells: int, batch: int, budget_s: float) -> None:
    """Compute (or complete) the cached proxies, then print the report."""
    run_proxies(cache, cells, grasp_cells, batch, budget_s)
    proxy_report(cache, batch, cells)


def _subnet_options(f):
    opts = [
        click.option("--cache", type=click.Path(path_type=Path), default=Path("/tmp/hwnas-accbench"), show_default=True),
        click.option("--subnets", default=20, show_default=True),
        click.option("--per-class", default=1000, show_default=True, help="CIFAR-10 training images per class"),
        click.option("--val-per-class", default=1000, show_default=True,
                     help="test-split images per class for evaluation (1000 = all 10,000)"),
        click.option("--size", default=16, show_default=True, help="image size (CIFAR-10 is resized)"),
        click.option("--C", "C", default=8, show_default=True),
        click.option("--N", "N", default=1, show_default=True),
        click.option("--standalone-epochs", default=12.0, show_default=True),
        click.option("--standalone-seeds", default=2, show_default=True, help="stand-alone runs per subnet (averaged)"),
        click.option("--device", default="cpu", show_default=True, help="torch device for training and evaluation "
                     "(e.g. cuda)"),
        click.option("--batch-size", default=64, show_default=True, help="training batch (supernet and stand-alone)"),
        click.option("--standalone-lr", default=0.05, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.command()
@_subnet_options
@click.option("--supernet-epochs", default=30.0, show_default=True)
@click.option("--sampling", type=click.Choice(["uniform", "fair"]), default="fair", show_default=True)
@click.option("--n-random", default=2, show_default=True, help="uniform sampling: n_random + 2 paths per step")
@click.option("--lr", default=0.05, show_default=True)
@click.option("--calib-images", default=2000, show_default=True, help="BN recalibration images per subnet")
@click.option("--no-standalone", is_flag=True, help="train and score the supernet only (Kendall vs NB201 val_acc)")
@click.option("--supernet-per-class", type=int, default=None, help="supernet training images per class "
              "(default: --per-class)")
@click.option("--few-shot-edge", type=int, default=None, help="split the trained supernet on this edge (0-5) into "
              "one sub-supernet per op (few-shot NAS) and score subnets with them")
@click.option("--few-shot-epochs", default=15.0, show_default=True, help="fine-tuning epochs of each sub-supernet")
@click.option("--few-shot-lr", default=0.02, show_default=True)
@click.option("--few-shot-ops", default=None, help="comma-separated: train only these sub-supernets and stop "
              "(to train the parts in several processes; a last run without it scores)")
def supernet(cache: Path, subnets: int, per_class: int, val_per_class: int, size: int, C: int, N: int,
             standalone_epochs: float, standalone_seeds: int, device: str, batch_size: int, standalone_lr: float,
             supernet_epochs: float, sampling: str, n_random: int, lr: float, calib_images: int, no_standalone: bool,
             supernet_per_class: int | None, few_shot_edge: int | None, few_shot_epochs: float, few_shot_lr: float,
             few_shot_ops: str | None) -> None:
    """Kendall tau between inherited-weight and stand-alone accuracies of NB201 subnets."""
    run_supernet(cache, subnets, per_class, val_per_class, size, C, N, supernet_epochs, standalone_epochs,
                 standalone_seeds, sampling, n_random, lr, calib_images, with_standalone=not no_standalone,
                 supernet_per_class=supernet_per_class, device=device, batch_size=batch_size,
                 standalone_lr=standalone_lr, few_shot_edge=few_shot_edge, few_shot_epochs=few_shot_epochs,
                 few_shot_lr=few_shot_lr, few_shot_ops=few_shot_ops.split(",") if few_shot_ops else None)


@main.command()
@_subnet_options
@click.option("--reverse", is_flag=True, help="walk the subnets backwards (to run a second process beside a first)")
@click.option("--shard", default="0/1", show_default=True, help="K/N: train only every N-th run from the K-th "
              "(N processes side by side, e.g. on one GPU)")
@click.option("--report-only", is_flag=True, help="train nothing; summarise the cached runs (also incomplete seeds)")
@click.option("--supernet-csv", type=click.Path(path_type=Path), default=None,
              help="a subnets_*.csv of a supernet run, to score against each seed on the subnets it has")
def standalone(cache: Path, subnets: int, per_class: int, val_per_class: int, size: int, C: int, N: int,
               standalone_epochs: float, standalone_seeds: int, device: str, batch_size: int, standalone_lr: float,
               reverse: bool, shard: str, report_only: bool, supernet_csv: Path | None) -> None:
    """Only the stand-alone reference of the supernet benchmark (cached; 'supernet' reuses it)."""
    if report_only:
        from search.spaces import get_space
        space = get_space("nb201", C=C, N=N, resolution=size)
        archs = [space.to_string(a) for a in _bench_subnets(space, subnets)]
        sa = _locked_rows(_standalone_path(cache / "supernet", C, N, size, standalone_epochs, per_class, val_per_class,
                                           batch_size, standalone_lr))
        sa = sa[sa["arch"].isin(archs) & (sa["seed"] < standalone_seeds)].drop_duplicates(["arch", "seed"])
    else:
        k, n = (int(v) for v in shard.split("/"))
        sa = run_standalone(cache, subnets, per_class, val_per_class, size, C, N, standalone_epochs, standalone_seeds,
                            reverse=reverse, device=device, batch_size=batch_size, lr=standalone_lr, shard=(k, n))
    nb = pd.read_csv(NB201_CSV, usecols=["arch", "val_acc"]).set_index("arch")["val_acc"]
    wide = sa.pivot(index="arch", columns="seed", values="acc")
    sn = pd.read_csv(supernet_csv).set_index("arch")["supernet_acc"] if supernet_csv else None
    for s in wide.columns:
        col = wide[s].dropna()
        line = f"stand-alone seed {s} ({standalone_epochs} epochs, {len(col)} subnets): Kendall with NB201 val_acc " \
               f"{kendalltau(col, nb[col.index]).statistic:.3f}"
        if sn is not None:
            line += f", with the supernet {kendalltau(col, sn[col.index]).statistic:.3f}"
        click.echo(line)
    if wide.shape[1] >= 2:
        both = wide.dropna()
        mean = both.mean(axis=1)
        click.echo(f"on the {len(both)} subnets with seeds 0 and 1: seed 0 vs seed 1 Kendall "
                   f"{kendalltau(both[0], both[1]).statistic:.3f}; their mean vs NB201 val_acc "
                   f"{kendalltau(mean, nb[mean.index]).statistic:.3f}" +
                   ("" if sn is None else f"; supernet vs seed 0 {kendalltau(sn[both.index], both[0]).statistic:.3f}, "
                    f"vs seed 1 {kendalltau(sn[both.index], both[1]).statistic:.3f}, "
                    f"vs their mean {kendalltau(sn[both.index], mean).statistic:.3f}; "
                    f"supernet vs NB201 val_acc {kendalltau(sn[both.index], nb[both.index]).statistic:.3f}"))


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path("/tmp/hwnas-accbench"), show_default=True)
@click.option("--batch", default=64, show_default=True)
def report(cache: Path, batch: int) -> None:
    """Print every figure from the caches."""
    res = {"proxies": proxy_report(cache, batch)}
    sn = cache / "supernet" / "result.json"
    if sn.exists():
        res["supernet"] = json.loads(sn.read_text())
        click.echo(json.dumps(res["supernet"], indent=1))
    runs = sorted((cache / "supernet").glob("result_*.json"))
    if runs:  # every supernet variant scored on the same subnets
        click.echo("supernet variants (Kendall tau on the same subnets; '-' = not scored against stand-alone):")
        for f in runs:
            r = json.loads(f.read_text())
            sa = r.get("kendall_supernet_vs_standalone")
            few = f" + few-shot on edge {r['few_shot_edge']} ({r['few_shot_epochs']:g} epochs)" if "few_shot_edge" in r else ""
            click.echo(f"  {r['subnets']} subnets, {r['space']} at {r['image_size']}px{few}, {r.get('device', 'cpu')}: "
                       f"{r['sampling']:>7} x{r['paths_per_step']} paths, {r['supernet_epochs']:g} epochs on "
                       f"{r['supernet_train_images']} images, lr {r['lr']}: vs stand-alone "
                       f"{'-' if sa is None else f'{sa:.3f}'} (stand-alone {r.get('standalone_epochs', '-')} epochs x "
                       f"{r.get('standalone_seeds', '-')} seeds), vs NB201 val_acc {r['kendall_supernet_vs_nb201']:.3f}")


@main.command("supernet-weight")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("/tmp/hwnas-accbench"), show_default=True)
@click.option("--cells", default=1000, show_default=True, help="random NB201 cells (all edges live)")
@click.option("--per-class", default=1000, show_default=True, help="CIFAR-10 training images per class")
@click.option("--size", default=16, show_default=True)
@click.option("--C", "C", default=8, show_default=True)
@click.option("--N", "N", default=1, show_default=True)
@click.option("--supernet-epochs", default=30.0, show_default=True)
@click.option("--lr", default=0.05, show_default=True)
@click.option("--calib-images", default=500, show_default=True, help="BN recalibration images per cell")
@click.option("--val-images", default=3000, show_default=True, help="test-split images each cell is scored on")
@click.option("--weights", default="0,0.25,0.5,1,2", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--few-shot-edge", type=int, default=None)
@click.option("--few-shot-epochs", default=15.0, show_default=True)
@click.option("--few-shot-lr", default=0.02, show_default=True)
@click.option("--seed", default=0, show_default=True, help="which cells and test images")
def supernet_weight(cache: Path, cells: int, per_class: int, size: int, C: int, N: int, supernet_epochs: float,
                    lr: float, calib_images: int, val_images: int, weights: str, device: str,
                    few_shot_edge: int | None, few_shot_epochs: float, few_shot_lr: float, seed: int) -> None:
    """The supernet's weight in the rank ensemble: each weight's agreement with NB201 val_acc."""
    run_supernet_weight(cache, cells, per_class, size, C, N, supernet_epochs, lr, calib_images, val_images,
                        [float(w) for w in weights.split(",")], device, few_shot_edge, few_shot_epochs,
                        few_shot_lr, seed)


@main.command("supervised-dev")
@click.option("--reps", default=10, show_default=True)
def supervised_dev(reps: int) -> None:
    """The supervised estimators on 1,000 reference cells outside the benchmark's (reference proxies)."""
    supervised_dev_check(reps=reps)


if __name__ == "__main__":
    main()
