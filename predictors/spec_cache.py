"""The batch path's cache: kernel specs and candidates keyed by value.

A search asks for the same kernels and the same candidates again and again. Each distinct
KernelSpec (equal kind and parameters, whichever object carries them) gets one row index and
one additive graph row (`features.additive_row` summed over a block's kernels); a candidate is
keyed by the tuple of its specs' row indices, so an equal candidate built from new objects hits
the cache too.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np

from profiling.kernels import KernelSpec

from .errors import PredictorError

MAX_CANDIDATES = 2_000_000  # bound on cached candidate predictions; the spec rows stay


class SpecCache:
    def __init__(self, width: int):
        self.width = width
        self.index_of: dict[KernelSpec, int] = {}
        self.rows = np.zeros((0, width))   # additive graph row per spec
        self.peak = np.zeros(0)            # largest activation per spec
        self.kms = np.zeros(0)             # kernel ms per spec (before the run overhead)
        self.clear_predictions()

    def clear_predictions(self) -> None:
        """Forget cached candidate predictions (after the graph model or the adapters change)."""
        self.pred_index: dict[tuple[int, ...], int] = {}
        self.preds = np.zeros((0, 3))

    def index(self, specs: Iterable[KernelSpec], pending: list[KernelSpec]) -> list[int]:
        """Row index of each spec; specs seen for the first time are appended to `pending`
        (the caller computes their rows and `append`s them in that order)."""
        get = self.index_of.get
        if not isinstance(specs, (list, tuple)):
            specs = list(specs)
        out: list[int] = []
        n0 = len(self.rows)
        for s in specs:
            i = get(s) if isinstance(s, KernelSpec) else None
            if i is None:
                if not isinstance(s, KernelSpec):
                    raise PredictorError(f"candidate element {s!r} is not a KernelSpec")
                i = n0 + len(pending)
                self.index_of[s] = i
                pending.append(s)
            out.append(i)
        return out

    def append(self, rows: np.ndarray, peak: np.ndarray, kms: np.ndarray) -> None:
        self.rows = np.vstack([self.rows, rows])
        self.peak = np.concatenate([self.peak, peak])
        self.kms = np.concatenate([self.kms, kms])

    def sums(self, cand_indices: Sequence[Sequence[int]],
             extra_rows: list[tuple[int, tuple[np.ndarray, float]]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(summed additive rows, peak activation) per candidate; extra_rows adds (candidate, (row, out))."""
        lens = np.fromiter(map(len, cand_indices), np.int64, len(cand_indices))
        if (lens == 0).any():
            raise PredictorError(f"candidate {int(np.argmax(lens == 0))} has no kernel specs")
        flat = np.fromiter(itertools.chain.from_iterable(cand_indices), dtype=np.int64, count=int(lens.sum()))
        indptr = np.concatenate([[0], np.cumsum(lens)])
        if len(flat) > 20000:  # a sparse count matrix times the unique rows: no [len(flat), cols] gather
            from scipy.sparse import csr_matrix  # lazy: scipy.sparse costs ~0.2 s to import; small batches never need it
            M = csr_matrix((np.ones(len(flat)), flat, indptr), shape=(len(lens), len(self.rows)))
            sums = np.asarray(M @ self.rows)
        else:
            sums = np.add.reduceat(self.rows[flat], indptr[:-1], axis=0)
        peak = np.maximum.reduceat(self.peak[flat], indptr[:-1])
        if extra_rows:
            for ci, (row, out) in extra_rows:
                sums[ci] += row
                peak[ci] = max(peak[ci], out)
        return sums, peak

    # ---- candidate predictions ------------------------------------------------------------
    def lookup(self, keys: Sequence[tuple[int, ...]]) -> list[int | None]:
        return list(map(self.pred_index.get, keys))

    def store(self, todo: dict[tuple[int, ...], int], preds: np.ndarray) -> None:
        """Remember the (median, low, high) rows `preds` of the candidates `todo` maps to them."""
        if len(self.pred_index) > MAX_CANDIDATES:
            self.clear_predictions()
        start = len(self.preds)
        self.preds = np.vstack([self.preds, preds])
        for k, j in todo.items():
            self.pred_index[k] = start + j


__all__ = ["SpecCache"]
