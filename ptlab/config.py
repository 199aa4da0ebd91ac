"""Trial configuration: everything one trial needs, immutable and hashable.

A trial is a pure function of its TrialConfig. The config's hash names its
row in the results store, its checkpoint folder and (through the parts that
matter to the image encoder) its feature cache.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ptlab.yamlfile import read_mapping

NoiseType = Literal["none", "symmetric", "pair", "confusion", "ptnl", "ptnl_distinct"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- losses: each a named choice with its own typed parameters, registered once ---------


class LossChoice(Frozen):
    """A training loss and its parameters; ptlab.losses.LOSSES holds the function of each name.

    A study writes one as `loss: gce` with `gce_q: 0.5`, or as `loss: {name: gce, q: 0.5}`.
    Trials keep each parameter in its own flat field (`<prefix>_<parameter>`, LOSS_FIELD_PREFIX):
    the columns results are queried by and the factor paths studies sweep.
    """

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})


class CrossEntropy(LossChoice):
    name: Literal["ce"] = "ce"


class GeneralizedCrossEntropy(LossChoice):
    name: Literal["gce"] = "gce"
    q: float = Field(0.7, gt=0, le=1)  # q -> 0 is CE, q = 1 is MAE


class MeanAbsoluteError(LossChoice):
    name: Literal["mae"] = "mae"


class SymmetricCrossEntropy(LossChoice):
    name: Literal["sce"] = "sce"
    alpha: float = Field(0.1, ge=0)
    beta: float = Field(1.0, ge=0)


class ActivePassiveLoss(LossChoice):
    name: Literal["nce_rce"] = "nce_rce"
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)


LOSS_CHOICES: dict[str, type[LossChoice]] = {
    choice.model_fields["name"].default: choice
    for choice in (CrossEntropy, GeneralizedCrossEntropy, MeanAbsoluteError, SymmetricCrossEntropy, ActivePassiveLoss)
}
LOSS_FIELD_PREFIX = {"gce": "gce", "sce": "sce", "nce_rce": "nce"}
LossName = Literal[tuple(LOSS_CHOICES)]


def loss_fields(name: str) -> dict[str, str]:
    """Loss `name`'s parameters -> the TrialConfig field holding each."""
    return {param: f"{LOSS_FIELD_PREFIX[name]}_{param}" for param in LOSS_CHOICES[name].model_fields if param != "name"}


def flat_loss(written: dict[str, Any]) -> dict[str, Any]:
    """A loss written as a choice with its parameters, as TrialConfig's flat fields: {"loss": name, "<prefix>_<param>": value}."""
    name = written.get("name")
    if name not in LOSS_CHOICES:
        raise ValueError(f"loss.name: {name!r} is not a loss; choose one of {', '.join(LOSS_CHOICES)}")
    try:
        choice = LOSS_CHOICES[name].model_validate(written)
    except ValidationError as err:
        takes = ", ".join(loss_fields(name)) or "no parameters"
        problems = "; ".join(f"loss.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{problems} (loss {name} takes {takes})") from None
    fields = loss_fields(name)
    return {"loss": name, **{fields[param]: value for param, value in choice.params().items() if param in written}}


def _loss_param(name: str, param: str):
    """A TrialConfig field declared by the loss's own parameter: one default and one set of bounds."""
    return copy.deepcopy(LOSS_CHOICES[name].model_fields[param])


class TrainConfig(Frozen):
    """Optimisation recipe; defaults are CoOp's published ones."""

    epochs: int = Field(50, ge=0)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, ge=0)
    # False trains on the evaluation view only (what CoOp's augmentation costs or buys).
    augment: bool = True
    # Augmented views per training image whose features are computed once and
    # cached; 0 runs live random-resized-crop + flip through the encoder.
    views: int = Field(8, ge=0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    eval_every: int = Field(1, ge=1)


class DataConfig(Frozen):
    """Options of the dataset source."""

    root: str | None = None  # data root for coop:/torchvision: sources (else $PTLAB_DATA)
    domain: str = "photo"  # world: drawing style of every split
    imbalance: float = Field(100.0, ge=1)  # world long-tailed tasks: n_max / n_min
    val_shots: int | None = None  # default min(shots, 4)
    download: bool = False  # torchvision: sources may fetch a missing dataset only when asked
    # Class shift (ptlab.data.shift), read by the methods that evaluate under it
    # (ueo, entropy_min, zeroshot_mcm): which classes are prompted, which the
    # unlabelled data holds; "none" = every class everywhere.
    scenario: Literal["none", "closed", "partial", "open", "open_partial"] = "none"
    class_split: str = "proportional"  # proportional | office31 | officehome | visda | domainnet | JSON file
    # Base-to-new generalisation (CoCoOp's protocol, ptlab.data.base_new): train on the first half of the
    # classes, report base, new and harmonic-mean accuracy; for methods whose classifier is built from names.
    base_to_new: bool = False


# Fields added after studies had stored results: hashed only when set away from their default, so that
# every trial id computed before they existed stays as it was (resumed folders, cells across versions).
ADDED_FIELDS = ("data.base_to_new",)


def _default_of(path: str) -> Any:
    model: Any = TrialConfig
    *parents, leaf = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].get_default(call_default_factory=True)


def noise_as_drawn(noise_type: str, rate: float, shots: int) -> str:
    """The noise type whose training set a trial with these noise fields draws (ptlab.methods.supervision).

    At rate 0 symmetric, pair and confusion noise flip no label and draw
    nothing (the K-shot sample is handed on as noise type none, and
    confusion computes no zero-shot scores), so they are "none". ptnl and
    ptnl_distinct choose their own sample, PTNL's draw from each class's
    first half, so they stay even at rate 0. The two differ in drawing a
    first half shorter than K with replacement and in drawing wrong images;
    with shots 0 (each class's whole first half) at rate 0 neither happens,
    so there ptnl_distinct is ptnl (ptlab.data.noise.ptnl_noise).
    """
    if rate > 0:
        return noise_type
    if noise_type in ("ptnl", "ptnl_distinct"):
        return "ptnl" if shots == 0 else noise_type
    return "none"


class TrialConfig(Frozen):
    method: str = "coop"
    backbone: str = "world:tiny-rn"
    dataset: str = "world:shapes"
    data: DataConfig = DataConfig()
    shots: int = Field(16, ge=0)  # 0 = the full training split
    seed: int = 1
    # label noise
    noise_type: NoiseType = "none"
    noise_rate: float = Field(0.0, ge=0, lt=1)
    # loss
    loss: LossName = "ce"
    gce_q: float = _loss_param("gce", "q")
    sce_alpha: float = _loss_param("sce", "alpha")
    sce_beta: float = _loss_param("sce", "beta")
    nce_alpha: float = _loss_param("nce_rce", "alpha")
    nce_beta: float = _loss_param("nce_rce", "beta")
    # prompt learner
    n_ctx: int = Field(16, ge=0)
    ctx_init: str = ""  # phrase such as "a photo of a"; sets n_ctx to its word count
    class_token_position: Literal["end", "middle", "front"] = "end"
    csc: bool = False
    learn_classnames: bool = False  # also learn the class-name token embeddings
    # zero-shot text side
    template: str | None = None  # None = the dataset's own template
    templates: Literal["single", "ensemble7", "ensemble80"] = "single"
    # execution
    train: TrainConfig = TrainConfig()
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"
    method_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _loss_as_a_choice(cls, data: Any) -> Any:
        """`loss: {name: gce, q: 0.5}` is `loss: gce` with `gce_q: 0.5`; an invalid one is left to `_loss_is_a_choice`."""
        if not isinstance(data, dict) or not isinstance(data.get("loss"), dict):
            return data
        try:
            flat = flat_loss(data["loss"])
        except ValueError:
            return data
        both = [f"loss.{param} and {field}" for param, field in loss_fields(flat["loss"]).items()
                if field in flat and field in data and data[field] != flat[field]]
        if both:
            raise ValueError(f"{', '.join(both)} are one parameter written twice with different values; keep one")
        return {**data, **flat}

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_is_a_choice(cls, loss: Any) -> Any:
        if isinstance(loss, dict):
            flat_loss(loss)  # raises what is wrong with it; a valid one was made flat before
        return loss

    @property
    def loss_choice(self) -> LossChoice:
        """The trial's loss with its parameters, typed."""
        return LOSS_CHOICES[self.loss](**{param: getattr(self, field) for param, field in loss_fields(self.loss).items()})

    @model_validator(mode="after")
    def _noise_needs_type(self) -> TrialConfig:
        if self.noise_rate > 0 and self.noise_type == "none":
            raise ValueError("noise_rate > 0 needs a noise_type (symmetric, pair, confusion, ptnl or ptnl_distinct)")
        return self

    @field_validator("method")
    @classmethod
    def _method_is_registered(cls, method: str) -> str:
        from ptlab.methods.registry import UnknownMethod, method_of

        try:
            method_of(method)
        except UnknownMethod as err:
            raise ValueError(str(err)) from None
        return method

    @field_validator("method_options")
    @classmethod
    def _method_takes_its_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from ptlab.methods.registry import method_of

        if "method" not in info.data:  # the method itself is invalid, and reported as such
            return options
        method = method_of(info.data["method"])
        try:
            method.options.model_validate(options)
        except ValidationError as err:
            problems = "; ".join(f"option {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"{problems} (method {method.name} takes: "
                             f"{', '.join(sorted(method.option_names())) or 'no options'})") from None
        return options

    @property
    def options(self):
        """The method's options as its typed model (ptlab.methods.registry)."""
        from ptlab.methods.registry import method_of

        return method_of(self.method).options.model_validate(self.method_options)

    def __hash__(self) -> int:
        return hash(self.trial_id)

    def canonical(self) -> dict[str, Any]:
        """The config as its method reads it: options set away from their defaults, fields it never reads at theirs,
        the noise type as its training set is drawn (`noise_as_drawn`: "none" for symmetric, pair or confusion at
        noise_rate 0).

        Trials that compute the same thing thus have one canonical form and one
        hash, whatever was written for fields that play no part in them. It is
        the trial's identity only: records, results and the trials themselves
        carry the config as written (model_dump), so a report shows what the
        study set, an option at its default included.
        """
        from ptlab.methods.registry import LOSS_PARAMS, METHODS, OPTIONAL_FIELDS

        method = METHODS[self.method]
        data = self.model_dump(mode="json")
        data["method_options"] = self.options.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        unread = OPTIONAL_FIELDS - method.uses
        if "loss" in method.uses:
            unread |= {f for name, params in LOSS_PARAMS.items() if name != self.loss for f in params.values()}
        for name in unread:
            data[name] = type(self).model_fields[name].get_default(call_default_factory=True)
        if "noise_type" in method.uses:
            data["noise_type"] = noise_as_drawn(self.noise_type, self.noise_rate, self.shots)
        for path in ADDED_FIELDS:
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                node = node[part]
            if node[leaf] == _default_of(path):
                del node[leaf]
        return data

    @property
    def trial_id(self) -> str:
        """Short content hash: equal configs, equal id, on every machine."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_updates(self, updates: dict[str, Any]) -> TrialConfig:
        """A copy with dotted-path updates applied, e.g. {"train.lr": 0.01, "gce_q": 0.5}."""
        # as written, not canonical: a field this method ignores may matter to the method an update names
        data = self.model_dump(mode="json")
        if isinstance(updates.get("loss"), dict):  # a loss choice updates the flat fields it stands for
            updates = {**updates, **flat_loss(updates["loss"])}
        if updates.get("method", self.method) != self.method:
            # the options of the method being left are not the new one's to judge
            from ptlab.methods.registry import METHODS

            taken = METHODS[updates["method"]].option_names() if updates["method"] in METHODS else set()
            data["method_options"] = {k: v for k, v in data["method_options"].items() if k in taken}
        for path, value in updates.items():
            node = data
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return TrialConfig.model_validate(data)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted columns (`train.lr`); open mappings (method_options) become JSON text, lists (crop_scale) stay lists."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        column = f"{prefix}{name}"
        if isinstance(value, dict) and name != "method_options":
            out.update(flatten_config(value, f"{column}."))
        elif isinstance(value, dict):
            out[column] = json.dumps(value, sort_keys=True)
        elif isinstance(value, tuple):
            out[column] = list(value)
        else:
            out[column] = value
    return out


@functools.cache
def config_columns() -> frozenset[str]:
    """Every TrialConfig field as a results table holds it (dotted paths; method_options one JSON column)."""
    return frozenset(flatten_config(TrialConfig().model_dump(mode="json")))


def is_config_column(column: str) -> bool:
    # method_options' keys are spread into method_options.<key> columns by reports; they cannot be listed
    return column in config_columns() or column.startswith("method_options.")


class ConfigError(ValueError):
    """A config file that does not validate; the message names file, field and fix."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid trial config"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  field {where}: {e['msg']}")
    return "\n".join(lines)


def load_trial_config(path: str | Path) -> TrialConfig:
    path = Path(path)
    data, _ = read_mapping(path, "trial config", "a mapping of fields (method, backbone, dataset, ...)", ConfigError)
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from err
