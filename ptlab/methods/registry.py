"""What a method is, in one registration per method: options, metrics, needs, capabilities, recipe.

A registration names the module holding the method's `run(cfg, ctx)` (imported
on first use), the typed model of its `method_options`, the metrics it reports,
the shared TrialConfig fields it reads beyond the ones every trial reads
(OPTIONAL_FIELDS), and what it needs and can do. Nothing here imports torch:
study validation, the trial hash and reports read it without paying for it.

A field or option a method does not read is an error when a study sets it for
no method that reads it (ptlab.study.spec) and is reset to its default in
every trial config (TrialConfig), so it never enters the trial hash.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ptlab.config import LOSS_CHOICES, loss_fields
from ptlab.metrics import FEW_SHOT_AT_MOST, MANY_SHOT_ABOVE
from ptlab.models.backbone import BackboneKind

# --- losses -----------------------------------------------------------------------

# Each loss's parameters, by name, and the TrialConfig field holding each (ptlab.config.LOSS_CHOICES).
LOSS_PARAMS: dict[str, dict[str, str]] = {name: loss_fields(name) for name in LOSS_CHOICES}
LOSS_FIELDS = frozenset(f for params in LOSS_PARAMS.values() for f in params.values())


# --- shared fields a method may leave unread ---------------------------------------

PROMPT = frozenset({"n_ctx", "ctx_init", "class_token_position", "csc", "learn_classnames"})
LOSS = frozenset({"loss"}) | LOSS_FIELDS
NOISE = frozenset({"noise_type", "noise_rate"})
TEMPLATE = frozenset({"template"})
ZERO_SHOT_TEXT = frozenset({"template", "templates"})
OPTIONAL_FIELDS = PROMPT | LOSS | NOISE | ZERO_SHOT_TEXT


# --- options ------------------------------------------------------------------------


class Options(BaseModel):
    """A method's `method_options`; a key it does not declare is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class NoOptions(Options):
    pass


GRAD_RATIO_GROUP = 64  # samples per group of the noisy/clean gradient-ratio probe, as in the PTNL paper


class GradientRatioOptions(Options):
    grad_ratio: bool = False  # measure the noisy/clean gradient-norm ratio each epoch (methods.md section 5)
    grad_ratio_samples: int = Field(GRAD_RATIO_GROUP, ge=1)


class PromptTuningOptions(GradientRatioOptions):
    learn_context: bool = True  # False keeps the context at its initialisation (ctx_init) and learns nothing else


class LinearProbeOptions(Options):
    search_steps: int = Field(8, ge=0)  # 0: the coarse grid alone; the released protocol's binary search over log10 C


class CoCoOpOptions(PromptTuningOptions):
    # CoCoOp's meta-net: Linear(d, d / reduction) -> ReLU -> Linear(d / reduction, ctx dim) (the paper's 16)
    meta_reduction: int = Field(16, ge=1)


class ShiftProtocolOptions(Options):
    # inductive: adapt on the train split's present-class images, test on the held-out test split;
    # transductive: the released UEO code's protocol, adapting and testing on every image of the dataset
    protocol: Literal["inductive", "transductive"] = "inductive"


class EntropyMinOptions(ShiftProtocolOptions):
    learn_context: bool = True
    train_norms: bool = True  # train the image encoder's normalisation affines
    include_downsample_bn: bool = False  # also a ResNet's downsample BatchNorms (the released code leaves them)


class UeoOptions(EntropyMinOptions):
    lam: float = Field(1.0, alias="lambda")  # trade-off of the marginal-entropy term
    # mcm: the paper's; uniform: information maximisation; oracle: 1 + 1e-3 known, 1e-3 unknown (released analysis)
    weights: Literal["mcm", "uniform", "oracle"] = "mcm"


Sampling = Literal["instance", "class_balanced", "dual"]


class PromptOptions(Options):
    """vpt's options (and, with LPTOptions' additions, lpt's)."""

    prompt_len: int = Field(10, ge=0)  # P tokens per block
    scale: float = Field(20.0, gt=0)  # cosine classifier scale s
    agcl: bool = False
    margin: float = Field(0.1, ge=0)  # A-GCL target margin
    noise_mul: float = Field(0.5, ge=0)  # A-GCL cloud size
    smoothing: float = Field(0.1, ge=0, lt=1)
    gamma_pos: float = Field(0.0, ge=0)
    gamma_neg: float = Field(4.0, ge=0)
    sampling: Sampling = "instance"  # lpt: of stage 2
    per_class: int = Field(4, ge=1)  # images per drawn class in class-balanced batches
    eta: float = Field(0.5, ge=0)  # dual sampling: initial weight of the instance-balanced batch
    gamma_pos_ib: float = Field(0.5, ge=0)
    gamma_neg_ib: float = Field(8.0, ge=0)
    workers: int = Field(0, ge=0)  # image-decoding processes; results do not depend on it
    feature_dropout: float = Field(0.1, ge=0, lt=1)  # on the feature before the cosine classifier, training only
    # release: resize to 256 x 256 and centre-crop 224, bilinear, bilinear training crops (LPT's code);
    # clip: ptlab's CLIP views (shorter side 224, crop 224, bicubic)
    transforms: Literal["release", "clip"] = "release"
    # shot groups: few = at most this many training images (20: LPT's released logging; 19: 20 is medium)
    few_at_most: int = Field(FEW_SHOT_AT_MOST, ge=0, le=MANY_SHOT_ABOVE)


class LPTOptions(PromptOptions):
    agcl: bool = True
    sampling: Sampling = "dual"
    stage1_epochs: int | None = Field(None, ge=0)  # None: train.epochs
    pool_size: int = Field(20, ge=1)  # m group prompts
    top_k: int = Field(2, ge=1)
    split_block: int | None = Field(None, ge=0)  # K; None: half the blocks (6 of 12)
    key_weight: float = Field(1.0, ge=0)
    reuse_stage1: bool = True


# --- the registration ---------------------------------------------------------------

SUPERVISED = ("test_acc", "test_macro_acc", "val_acc", "train_loss", "train_acc_noisy", "train_acc_true")
LONG_TAILED = ("test_acc", "test_macro_acc", "many_acc", "medium_acc", "few_acc", "val_acc", "train_loss", "train_acc")
CLASS_SHIFT = ("test_acc", "test_macro_acc", "auroc")


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str  # module whose run(cfg, ctx) -> TrialRecord is the recipe
    summary: str
    options: type[Options] = NoOptions
    metrics: tuple[str, ...] = SUPERVISED
    uses: frozenset[str] = frozenset()  # fields of OPTIONAL_FIELDS the recipe reads
    needs_labels: bool = True  # False: trains on no (or on its own pseudo-) labels; a noise_type is refused
    # the kinds of backbone it runs on (ptlab.models.backbone): "clip" where it encodes text, with
    # CLIP's tokenizer and text tower; "image" too where it reads images only
    backbones: tuple[BackboneKind, ...] = ("clip",)
    seed_ensembles: bool = False  # saves test logits that a study averages over seeds (ptlab.methods.ensemble)
    epoch_reports: bool = True  # reports every epoch, so ASHA can stop it early
    new_classes: bool = False  # its classifier is built from class names, so it runs base-to-new (data.base_to_new)

    def run(self, cfg, ctx):
        return importlib.import_module(self.recipe).run(cfg, ctx)

    def option_names(self) -> set[str]:
        return {info.alias or name for name, info in self.options.model_fields.items()}


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    unknown = method.uses - OPTIONAL_FIELDS
    if unknown:
        raise ValueError(f"method {method.name!r} uses {sorted(unknown)}, which are not optional trial fields")
    METHODS[method.name] = method
    return method


class UnknownMethod(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def method_of(name: str) -> Method:
    if name not in METHODS:
        near = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise UnknownMethod(f"unknown method {name!r}; {hint}allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name]


TRAINED_PROMPT = PROMPT | LOSS | NOISE
GRAD = ("grad_ratio",)

BASE_NEW = ("base_acc", "new_acc", "hm")  # with data.base_to_new
register_method(Method("zeroshot", "ptlab.methods.zeroshot", "zero-shot CLIP from class-name prompts",
                       metrics=("test_acc", "test_macro_acc", "val_acc") + BASE_NEW, uses=ZERO_SHOT_TEXT,
                       epoch_reports=False, new_classes=True))
register_method(Method("coop", "ptlab.methods.coop", "CoOp: a learned prompt context, encoders frozen",
                       PromptTuningOptions, SUPERVISED + GRAD + BASE_NEW, TRAINED_PROMPT, new_classes=True))
register_method(Method("cocoop", "ptlab.methods.cocoop", "CoCoOp: CoOp's context plus a meta-net token per image",
                       CoCoOpOptions, SUPERVISED + GRAD + BASE_NEW, TRAINED_PROMPT - {"csc", "class_token_position"},
                       new_classes=True))
# Noisy-label analysis (PTNL)
register_method(Method("linear_probe", "ptlab.methods.linear_probe", "logistic regression on frozen image features",
                       LinearProbeOptions, ("test_acc", "test_macro_acc", "val_acc", "train_acc_noisy",
                                            "train_acc_true", "lp_log10_c"), NOISE, epoch_reports=False))
for _name, _init in (("classifier_r", "random"), ("classifier_c", "CLIP's text features")):
    register_method(Method(_name, "ptlab.methods.classifier", f"a linear head, {_init} initialisation",
                           GradientRatioOptions, SUPERVISED + GRAD, LOSS | NOISE | TEMPLATE))
register_method(Method("tenc_ft", "ptlab.methods.tenc_ft", "fine-tune the text encoder on a fixed template",
                       GradientRatioOptions, SUPERVISED + GRAD, LOSS | NOISE | TEMPLATE))
register_method(Method("full_prompt", "ptlab.methods.variants", "CoOp's context and the class-name embeddings learned",
                       GradientRatioOptions, SUPERVISED + GRAD, TRAINED_PROMPT - {"learn_classnames"}))
register_method(Method("cls_tuning", "ptlab.methods.variants", "a fixed template, the class-name embeddings learned",
                       GradientRatioOptions, SUPERVISED + GRAD, LOSS | NOISE | {"ctx_init"}))
register_method(Method("ctx0", "ptlab.methods.variants", "class names alone, nothing learned",
                       metrics=("test_acc", "test_macro_acc", "val_acc"), epoch_reports=False))
for _name in ("upl", "robust_upl"):
    register_method(Method(_name, "ptlab.methods.upl", "CoOp on zero-shot pseudo-labels of unlabelled images",
                           PromptTuningOptions, SUPERVISED + GRAD + ("pseudo_label_acc", "zeroshot_acc"),
                           PROMPT | LOSS, needs_labels=False, seed_ensembles=True))
# Class shift (UEO)
register_method(Method("ueo", "ptlab.methods.ueo", "universal entropy optimisation", UeoOptions,
                       CLASS_SHIFT + ("train_loss", "weight_auroc"), PROMPT, needs_labels=False))
register_method(Method("entropy_min", "ptlab.methods.ueo", "entropy minimisation (UEO at lambda 0, uniform weights)",
                       EntropyMinOptions, CLASS_SHIFT + ("train_loss", "weight_auroc"), PROMPT, needs_labels=False))
register_method(Method("zeroshot_mcm", "ptlab.methods.ueo", "zero-shot CLIP scored by maximum concept matching",
                       ShiftProtocolOptions, CLASS_SHIFT, PROMPT, needs_labels=False, epoch_reports=False))
# Long-tailed visual prompt tuning
register_method(Method("vpt", "ptlab.methods.lpt", "VPT-deep with a cosine classifier", PromptOptions,
                       LONG_TAILED, LOSS | NOISE, backbones=("clip", "image")))
register_method(Method("lpt", "ptlab.methods.lpt", "LPT: shared then group prompts, two stages", LPTOptions,
                       LONG_TAILED + ("key_loss", "stage1_test_acc", "stage1_many_acc", "stage1_medium_acc",
                                      "stage1_few_acc"), LOSS | NOISE, backbones=("clip", "image")))
