"""Out-of-distribution detection: how well each score the model offers separates the held-out split (in)
from images of other kinds (out).

The out sets, each as many images as the in set, built from a seed (so every run scores the same images):
    uniform      pixels U(-1, 1)
    gaussian     pixels N(0, 0.5²), clipped to [-1, 1]
    constant     one random grey level per image
    inverted     -Y of held-out images (the negative)
    blurred      held-out images under a Gaussian blur of 1.5 px
    digits       scikit-learn's 8x8 digits resized to the model's size (a dataset of another kind)
    npz:PATH     any array the user gives (--ood npz:PATH, read as coop-train reads npz:PATH)
The in and out images of the "inverted" and "blurred" sets are disjoint held-out images.

Metrics, out = positive, higher score = more out of distribution: AUROC, AUPR (average precision) and the
FPR at 95% TPR: the fraction of in-distribution images flagged at the threshold that flags 95% of the out
set (lower is better).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Separation:
    score: str
    out_set: str
    n_in: int
    n_out: int
    auroc: float
    aupr: float
    fpr95: float

    def to_dict(self) -> dict:
        return asdict(self)


def out_sets(heldout: np.ndarray, spare: np.ndarray, seed: int, extra: dict[str, np.ndarray] | None = None):
    """The out sets for in-distribution `heldout` (N, C, H, W) in [-1, 1]; `spare` (N, C, H, W) are other
    held-out images, the sources of the inverted and blurred sets. `extra`: name -> (M, C, H, W) images."""
    from scipy.ndimage import gaussian_filter

    n, (c, h, w) = len(heldout), heldout.shape[1:]
    rng = np.random.default_rng(seed)
    sets = {
        "uniform": rng.uniform(-1, 1, (n, c, h, w)),
        "gaussian": np.clip(rng.normal(0.0, 0.5, (n, c, h, w)), -1, 1),
        "constant": np.broadcast_to(rng.uniform(-1, 1, (n, 1, 1, 1)), (n, c, h, w)),
        "inverted": -spare[:n],
        "blurred": gaussian_filter(spare[:n], sigma=(0, 0, 1.5, 1.5)),  # blur each plane, not across
        "digits": digits_like(n, (c, h, w)),
    }
    sets.update(extra or {})
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sets.items()}


def digits_like(n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The first n of scikit-learn's 8x8 digits, fitted to (C, H, W) as coop-train fits --dataset digits."""
    from contract.codec import from_uint8
    from trainer.data import load_images

    c, h, _ = shape
    return from_uint8(load_images("digits", size=h, channels=c, max_images=n))


def separation(score: str, out_set: str, s_in: np.ndarray, s_out: np.ndarray) -> Separation:
    """AUROC, AUPR and FPR at 95% TPR of `score` (higher = more out) between the two sets."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in, s_out = _finite(s_in), _finite(s_out)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    threshold = np.quantile(s_out, 0.05)  # flags 95% of the out set (s >= threshold)
    return Separation(
        score,
        out_set,
        len(s_in),
        len(s_out),
        float(roc_auc_score(y, s)),
        float(average_precision_score(y, s)),
        float(np.mean(s_in >= threshold)),
    )


def _finite(s: np.ndarray) -> np.ndarray:
    """Scores as float64 with ±inf and NaN (a diverged chain) mapped to the largest finite values: an image
    whose score blew up is as out of distribution as any."""
    s = np.asarray(s, dtype=np.float64)
    return np.nan_to_num(s, nan=np.finfo(np.float64).max, posinf=np.finfo(np.float64).max,
                         neginf=np.finfo(np.float64).min)  # fmt: skip


# ---- the candidate scores ----------------------------------------------------------------------------------

# the latent candidate: noise-free latent Langevin with every pixel seen
LATENT_STEPS, LATENT_STEP_SIZE = 20, 0.02
DISPLACEMENT_STEPS = 5  # the displacement candidate: noise-free descriptor Langevin steps at the bundle's δ


def candidate_scores(engine, images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every score the model offers for `images` (N, C, H, W), higher = more out of distribution, each (N,):

    ood           the bundle's typicality score (Energy's `ood`; absent for bundles without it)
    E(Y)          ‖Y‖²/(2s²) − f(Y)
    -f(Y)         the descriptor alone
    latent U      min over X of U(X) after latent inference on all pixels (the generator's opinion)
    displacement  ‖Y_K − Y‖ after K noise-free descriptor Langevin steps (how hard the descriptor pulls)
    """
    from contract import sampling
    from contract.sampling import CompletionParams

    energy, f = engine.energy(images)
    out = {}
    ood = engine.ood(images)
    if ood is not None:
        out["ood (typicality)"] = ood
    out["E(Y)"], out["-f(Y)"] = energy, -f
    mask = np.zeros_like(images)  # nothing missing: X explains the whole image
    params = CompletionParams(
        latent_steps=LATENT_STEPS,
        latent_step_size=LATENT_STEP_SIZE,
        latent_noise=False,
        refine_steps=0,
        refine_step_size=engine.bundle.langevin.delta,
        noise=False,
        restarts=1,
    )
    rngs = sampling.rngs_for(range(seed, seed + len(images)))
    z = sampling.run(sampling.latent_steps(engine.backend, images, mask, rngs, params))  # (N, d)
    out["latent U"] = engine.backend.latent_grad(z, images, mask)[1]
    y = sampling.run(
        sampling.langevin_steps(
            engine.backend, images, None, rngs, DISPLACEMENT_STEPS, engine.bundle.langevin.delta, False
        )
    )
    out["displacement"] = np.sqrt(((y - images) ** 2).reshape(len(images), -1).sum(1))
    return out


def evaluate_ood(engine, heldout, spare, seed: int, extra=None, batch: int = 250, progress: bool = True):
    """Separation of every candidate score on every out set: a list of Separation, scores in the order of
    candidate_scores, out sets in the order of out_sets."""
    from tqdm import tqdm

    sets = out_sets(heldout, spare, seed, extra)

    def score(x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [candidate_scores(engine, x[i : i + batch], seed + i) for i in range(0, len(x), batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    bar = tqdm(total=len(sets) + 1, desc="ood sets", disable=not progress)
    s_in = score(heldout)
    bar.update()
    rows = []
    for name, images in sets.items():
        s_out = score(images)
        bar.update()
        rows += [separation(k, name, s_in[k], s_out[k]) for k in s_in]
    bar.close()
    return rows


def table(rows: list[Separation]) -> str:
    """Markdown: one row per score, AUROC / AUPR / FPR95 per out set, and the worst AUROC."""
    sets = list(dict.fromkeys(r.out_set for r in rows))
    scores = list(dict.fromkeys(r.score for r in rows))
    by = {(r.score, r.out_set): r for r in rows}
    head = ["score", *sets, "worst AUROC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scores:
        cells = [f"{by[s, o].auroc:.3f} / {by[s, o].aupr:.3f} / {by[s, o].fpr95:.2f}" for o in sets]
        worst = min(by[s, o].auroc for o in sets)
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {worst:.3f} |")
    return "\n".join(lines)
