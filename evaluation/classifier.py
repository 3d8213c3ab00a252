"""The feature classifier: a small ConvNet trained once on a dataset's train split, whose penultimate layer is
the feature space of the Fréchet distance, KID and precision/recall, and whose predictions give the class
histogram.

Why not Inception: its ImageNet features know little about 28×28 grey clothing, and it needs weights from the
internet. A classifier trained on the same data (as in the MNIST/Fashion-MNIST literature) is small, trains in
a minute or two on a CPU, and is cached: `cache_dir/classifier-<key>.pt`, where the key hashes the training
images, labels and `ClassifierConfig`, beside a JSON file with the checkpoint's sha256 and the test accuracy.
A cached file whose checksum does not match is retrained, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from coopnets.contract.files import atomic_write, atomic_write_json, sha256_file
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

FEATURE_DIM = 128
VERSION = 1  # bump when the network or training changes: old cache entries are then ignored


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


class FeatureNet(nn.Module):
    """conv 3×3 → 32, pool, conv 3×3 → 64, pool, (7×7) → 128 features → classes. Any C×H×W with H, W ≥ 28."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, H/4, W/4)
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),  # (N, 64·49)
            nn.Linear(64 * 49, FEATURE_DIM), nn.ReLU(),  # (N, 128)
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(y))  # (N, classes) logits


@dataclass
class Classifier:
    """A trained FeatureNet with what identifies it."""

    net: FeatureNet
    num_classes: int
    test_accuracy: float
    sha256: str
    path: Path | None

    @torch.no_grad()
    def features_and_probs(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, 128) and class probabilities (N, K) of images (N, C, H, W) in [-1, 1] (clipped first,
        as a PNG of them would be)."""
        self.net.eval()
        feats, probs = [], []
        for i in range(0, len(images), batch_size):
            batch = np.clip(images[i : i + batch_size], -1, 1).astype(np.float32)
            y = torch.from_numpy(batch)  # (n, C, H, W)
            h = self.net.features(y)  # (n, 128)
            feats.append(h.numpy())
            probs.append(torch.softmax(self.net.head(h), 1).numpy())
        return np.concatenate(feats), np.concatenate(probs)


def _data_key(images: np.ndarray, labels: np.ndarray, config: ClassifierConfig) -> str:
    h = hashlib.sha256()
    cfg = json.dumps(asdict(config), sort_keys=True)
    h.update(f"v{VERSION} {images.shape} {images.dtype} {cfg}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def train_classifier(
    train_images: np.ndarray, train_labels: np.ndarray, config: ClassifierConfig, progress: bool = True
) -> FeatureNet:
    """Adam on cross-entropy for `config.epochs` passes over (N, C, H, W) float images in [-1, 1]."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    num_classes = int(train_labels.max()) + 1
    net = FeatureNet(train_images.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    x_all = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32))  # (N, C, H, W)
    t_all = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))  # (N,)
    steps = config.epochs * int(np.ceil(len(x_all) / config.batch_size))
    net.train()
    with tqdm(total=steps, desc="classifier", disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            order = torch.from_numpy(rng.permutation(len(x_all)))
            for i in range(0, len(order), config.batch_size):
                idx = order[i : i + config.batch_size]
                loss = nn.functional.cross_entropy(net(x_all[idx]), t_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    net.eval()
    return net


def accuracy(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    _, probs = clf.features_and_probs(images)
    return float((probs.argmax(1) == np.asarray(labels)).mean())


def load_or_train(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    cache_dir: str | os.PathLike,
    config: ClassifierConfig = ClassifierConfig(),
    progress: bool = True,
) -> Classifier:
    """The cached classifier for this training data and config, or a freshly trained (and then cached) one."""
    key = _data_key(train_images, train_labels, config)
    path = Path(cache_dir) / f"classifier-{key}.pt"
    meta_path = path.with_suffix(".json")
    num_classes = int(train_labels.max()) + 1
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        digest = sha256_file(path)
        if digest == meta.get("sha256"):
            net = FeatureNet(train_images.shape[1], num_classes)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net.eval()
            log.info("loaded classifier %s (sha256 %s)", path, digest[:12])
            return Classifier(net, num_classes, float(meta["test_accuracy"]), digest, path)
        log.warning("classifier cache %s fails its checksum; retraining", path)

    log.info("training the feature classifier on %d images (then cached in %s)", len(train_images), path)
    net = train_classifier(train_images, train_labels, config, progress)
    atomic_write(path, lambda fh: torch.save(net.state_dict(), fh))
    digest = sha256_file(path)
    clf = Classifier(net, num_classes, 0.0, digest, path)
    clf.test_accuracy = accuracy(clf, test_images, test_labels)
    meta = {"sha256": digest, "test_accuracy": clf.test_accuracy, "train_images": len(train_images),
            "config": asdict(config), "version": VERSION}  # fmt: skip
    atomic_write_json(meta_path, meta)
    return clf
