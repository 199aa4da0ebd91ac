"""One loader for every CLIP backbone source.

Sources:
  world:NAME        a tiny CLIP shipped inside ptlab (ptlab/world/assets/NAME)
  MODEL:TAG         open_clip model with a pretrained tag (e.g. ViT-B-32:openai),
                    from open_clip's cache; downloaded only when online
  MODEL:random      open_clip architecture with random weights (tests, benchmarks)
  MODEL:/path.pt    open_clip architecture with a bare state-dict file
  local-dir:PATH    open_clip_config.json + weights in a folder
  ckpt:PATH         a self-describing ptlab checkpoint {"model_cfg", "state_dict"}

open_clip (which imports torchvision and timm: seconds) and torch are imported
where a model is built, so that study validation, which needs only the names
here, does not pay for them.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import open_clip
    import torch

WORLD_ASSETS = Path(__file__).resolve().parent.parent / "world" / "assets"
WORLD_BACKBONES = ("tiny-vit", "tiny-rn")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BackboneError(ValueError):
    """A backbone source that cannot be loaded; the message says how to fix it."""


@dataclass
class Backbone:
    source: str
    model: open_clip.CLIP
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    image_size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    model_cfg: dict = field(default_factory=dict)

    @property
    def is_vit(self) -> bool:
        import open_clip.transformer

        return isinstance(self.model.visual, open_clip.transformer.VisionTransformer)

    @property
    def is_resnet(self) -> bool:
        import open_clip.modified_resnet

        return isinstance(self.model.visual, open_clip.modified_resnet.ModifiedResNet)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def to(self, device) -> Backbone:
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)


def _close_matches(name: str) -> str:
    import open_clip

    candidates = [f"world:{n}" for n in WORLD_BACKBONES] + open_clip.list_models()
    near = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return ", ".join(near) if near else "see `open_clip.list_models()`"


def _cache_dir() -> str | None:
    return os.environ.get("PTLAB_CLIP_CACHE") or None


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("PTLAB_OFFLINE", "HF_HUB_OFFLINE"))


def _cached_tag_file(pcfg: dict, cache_dir: str | None) -> Path | None:
    """Where open_clip would have cached this tag's weights, if the file is there."""
    hf = pcfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hf)
        for name in filter(None, [filename and filename.rsplit(".", 1)[0] + ".safetensors", filename,
                                  "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return Path(hit)
    url = pcfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
    return None


def _checked_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BackboneError(f"{what}: no file at {path}")
    return path


def _create(model_name: str, pretrained: str | None, precision: str, quick_gelu: bool, source: str):
    import open_clip

    try:
        return open_clip.create_model(
            model_name, pretrained=pretrained, precision=precision, force_quick_gelu=quick_gelu, cache_dir=_cache_dir()
        )
    except Exception as err:  # a damaged file surfaces as any of pickle's, zip's or torch's errors
        if pretrained and Path(pretrained).is_file() or model_name.startswith("local-dir:"):
            where = pretrained or model_name.removeprefix("local-dir:")
            raise BackboneError(
                f"backbone {source!r}: the checkpoint at {where} is corrupt or does not fit {model_name!r}: {err}"
            ) from err
        raise


def _load_world(name: str, precision: str) -> tuple[open_clip.CLIP, dict]:
    folder = WORLD_ASSETS / name
    if name not in WORLD_BACKBONES:
        raise BackboneError(f"unknown world backbone {name!r}; known: {', '.join('world:' + n for n in WORLD_BACKBONES)}")
    if not (folder / "open_clip_config.json").is_file():
        raise BackboneError(
            f"backbone 'world:{name}': its weights are missing from {folder}; "
            f"rebuild them with `ptlab world pretrain --backbone {name}`"
        )
    return _load_local_dir(folder, precision, f"world:{name}")


def _load_local_dir(folder: Path, precision: str, source: str) -> tuple[open_clip.CLIP, dict]:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise BackboneError(f"backbone {source!r}: expected open_clip_config.json in {folder} (open_clip's local-dir format)")
    try:
        cfg = json.loads(config.read_text())["model_cfg"]
    except (json.JSONDecodeError, KeyError) as err:
        raise BackboneError(f"backbone {source!r}: {config} is not an open_clip config with a 'model_cfg' key: {err}") from err
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))
    if not weights:
        raise BackboneError(f"backbone {source!r}: {folder} has a config but no weights (*.safetensors, *.bin, *.pt)")
    model = _create(f"local-dir:{folder}", None, precision, False, source)
    return model, cfg


def _load_ckpt(path: Path, precision: str, source: str) -> tuple[open_clip.CLIP, dict]:
    import open_clip
    import torch

    _checked_file(path, f"backbone {source!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg, state = payload["model_cfg"], payload["state_dict"]
    except Exception as err:  # torch raises many types for a damaged file
        raise BackboneError(
            f"backbone {source!r}: {path} is corrupt or not a ptlab checkpoint "
            f"(a dict with 'model_cfg' and 'state_dict'): {err}"
        ) from err
    model = open_clip.CLIP(**cfg, cast_dtype=open_clip.get_cast_dtype(precision))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BackboneError(f"backbone {source!r}: {path} does not match its own model_cfg: {err}") from err
    return model, cfg


def _load_open_clip(model_name: str, tag: str, precision: str, source: str) -> tuple[open_clip.CLIP, dict]:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise BackboneError(f"unknown backbone {model_name!r} in {source!r}; close matches: {_close_matches(model_name)}")
    if tag == "random":
        return _create(model_name, None, precision, False, source), cfg
    if Path(tag).expanduser().is_file() or "/" in tag:
        path = _checked_file(Path(tag).expanduser(), f"backbone {source!r}")
        return _create(model_name, str(path), precision, False, source), cfg
    pcfg = get_pretrained_cfg(model_name, tag)
    if not pcfg:
        tags = ", ".join(list_pretrained_tags_by_model(model_name)) or "none"
        raise BackboneError(f"backbone {source!r}: unknown pretrained tag {tag!r}; tags of {model_name}: {tags}, random")
    cached = _cached_tag_file(pcfg, _cache_dir())
    if cached is None and _offline():
        where = _cache_dir() or "~/.cache/huggingface and ~/.cache/clip"
        raise BackboneError(
            f"weights of {model_name}:{tag} are not available offline: looked in {where}. "
            f"Provide them by running once with network access (open_clip caches them), by setting "
            f"PTLAB_CLIP_CACHE to a folder holding them, or by naming the file directly: '{model_name}:/path/to/weights.pt'"
        )
    try:
        model = _create(model_name, str(cached) if cached else tag, precision, bool(pcfg.get("quick_gelu")), source)
    except Exception as err:
        raise BackboneError(
            f"weights of {model_name}:{tag} could not be loaded or downloaded ({err}). "
            f"Provide them by setting PTLAB_CLIP_CACHE to a folder holding them, or name the file: "
            f"'{model_name}:/path/to/weights.pt'"
        ) from err
    return model, cfg


def load_backbone(source: str, device: str | torch.device = "cpu", precision: str = "fp32") -> Backbone:
    """Build a frozen CLIP backbone from any source string (see module docstring)."""
    scheme, _, rest = source.partition(":")
    if not rest:
        raise BackboneError(
            f"backbone {source!r} needs a source: world:NAME, MODEL:TAG (e.g. ViT-B-32:openai, RN50:random), "
            f"local-dir:PATH or ckpt:PATH; close matches: {_close_matches(source)}"
        )
    if scheme == "world":
        model, cfg = _load_world(rest, precision)
    elif scheme == "local-dir":
        model, cfg = _load_local_dir(Path(rest).expanduser(), precision, source)
    elif scheme == "ckpt":
        model, cfg = _load_ckpt(Path(rest).expanduser(), precision, source)
    else:
        model, cfg = _load_open_clip(scheme, rest, precision, source)
    model.eval().requires_grad_(False)
    image_size = cfg["vision_cfg"]["image_size"]
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=model.context_length)
    return Backbone(source, model, tokenizer, image_size, model_cfg=cfg).to(device)
