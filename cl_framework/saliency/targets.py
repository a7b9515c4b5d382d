"""Saliency target maps: one map per training image, looked up by image content.

The scenario holds images as uint8 tensors without file names or sample indices, so maps are
keyed by a 64-bit hash of each image's pixels (:func:`image_keys`): the stream batch's raw rows
find their maps with one vectorised hash + ``searchsorted``, whatever the loader's shuffle or
the training data a plug-in substituted. Identical images share a key, and a map.

Three sources of maps (``strategy.sam.targets``):

* ``spectral_residual``: OpenCV contrib's non-learned spectral-residual saliency, computed
  once on every training image and cached on disk;
* ``teacher``: a saliency network checkpoint (a :class:`SaliencyBranch` of the same backbone)
  run once over the training images, maps cached on disk;
* ``disk``: per-image maps in the official SER layout
  ``<root>/annotations/train/<class>/<image>.png`` beside ``<root>/images/train/<class>/<image>.*``;
  the images are decoded with the source's size / interpolation to compute their keys, then
  matched to the scenario's training images (the result is cached too).

Every map is resized to the input size and stored as uint8 scaled to a maximum of 255 (shifted
by its minimum first if negative); the loss normalises it to sum 1.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cl_framework.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS = ("spectral_residual", "teacher", "disk")
CACHE_FORMAT = 1
_KEY_SEED = 20240213


# ------------------------------------------------------------------------------------- keys
_weights: dict[tuple[int, str], torch.Tensor] = {}


def _key_weights(numel: int, device: torch.device) -> torch.Tensor:
    """Fixed random odd int64 weights per pixel (a constant of the format, not run state)."""
    cache_key = (numel, str(device))
    w = _weights.get(cache_key)
    if w is None:
        gen = torch.Generator().manual_seed(_KEY_SEED + numel)
        w = torch.randint(-(2**62), 2**62, (numel,), generator=gen, dtype=torch.int64) | 1
        w = w.to(device)
        _weights[cache_key] = w
    return w


def image_keys(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """One int64 key per uint8 image of ``x`` (N, C, H, W): a linear hash mod 2**64."""
    if x.dtype != torch.uint8:
        raise TypeError(f"image_keys needs uint8 images, got {x.dtype}")
    flat = x.reshape(len(x), -1)
    w = _key_weights(flat.shape[1], x.device)
    out = [(flat[i : i + chunk].long() * w).sum(1) for i in range(0, len(flat), chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


# ------------------------------------------------------------------------------------ table
class SaliencyTable:
    """Sorted image keys -> uint8 maps (N, 1, H, W), on the CPU."""

    def __init__(self, keys: torch.Tensor, maps: torch.Tensor) -> None:
        if len(keys) != len(maps) or maps.dtype != torch.uint8 or maps.ndim != 4:
            raise ValueError("SaliencyTable needs N keys and N uint8 maps (N, 1, H, W)")
        order = torch.argsort(keys.cpu())
        self.keys = keys.cpu()[order]
        self.maps = maps.cpu()[order]
        self.rows = torch.arange(len(keys))  # map row of each key (aliases point to others)

    def __len__(self) -> int:
        return len(self.keys)

    def __deepcopy__(self, memo: dict) -> SaliencyTable:
        """Copies of a module (``CLModule.clone``) share the table: it is data, not state."""
        return self

    @property
    def map_size(self) -> tuple[int, int]:
        return (int(self.maps.shape[2]), int(self.maps.shape[3]))

    def find(self, keys: torch.Tensor) -> torch.Tensor:
        """Map rows of ``keys`` (CPU int64), -1 where a key is unknown."""
        keys = keys.cpu()
        if len(self.keys) == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        found = self.keys[pos] == keys
        return torch.where(found, self.rows[pos], torch.full_like(pos, -1))

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 1, H, W) uint8 of the raw images ``x``, on ``x``'s device."""
        rows = self.find(image_keys(x))
        missing = int((rows < 0).sum())
        if missing:
            raise DataError(
                "strategy.sam.targets",
                f"{missing} of {len(rows)} training images of this batch have no saliency map",
                fix="targets are built from the scenario's training images at setup; a plug-in "
                "that changes training images must come before 'sam' in the strategy list",
            )
        return self.maps[rows].to(x.device, non_blocking=True)

    def add_aliases(self, originals: torch.Tensor, aliases: torch.Tensor) -> int:
        """Let row i of ``aliases`` find the map of row i of ``originals``; returns the count."""
        if len(originals) != len(aliases):
            raise ValueError("add_aliases needs as many aliases as originals")
        rows = self.find(image_keys(originals))
        new_keys = image_keys(aliases).cpu()
        fresh = (rows >= 0) & (self.find(new_keys) < 0)
        if not bool(fresh.any()):
            return 0
        keys = torch.cat([self.keys, new_keys[fresh]])
        all_rows = torch.cat([self.rows, rows[fresh]])
        order = torch.argsort(keys)
        unique = torch.ones(len(keys), dtype=torch.bool)
        unique[1:] = keys[order][1:] != keys[order][:-1]
        self.keys = keys[order][unique]
        self.rows = all_rows[order][unique]
        return int(fresh.sum())


# ------------------------------------------------------------------------------- map makers
def to_uint8_maps(maps: torch.Tensor) -> torch.Tensor:
    """Float maps (N, 1, H, W) -> uint8 scaled so each map's maximum is 255."""
    flat = maps.flatten(1).float()
    low = flat.min(1, keepdim=True).values
    flat = torch.where(low < 0, flat - low, flat)
    high = flat.max(1, keepdim=True).values.clamp_min(1e-12)
    out = (flat / high * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out.view_as(maps)


def spectral_residual_maps(x: torch.Tensor) -> torch.Tensor:
    """OpenCV spectral-residual saliency (Hou & Zhang 2007) of uint8 images -> uint8 maps."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ConfigError(
            "strategy.sam.targets",
            "spectral_residual targets need OpenCV's contrib build",
            fix="pip install opencv-contrib-python-headless",
        ) from exc
    saliency = cv2.saliency.StaticSaliencySpectralResidual_create()
    images = x.cpu().numpy()
    out = np.zeros((len(images), 1, images.shape[2], images.shape[3]), dtype=np.float32)
    for i, img in enumerate(images):
        arr = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
        ok, m = saliency.computeSaliency(arr)
        if not ok:  # pragma: no cover - OpenCV only fails on empty input
            raise RuntimeError("OpenCV spectral-residual saliency failed")
        out[i, 0] = m
    return to_uint8_maps(torch.from_numpy(out))


@torch.no_grad()
def network_maps(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Maps of a saliency network ``predict`` (uint8 images -> (B, 1, H, W) floats)."""
    parts = [predict(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    maps = torch.cat(parts) if parts else torch.zeros((0, 1, *x.shape[2:]))
    if maps.shape[2:] != x.shape[2:]:
        maps = F.interpolate(maps, size=x.shape[2:], mode="bilinear", align_corners=False)
    return to_uint8_maps(maps)


@dataclass(frozen=True)
class DiskLayout:
    """Where per-image maps live (the official SER layout) and how images were decoded."""

    root: Path
    class_names: Sequence[str]
    image_size: tuple[int, int] | None
    interpolation: str
    channels: int
    split: str = "train"


def disk_maps(layout: DiskLayout, out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and maps of every image with an annotation under ``layout.root``.

    Images are decoded exactly as the image-folder sources decode them (same size and
    interpolation), so their keys equal those of the scenario's training images.
    """
    from cl_framework.scenarios.images import decode_images, list_images, parse_interpolation

    image_root = layout.root / "images" / layout.split
    map_root = layout.root / "annotations" / layout.split
    fix = (
        "put maps at <root>/annotations/train/<class>/<image>.png beside "
        "<root>/images/train/<class>/<image>.<ext> (strategy.sam.targets_root)"
    )
    if not image_root.is_dir() or not map_root.is_dir():
        raise DataError(str(layout.root), "no images/train and annotations/train folders", fix)
    images: list[Path] = []
    annotations: list[Path] = []
    missing: list[str] = []
    for name in layout.class_names:
        if not (image_root / name).is_dir():
            continue
        for path in list_images(image_root / name):
            ann = map_root / name / f"{path.stem}.png"
            if ann.is_file():
                images.append(path)
                annotations.append(ann)
            else:
                missing.append(str(ann))
    if missing:
        log.warning("SAM targets: %d images have no annotation (e.g. %s)", len(missing), missing[0])
    if not images:
        raise DataError(str(map_root), "no annotation matches an image of the scenario", fix)
    x = decode_images(
        images,
        layout.image_size,
        interpolation=layout.interpolation,
        channels=layout.channels,
        what="SAM target images",
    )
    resample = parse_interpolation("lanczos")
    h, w = out_size
    maps = np.zeros((len(annotations), 1, h, w), dtype=np.float32)
    for i, ann in enumerate(annotations):
        with Image.open(ann) as img:
            gray = img.convert("L")
            if gray.size != (w, h):
                gray = gray.resize((w, h), resample)
            maps[i, 0] = np.asarray(gray, dtype=np.float32)
    return image_keys(x), to_uint8_maps(torch.from_numpy(maps))


# ------------------------------------------------------------------------------------ cache
def fingerprint(keys: torch.Tensor, *parts: object) -> str:
    """Digest of the (sorted, unique) image keys and the options that shape the maps."""
    digest = hashlib.sha256()
    digest.update(torch.unique(keys.cpu()).numpy().tobytes())
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_cached(path: Path) -> SaliencyTable | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CACHE_FORMAT:
            return None
        return SaliencyTable(payload["keys"], payload["maps"])
    except (OSError, RuntimeError, KeyError, ValueError, AttributeError) as exc:
        log.warning("SAM targets: ignoring unreadable cache %s (%s)", path, exc)
        return None


def save_cached(path: Path, keys: torch.Tensor, maps: torch.Tensor) -> None:
    """Atomic write (temporary file + rename), so a crash never leaves a truncated cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CACHE_FORMAT, "keys": keys.cpu(), "maps": maps.cpu()}, tmp)
    os.replace(tmp, path)


def build_table(
    kind: str,
    images: torch.Tensor,
    cache_dir: Path,
    make_maps: Callable[[torch.Tensor], torch.Tensor] | None = None,
    make_keyed_maps: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
    options: Sequence[object] = (),
) -> tuple[SaliencyTable, int]:
    """The target table for the training ``images`` (uint8), from the cache or computed.

    ``make_maps(unique_images)`` computes maps image by image (spectral residual, teacher);
    ``make_keyed_maps()`` returns (keys, maps) found elsewhere (disk). Returns the table and the
    number of maps computed now (0 when the cache was used).
    """
    keys = image_keys(images)
    name = f"{kind}-{images.shape[2]}x{images.shape[3]}-{fingerprint(keys, kind, *options)}.pt"
    path = Path(cache_dir).expanduser() / name
    cached = load_cached(path)
    if cached is not None:
        log.info("SAM targets: %d %s maps from cache %s", len(cached), kind, path)
        return cached, 0
    unique_keys, first = _unique_rows(keys)
    if make_keyed_maps is not None:
        found_keys, found_maps = make_keyed_maps()
        table = SaliencyTable(found_keys, found_maps)
        rows = table.find(unique_keys)
        missing = int((rows < 0).sum())
        if missing:
            raise DataError(
                str(cache_dir),
                f"{missing} of {len(unique_keys)} training images have no saliency map",
                fix="every training image needs annotations/train/<class>/<image>.png, and "
                "targets_image_size / targets_interpolation must match the source's",
            )
        maps = table.maps[table.rows[rows]]
        computed = len(found_keys)
    elif make_maps is not None:
        maps = make_maps(images[first])
        computed = len(maps)
    else:  # pragma: no cover - programming error
        raise ValueError("build_table needs make_maps or make_keyed_maps")
    save_cached(path, unique_keys, maps)
    log.info("SAM targets: computed %d %s maps, cached in %s", computed, kind, path)
    return SaliencyTable(unique_keys, maps), computed


def _unique_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys and, for each, the index of its first row in ``keys``."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(unique),), len(keys), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys)), reduce="amin")
    return unique, first
