"""One registry of backbone sources: each scheme's parser, validation and loader.

Sources:
  world:NAME          a tiny CLIP shipped inside ptlab (ptlab/world/assets/NAME)
  MODEL:TAG           open_clip model with a pretrained tag (e.g. ViT-B-32:openai),
                      from open_clip's cache; downloaded only when online
  MODEL:random        open_clip architecture with random weights (tests, benchmarks)
  MODEL:/path.pt      open_clip architecture with a bare state-dict file
  local-dir:PATH      open_clip_config.json + weights in a folder
  ckpt:PATH           a self-describing ptlab checkpoint {"model_cfg", "state_dict"}
  timm:NAME[.TAG][:random|:/path]
                      a timm ViT: an image encoder alone, for the methods that read
                      images only (vpt, lpt)

`parse_backbone` reads a source into its scheme and parts, once for study
validation and loading alike. Each scheme (`register_backbone`) says what is
wrong with a source from its names alone (`problem`), what needs its files on
disk (`files_problem`), what its names and config files tell without weights
(`describe`: kind, text context, preprocessing) and how to load it.

Tokenizer and preprocessing are open_clip's per model: its tokenizer for the
model (`open_clip.get_tokenizer`) and the mean, std, interpolation and resize
mode of its pretrained tag, else open_clip's defaults, which are CLIP's. The
world's CLIPs were pretrained with CLIP's values and keep them. ptlab's text
side (prompt learner, text encoder) reads CLIP's token layout, so a model
whose tokenizer or text tower is another (SigLIP, CLIPA, EVA, Hugging Face
text towers) is of kind "image": methods that encode text refuse it at
validation, and its `tokenizer` refuses to tokenise.

open_clip (which imports torchvision and timm: seconds) and torch are imported
where a model is built or an open_clip name is judged, so that study
validation of world backbones does not pay for them.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

WORLD_ASSETS = Path(__file__).resolve().parent.parent / "world" / "assets"
WORLD_BACKBONES = ("tiny-vit", "tiny-rn")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# "clip": an open_clip CLIP whose tokenizer and text tower follow CLIP's token layout (every method);
# "image": an image encoder whose text side ptlab cannot read, or which has none (image-only methods).
BackboneKind = Literal["clip", "image"]

OPEN_CLIP = "open_clip"  # the scheme of MODEL:TAG sources, which carry no scheme word
TIMM = "timm"


class BackboneError(ValueError):
    """A backbone source that cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the encoder: open_clip's PreprocessCfg fields that ptlab's transforms use."""

    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shorter side to the input size, then the centre crop; "squash": the whole image


CLIP_PREPROCESSING = Preprocessing()
INTERPOLATION_NAMES = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")


def preprocessing_from(cfg: dict, source: str) -> Preprocessing:
    """Preprocessing from an open_clip preprocess or pretrained config, open_clip's defaults where it is silent."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), cfg)
    result = Preprocessing(tuple(float(v) for v in merged["mean"]), tuple(float(v) for v in merged["std"]),
                           merged["interpolation"], merged["resize_mode"])
    if result.interpolation not in INTERPOLATION_NAMES or result.resize_mode not in RESIZE_MODES:
        raise BackboneError(
            f"backbone {source!r}: its preprocessing asks for interpolation {result.interpolation!r} and resize mode "
            f"{result.resize_mode!r}; ptlab's transforms do {', '.join(INTERPOLATION_NAMES)} and "
            f"{', '.join(RESIZE_MODES)}"
        )
    return result


@dataclass(frozen=True)
class BackboneSource:
    """A backbone source string read into its scheme and the scheme's parts."""

    text: str  # as written
    scheme: str  # a key of BACKBONE_SCHEMES
    name: str  # world name, open_clip model name, folder, checkpoint file or timm model
    weights: str = ""  # open_clip: tag, "random" or a file; timm: "", "random" or a file

    @property
    def weights_file(self) -> Path | None:
        """The weights file a MODEL:/path or timm:NAME:/path names; None for a tag or random weights."""
        if not self.weights or self.weights == "random":
            return None
        path = Path(self.weights).expanduser()
        return path if "/" in self.weights or path.is_file() else None


@dataclass(frozen=True)
class BackboneInfo:
    """What a source's names and config files tell without its weights."""

    kind: BackboneKind
    context_length: int | None  # of the text tower; None without one, or where only the weights tell
    preprocessing: Preprocessing
    text_problem: str | None = None  # why kind "image": its text side is not CLIP's, or it has none


@dataclass
class Backbone:
    source: str
    model: Any  # open_clip.CLIP for kind "clip"; an open_clip model or a timm ViT for kind "image"
    image_size: int
    kind: BackboneKind = "clip"
    preprocessing: Preprocessing = CLIP_PREPROCESSING
    model_cfg: dict = field(default_factory=dict)
    text_tokenizer: Any = None  # open_clip's tokenizer for the model; None for kind "image"
    text_problem: str | None = None

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def interpolation(self) -> str:
        return self.preprocessing.interpolation

    @property
    def resize_mode(self) -> str:
        return self.preprocessing.resize_mode

    @property
    def tokenizer(self):
        if self.text_tokenizer is None:
            raise BackboneError(f"{self.text_problem}; methods that encode text need CLIP's tokenizer and text tower")
        return self.text_tokenizer

    @property
    def is_vit(self) -> bool:
        import open_clip.transformer

        visual = getattr(self.model, "visual", None)
        return isinstance(visual, open_clip.transformer.VisionTransformer)

    @property
    def is_resnet(self) -> bool:
        import open_clip.modified_resnet

        return isinstance(getattr(self.model, "visual", None), open_clip.modified_resnet.ModifiedResNet)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def to(self, device) -> Backbone:
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)


# --- the registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneScheme:
    name: str
    form: str  # how its sources are written, for messages
    split: Callable[[str, str], tuple[str, str]]  # (word before the first ':', rest) -> (name, weights)
    problem: Callable[[BackboneSource], str | None]  # from names alone: no weights, no files
    describe: Callable[[BackboneSource], BackboneInfo | None]  # from names and config files; None where weights tell
    load: Callable[[BackboneSource, str], Backbone]  # (source, precision) -> a frozen backbone on the CPU
    files_problem: Callable[[BackboneSource], str | None] = lambda src: None  # what needs the files on disk


BACKBONE_SCHEMES: dict[str, BackboneScheme] = {}


def register_backbone(scheme: BackboneScheme) -> BackboneScheme:
    if scheme.name in BACKBONE_SCHEMES:
        raise ValueError(f"backbone scheme {scheme.name!r} is registered twice")
    BACKBONE_SCHEMES[scheme.name] = scheme
    return scheme


def source_forms() -> str:
    return ", ".join(s.form for s in BACKBONE_SCHEMES.values())


def parse_backbone(source: str) -> BackboneSource:
    """The scheme and parts of a source; a word before ':' that names no scheme is an open_clip model."""
    word, _, rest = source.partition(":")
    if not rest:
        raise BackboneError(f"backbone {source!r} needs a source: {source_forms()}; close matches: {_close_matches(source)}")
    scheme = BACKBONE_SCHEMES.get(word, BACKBONE_SCHEMES[OPEN_CLIP])
    name, weights = scheme.split(word, rest)
    return BackboneSource(source, scheme.name, name, weights)


def backbone_problem(source: str, files: bool = False) -> str | None:
    """Why a source names no model, from its names alone (files=True: also what needs its files on disk)."""
    try:
        src = parse_backbone(source)
    except BackboneError as err:
        return str(err)
    scheme = BACKBONE_SCHEMES[src.scheme]
    return scheme.problem(src) or (scheme.files_problem(src) if files else None)


def describe_backbone(source: str) -> BackboneInfo | None:
    """Kind, text context and preprocessing without weights; None where the source is invalid or only weights tell."""
    try:
        src = parse_backbone(source)
        scheme = BACKBONE_SCHEMES[src.scheme]
        return None if scheme.problem(src) or scheme.files_problem(src) else scheme.describe(src)
    except BackboneError:
        return None


def load_backbone(source: str, device: str | torch.device = "cpu", precision: str = "fp32") -> Backbone:
    """Build a frozen backbone from any source string (see module docstring)."""
    src = parse_backbone(source)
    scheme = BACKBONE_SCHEMES[src.scheme]
    problem = scheme.problem(src) or scheme.files_problem(src)
    if problem:
        raise BackboneError(problem)
    backbone = scheme.load(src, precision)
    backbone.model.eval().requires_grad_(False)
    return backbone.to(device)


# --- shared by the open_clip schemes ---------------------------------------------------


def _close_matches(name: str) -> str:
    import open_clip

    candidates = [f"world:{n}" for n in WORLD_BACKBONES] + open_clip.list_models()
    near = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return ", ".join(near) if near else "see `open_clip.list_models()`"


def clip_text_problem(model_cfg: dict, source: str, tokenizer_by_name: str = "") -> str | None:
    """Why a model's text side is not CLIP's token layout, which ptlab's prompt learner and text encoder read.

    That layout is open_clip's SimpleTokenizer (SOT first, EOT the largest id, found by argmax) into the
    CLIP class's own causal text transformer, pooled at the EOT. open_clip picks another tokenizer for a
    config naming a Hugging Face one and, by name, for SigLIP models (`tokenizer_by_name`: the model name,
    for built-in configs only, as open_clip.get_tokenizer).
    """
    text = model_cfg.get("text_cfg", {})
    if text.get("hf_model_name"):
        reason = f"its text tower is the Hugging Face model {text['hf_model_name']!r}"
    elif text.get("hf_tokenizer_name"):
        reason = f"open_clip tokenises it with the Hugging Face tokenizer {text['hf_tokenizer_name']!r}"
    elif "siglip" in tokenizer_by_name.lower():
        reason = "open_clip tokenises SigLIP models with SigLipTokenizer"
    elif model_cfg.get("custom_text"):
        reason = "open_clip builds it as a CustomTextCLIP, whose text tower ptlab does not read"
    elif text.get("pool_type", "argmax") != "argmax" or text.get("no_causal_mask") or text.get("embed_cls"):
        reason = "its text tower is not pooled at the EOT of a causal transformer, as CLIP's"
    else:
        return None
    return f"backbone {source!r}: {reason}, not CLIP's token layout"


def _context_length(model_cfg: dict) -> int:
    return int(model_cfg.get("text_cfg", {}).get("context_length", 77))


def _image_size(model_cfg: dict) -> int:
    size = model_cfg["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def _clip_info(model_cfg: dict, source: str, preprocessing: Preprocessing, tokenizer_by_name: str = "") -> BackboneInfo:
    problem = clip_text_problem(model_cfg, source, tokenizer_by_name)
    return BackboneInfo("image" if problem else "clip", _context_length(model_cfg), preprocessing, problem)


def _open_clip_backbone(source: str, model, model_cfg: dict, info: BackboneInfo, tokenizer: Callable[[], Any]) -> Backbone:
    """The tokenizer is built for kind "clip" only: another model's may need files ptlab never uses."""
    return Backbone(source, model, _image_size(model_cfg), info.kind, info.preprocessing, model_cfg,
                    tokenizer() if info.kind == "clip" else None, info.text_problem)


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


def _whole(word: str, rest: str) -> tuple[str, str]:
    return rest, ""


# --- world: ----------------------------------------------------------------------------


def _world_problem(src: BackboneSource) -> str | None:
    if src.name not in WORLD_BACKBONES:
        return f"unknown world backbone {src.text!r}; allowed: {', '.join('world:' + n for n in WORLD_BACKBONES)}"
    return None


def _world_files_problem(src: BackboneSource) -> str | None:
    folder = WORLD_ASSETS / src.name
    if not (folder / "open_clip_config.json").is_file():
        return (f"backbone {src.text!r}: its weights are missing from {folder}; "
                f"rebuild them with `ptlab world pretrain --backbone {src.name}`")
    return _local_dir_files_problem(BackboneSource(src.text, "local-dir", str(folder)))


def _world_describe(src: BackboneSource) -> BackboneInfo:
    # Pretrained with CLIP's normalisation and tokenizer (ptlab.world.pretrain), whatever open_clip would default to.
    cfg = _read_local_config(WORLD_ASSETS / src.name, src.text)["model_cfg"]
    return BackboneInfo("clip", _context_length(cfg), CLIP_PREPROCESSING)


def _world_load(src: BackboneSource, precision: str) -> Backbone:
    folder = WORLD_ASSETS / src.name
    return _load_local_dir_as(folder, precision, src.text, _world_describe(src))


register_backbone(BackboneScheme("world", f"world:NAME ({', '.join('world:' + n for n in WORLD_BACKBONES)})",
                                 _whole, _world_problem, _world_describe, _world_load, _world_files_problem))


# --- local-dir: ------------------------------------------------------------------------


def _local_folder(src: BackboneSource) -> Path:
    return Path(src.name).expanduser()


def _read_local_config(folder: Path, source: str) -> dict:
    config = folder / "open_clip_config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as err:
        data = err
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise BackboneError(f"backbone {source!r}: {config} is not an open_clip config with a 'model_cfg' key"
                            + (f": {data}" if isinstance(data, Exception) else ""))
    return data


def _local_dir_files_problem(src: BackboneSource) -> str | None:
    folder = _local_folder(src)
    if not (folder / "open_clip_config.json").is_file():
        return f"backbone {src.text!r}: expected open_clip_config.json in {folder} (open_clip's local-dir format)"
    if not (sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))):
        return f"backbone {src.text!r}: {folder} has a config but no weights (*.safetensors, *.bin, *.pt)"
    return None


def _local_dir_describe(src: BackboneSource) -> BackboneInfo:
    data = _read_local_config(_local_folder(src), src.text)
    return _clip_info(data["model_cfg"], src.text, preprocessing_from(data.get("preprocess_cfg") or {}, src.text))


def _load_local_dir_as(folder: Path, precision: str, source: str, info: BackboneInfo) -> Backbone:
    import open_clip

    cfg = _read_local_config(folder, source)["model_cfg"]
    model = _create(f"local-dir:{folder}", None, precision, False, source)
    return _open_clip_backbone(source, model, cfg, info, lambda: open_clip.get_tokenizer(f"local-dir:{folder}"))


def _local_dir_load(src: BackboneSource, precision: str) -> Backbone:
    return _load_local_dir_as(_local_folder(src), precision, src.text, _local_dir_describe(src))


register_backbone(BackboneScheme("local-dir", "local-dir:PATH (open_clip_config.json + weights)", _whole,
                                 lambda src: None, _local_dir_describe, _local_dir_load, _local_dir_files_problem))


# --- ckpt: -----------------------------------------------------------------------------


def _ckpt_files_problem(src: BackboneSource) -> str | None:
    path = Path(src.name).expanduser()
    return None if path.is_file() else f"backbone {src.text!r}: no file at {path}"


def _ckpt_load(src: BackboneSource, precision: str) -> Backbone:
    import open_clip
    import torch

    path = Path(src.name).expanduser()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg, state = payload["model_cfg"], payload["state_dict"]
    except Exception as err:  # torch raises many types for a damaged file
        raise BackboneError(
            f"backbone {src.text!r}: {path} is corrupt or not a ptlab checkpoint "
            f"(a dict with 'model_cfg' and 'state_dict'): {err}"
        ) from err
    model = open_clip.CLIP(**cfg, cast_dtype=open_clip.get_cast_dtype(precision))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BackboneError(f"backbone {src.text!r}: {path} does not match its own model_cfg: {err}") from err
    # A bare model config, no name or folder for open_clip to pick a tokenizer by: CLIP's, with the config's options.
    text = cfg.get("text_cfg", {})
    info = _clip_info(cfg, src.text, CLIP_PREPROCESSING)
    return _open_clip_backbone(src.text, model, cfg, info, lambda: open_clip.tokenizer.SimpleTokenizer(
        context_length=model.context_length, **(text.get("tokenizer_kwargs") or {})))


register_backbone(BackboneScheme("ckpt", "ckpt:PATH (a ptlab checkpoint)", _whole,
                                 lambda src: None, lambda src: None, _ckpt_load, _ckpt_files_problem))


# --- timm: -----------------------------------------------------------------------------


def _timm_split(word: str, rest: str) -> tuple[str, str]:
    name, _, weights = rest.partition(":")
    return name, weights


def _timm_problem(src: BackboneSource) -> str | None:
    import timm

    name = src.name
    if not timm.is_model(name):
        return f"backbone {src.text!r}: timm has no model {name.split('.')[0]!r}; see timm.list_models('vit_*')"
    if "." in name and src.weights != "random" and name not in timm.list_pretrained(name):
        tags = ", ".join(timm.list_pretrained(name.split(".")[0] + ".*")) or "none"
        return f"backbone {src.text!r}: timm has no pretrained weights {name!r}; tagged weights: {tags}"
    return None


def _timm_files_problem(src: BackboneSource) -> str | None:
    path = src.weights_file
    return None if path is None or path.is_file() else f"backbone {src.text!r}: no weights file at {path}"


def timm_preprocessing(cfg: dict) -> Preprocessing:
    """A timm model's pretrained_cfg; timm's ViTs default to 0.5 mean and std."""
    return Preprocessing(tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5))),
                         cfg.get("interpolation", "bicubic") if cfg.get("interpolation") in INTERPOLATION_NAMES
                         else "bicubic")


def _timm_text_problem(src: BackboneSource) -> str:
    return f"backbone {src.text!r} is a timm image encoder, with no text tower"


def _timm_describe(src: BackboneSource) -> BackboneInfo:
    import timm

    cfg = timm.models.get_pretrained_cfg(src.name)
    return BackboneInfo("image", None, timm_preprocessing(cfg.to_dict() if cfg else {}), _timm_text_problem(src))


def _timm_load(src: BackboneSource, precision: str) -> Backbone:
    import timm
    import torch

    name, weights = src.name, src.weights
    kwargs: dict = {"num_classes": 0}
    if weights == "random":
        kwargs["pretrained"] = False
    elif weights:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": weights})
    else:
        kwargs["pretrained"] = True
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as err:  # missing offline weights surface as hub, OS or runtime errors
        raise BackboneError(
            f"backbone {src.text!r}: timm could not load {name!r} ({type(err).__name__}: {err}). "
            f"Its weights come from the Hugging Face cache (download once with network access), "
            f"or name the file: 'timm:{name}:/path/to/weights.safetensors'; 'timm:{name}:random' for random weights"
        ) from err
    model = model.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or model.pretrained_cfg["input_size"][1:]
    return Backbone(src.text, model, int(size[0]), "image", timm_preprocessing(getattr(model, "pretrained_cfg", None) or {}),
                    text_problem=_timm_text_problem(src))


register_backbone(BackboneScheme(TIMM, "timm:NAME[.TAG][:random|:/path] (a timm ViT, for image-only methods)",
                                 _timm_split, _timm_problem, _timm_describe, _timm_load, _timm_files_problem))


# --- MODEL:TAG (open_clip) ---------------------------------------------------------------


def _open_clip_split(word: str, rest: str) -> tuple[str, str]:
    return word, rest


def _open_clip_problem(src: BackboneSource) -> str | None:
    import open_clip
    from open_clip.pretrained import list_pretrained_tags_by_model

    models = open_clip.list_models()
    if src.name not in models:
        near = difflib.get_close_matches(src.name, models, n=4, cutoff=0.5)
        return f"unknown backbone {src.text!r}; close open_clip models: {', '.join(near) or 'none'}; or {source_forms()}"
    tags = list_pretrained_tags_by_model(src.name)
    if src.weights != "random" and src.weights not in tags and src.weights_file is None:
        return (f"backbone {src.text!r}: {src.name} has no pretrained tag {src.weights!r}; allowed: "
                f"{', '.join(tags + ['random'])}, or a weights file path")
    return None


def _open_clip_files_problem(src: BackboneSource) -> str | None:
    path = src.weights_file
    return None if path is None or path.is_file() else f"backbone {src.text!r}: no file at {path}"


def _open_clip_describe(src: BackboneSource) -> BackboneInfo:
    """Random weights and weight files get open_clip's default preprocessing (CLIP's), as open_clip.create_model."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    tag = src.weights if src.weights != "random" and src.weights_file is None else ""
    pcfg = get_pretrained_cfg(src.name, tag) if tag else {}
    return _clip_info(open_clip.get_model_config(src.name), src.text, preprocessing_from(pcfg, src.text), src.name)


def _open_clip_load(src: BackboneSource, precision: str) -> Backbone:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    model_name, tag = src.name, src.weights
    info = _open_clip_describe(src)
    cfg = open_clip.get_model_config(model_name)

    def backbone(model) -> Backbone:
        return _open_clip_backbone(src.text, model, cfg, info, lambda: open_clip.get_tokenizer(model_name))

    if tag == "random":
        return backbone(_create(model_name, None, precision, False, src.text))
    if src.weights_file is not None:
        return backbone(_create(model_name, str(src.weights_file), precision, False, src.text))
    pcfg = get_pretrained_cfg(model_name, tag)
    cached = _cached_tag_file(pcfg, _cache_dir())
    if cached is None and _offline():
        where = _cache_dir() or "~/.cache/huggingface and ~/.cache/clip"
        raise BackboneError(
            f"weights of {model_name}:{tag} are not available offline: looked in {where}. "
            f"Provide them by running once with network access (open_clip caches them), by setting "
            f"PTLAB_CLIP_CACHE to a folder holding them, or by naming the file directly: '{model_name}:/path/to/weights.pt'"
        )
    try:
        model = _create(model_name, str(cached) if cached else tag, precision, bool(pcfg.get("quick_gelu")), src.text)
    except Exception as err:
        raise BackboneError(
            f"weights of {model_name}:{tag} could not be loaded or downloaded ({err}). "
            f"Provide them by setting PTLAB_CLIP_CACHE to a folder holding them, or name the file: "
            f"'{model_name}:/path/to/weights.pt'"
        ) from err
    return backbone(model)


register_backbone(BackboneScheme(OPEN_CLIP, "MODEL:TAG (e.g. ViT-B-32:openai, RN50:random) or MODEL:/path/weights.pt",
                                 _open_clip_split, _open_clip_problem, _open_clip_describe, _open_clip_load,
                                 _open_clip_files_problem))
