"""How well inferred task ids match the games played: agreement, switch detection, extra tasks."""
from __future__ import annotations

from collections import Counter

import numpy as np


def adjusted_rand_index(truth: np.ndarray, labels: np.ndarray) -> float:
    """Hubert & Arabie's ARI: pair-counting agreement of two partitions, 0 for chance, 1 for identical."""
    return adjusted_rand_index_of(contingency_table(truth, labels))


def contingency_table(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(true classes, labels) counts, rows and columns in sorted order of the values."""
    _, truth_ids = np.unique(truth, return_inverse=True)
    _, label_ids = np.unique(labels, return_inverse=True)
    table = np.zeros((truth_ids.max() + 1, label_ids.max() + 1))
    np.add.at(table, (truth_ids, label_ids), 1)
    return table


def adjusted_rand_index_of(table: np.ndarray) -> float:
    """The ARI of a contingency table (e.g. a run's confusion matrix of inferred id vs game played)."""
    table = np.asarray(table, dtype=np.float64)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    together_in_both = pairs(table)
    together_in_truth, together_in_labels = pairs(table.sum(1)), pairs(table.sum(0))
    expected = together_in_truth * together_in_labels / pairs(np.array([table.sum()]))
    best = (together_in_truth + together_in_labels) / 2
    if best == expected:  # one class and one label: the partitions agree
        return 1.0
    return (together_in_both - expected) / (best - expected)


def majority_ids(truth: np.ndarray, labels: np.ndarray) -> dict:
    """Each true class's most frequent label."""
    return {value: Counter(labels[truth == value].tolist()).most_common(1)[0][0] for value in dict.fromkeys(truth.tolist())}


def detection_delays(truth: np.ndarray, labels: np.ndarray, horizon: int = 2000) -> list[int]:
    """Frames from each switch of `truth` until the label becomes the new class's majority label
    (`horizon` when it does not within that many frames)."""
    majority = majority_ids(truth, labels)
    delays = []
    for switch in np.nonzero(truth[1:] != truth[:-1])[0] + 1:
        hits = np.nonzero(labels[switch:switch + horizon] == majority[truth[switch]])[0]
        delays.append(int(hits[0]) if len(hits) else horizon)
    return delays
