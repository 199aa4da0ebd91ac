"""On-disk cache of frozen image-encoder features.

With the image encoder frozen, an image's feature under a given transform
never changes, so it is computed once and shared by every trial that uses the
same backbone weights, split and view. View 0 is the deterministic
evaluation transform; views 1..V are random-resized-crop + flip draws whose
randomness is a pure function of (split identity, image index, view), so the
same view is the same pixels in every trial and on every machine.

Files are keyed by a content hash, written atomically, and carry a checksum:
a corrupt or partial file is detected and rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2 as T

from ptlab.data.sources import Split
from ptlab.files import SharedFiles, atomic_save
from ptlab.models.backbone import CLIP_PREPROCESSING, Backbone

CACHE_FORMAT = 1


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Cheap but content-sensitive digest of a model's weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().float().cpu().flatten()
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(np.float64(t.double().sum()).tobytes())
        h.update(np.float64(t.double().abs().sum()).tobytes())
        h.update(t[:64].numpy().tobytes())
    return h.hexdigest()[:16]


INTERPOLATIONS = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                  "nearest": T.InterpolationMode.NEAREST}


def eval_transform(backbone: Backbone, resize: int | None = None, interpolation: str | None = None) -> T.Compose:
    """The backbone's evaluation view: shorter side to image_size (resize mode "shortest"), or the whole
    image to image_size x image_size ("squash"), then the centre crop; its interpolation unless one is given.

    resize=S instead scales the whole image to S x S before the centre crop
    (LPT's release: 256 x 256, crop 224, bilinear).
    """
    size = backbone.image_size
    if resize is None and backbone.resize_mode == "squash":
        resize = size
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(size if resize is None else (resize, resize),
                     interpolation=INTERPOLATIONS[interpolation or backbone.interpolation], antialias=True),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(backbone.mean, backbone.std),
        ]
    )


def train_transform(backbone: Backbone, crop_scale: tuple[float, float], interpolation: str | None = None) -> T.Compose:
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(
                backbone.image_size, scale=crop_scale, interpolation=INTERPOLATIONS[interpolation or backbone.interpolation],
                antialias=True,
            ),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(backbone.mean, backbone.std),
        ]
    )


def _view_seed(identity: str, index: int, view: int) -> int:
    digest = hashlib.sha256(f"{identity}|{index}|{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def load_pixels(split: Split, indices, transform, view: int = 0) -> torch.Tensor:
    """Transformed images; for view > 0 the random transform is seeded per (image, view)."""
    images = []
    for i in indices:
        image = split.images.load(int(i))
        if view == 0:
            images.append(transform(image))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_view_seed(split.images.identity, int(i), view))
                images.append(transform(image))
    return torch.stack(images)


@torch.no_grad()
def encode_images(backbone: Backbone, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    device = next(backbone.model.parameters()).device
    dtype = next(backbone.model.visual.parameters()).dtype
    out = [backbone.model.encode_image(pixels[s : s + batch].to(device, dtype)).float().cpu() for s in range(0, len(pixels), batch)]
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class FeatureCache:
    root: Path
    backbone: Backbone
    crop_scale: tuple[float, float] = (0.08, 1.0)
    images_encoded: int = 0  # encoder work done by this cache object (benchmarks count it)
    # Other machines' caches (a cluster's study storage): a file missing here is looked for
    # there before it is computed, and what is computed here is published there.
    shared: SharedFiles | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        self._fingerprint = weights_fingerprint(self.backbone.model)
        self._eval = eval_transform(self.backbone)
        self.train_transform = train_transform(self.backbone, self.crop_scale)

    def path(self, split: Split, view: int) -> Path:
        transform = f"eval{self.backbone.image_size}" if view == 0 else f"rrc{self.crop_scale}v{view}"
        parts = [str(CACHE_FORMAT), self.backbone.source, self._fingerprint, split.images.identity, transform,
                 str(self.backbone.mean), str(self.backbone.std)]
        # CLIP's interpolation and resize mode add nothing to the key, so that caches written before
        # they were the backbone's own stay valid.
        resampling = (self.backbone.interpolation, self.backbone.resize_mode)
        if resampling != (CLIP_PREPROCESSING.interpolation, CLIP_PREPROCESSING.resize_mode):
            parts += resampling
        key = "|".join(parts)
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.root / "features" / digest[:2] / f"{digest}.pt"

    def _read(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            feats, index = payload["features"], payload["index"]
            if payload["checksum"] != _checksum(feats, index) or len(feats) != len(index):
                raise ValueError("checksum mismatch")
            return payload
        except Exception:
            # Damaged by a crash or a full disk: recompute rather than trust it.
            path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, feats: torch.Tensor, index: torch.Tensor) -> None:
        payload = {"features": feats, "index": index, "checksum": _checksum(feats, index)}
        atomic_save(path, lambda handle: torch.save(payload, handle))

    def features(self, split: Split, indices=None, view: int = 0) -> torch.Tensor:
        """Unnormalised image features (len(indices), E) of one view; computes only what is missing."""
        indices = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        path = self.path(split, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Trials running in parallel share files: one computes, the others wait and read.
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._features_locked(split, indices, view, path)

    def _features_locked(self, split: Split, indices: np.ndarray, view: int, path: Path) -> torch.Tensor:
        payload = self._read(path)
        known = {} if payload is None else {int(i): k for k, i in enumerate(payload["index"].tolist())}
        missing = np.array(sorted({int(i) for i in indices} - known.keys()), dtype=np.int64)
        if len(missing) and self.shared is not None:
            payload, known = self._from_shared(path, payload, known)
            missing = np.array(sorted({int(i) for i in indices} - known.keys()), dtype=np.int64)
        if len(missing):
            pixels = load_pixels(split, missing, self._eval if view == 0 else self.train_transform, view)
            new = encode_images(self.backbone, pixels)
            self.images_encoded += len(missing)
            feats = new if payload is None else torch.cat([payload["features"], new])
            index = torch.from_numpy(missing) if payload is None else torch.cat([payload["index"], torch.from_numpy(missing)])
            self._write(path, feats, index)
            if self.shared is not None:
                self.shared.publish(path, self._shared_name(path))
            known = {int(i): k for k, i in enumerate(index.tolist())}
        else:
            feats = payload["features"]
        return feats[torch.tensor([known[int(i)] for i in indices], dtype=torch.long)]

    def _shared_name(self, path: Path) -> str:
        return path.relative_to(self.root / "features").as_posix()

    def _from_shared(self, path: Path, payload: dict | None, known: dict) -> tuple[dict | None, dict]:
        """The shared copy of the file (payload, index -> row) where it holds every image this one does and more; else this one."""
        fetched = path.with_name(path.name + ".shared")
        if not self.shared.fetch(self._shared_name(path), fetched):
            return payload, known
        theirs = self._read(fetched)
        fetched.unlink(missing_ok=True)
        if theirs is None or not set(theirs["index"].tolist()) > set(known):
            return payload, known
        self._write(path, theirs["features"], theirs["index"])
        return theirs, {int(i): k for k, i in enumerate(theirs["index"].tolist())}

    def view_features(self, split: Split, indices, views: int) -> torch.Tensor:
        """(views, len(indices), E) features of the augmented views 1..views."""
        return torch.stack([self.features(split, indices, view=v) for v in range(1, views + 1)])


def _checksum(feats: torch.Tensor, index: torch.Tensor) -> str:
    h = hashlib.sha256(feats.contiguous().numpy().tobytes())
    h.update(index.contiguous().numpy().tobytes())
    return h.hexdigest()
