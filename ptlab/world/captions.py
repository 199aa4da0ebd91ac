"""Captions for pretraining the tiny CLIPs.

Each caption mentions a random subset of an image's attributes through varied
templates. Besides the text, a caption returns which attribute values it
claims (-1 where it is silent), so pretraining can treat every image that a
caption describes truthfully as a positive for it.

Mention rates are graded on purpose: colour and shape are named in most
captions, background pattern and size rarely, and the drawing style
sometimes. That grading is what gives the world tasks their spread of
zero-shot difficulty.

A caption scheme sets those rates. The joint scheme trains both towers of a
tiny CLIP together; the LiT scheme trains a text tower against a locked image
tower that already knows every attribute, and it also grades how often a
mention uses the class name rather than other words, per class: real web
captions name some concepts often and others rarely (EuroSAT's "annual crop
land"), which is where prompt tuning pays on real CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptlab.world.render import Attributes
from ptlab.world.tasks import ATTRIBUTE_VALUES

MENTION_ORDER = ("shape", "color", "pattern", "size", "domain")
# Other words for each value, used where a mention does not use the class name.
PARAPHRASES = {
    "shape": {
        "circle": ("disc", "round blob"),
        "square": ("box", "block"),
        "triangle": ("three-sided figure", "wedge"),
        "star": ("five-pointed figure", "pointy burst"),
        "hexagon": ("six-sided figure", "honeycomb cell"),
        "diamond": ("rhombus", "lozenge"),
        "cross": ("plus sign", "plus mark"),
        "ring": ("donut", "hoop"),
        "heart": ("valentine", "love symbol"),
        "moon": ("crescent", "sickle"),
    },
    "color": {
        "red": ("crimson", "scarlet"),
        "orange": ("tangerine", "amber"),
        "yellow": ("lemon", "golden"),
        "green": ("emerald", "leafy"),
        "blue": ("azure", "navy"),
        "purple": ("violet", "lilac"),
        "pink": ("rosy", "salmon"),
        "brown": ("chocolate", "tan"),
        "white": ("snowy", "ivory"),
        "black": ("jet", "inky"),
    },
    "pattern": {
        "plain": ("bare", "uniform"),
        "striped": ("banded", "lined"),
        "dotted": ("spotty", "polka"),
        "checkered": ("chessboard", "tiled"),
        "grid": ("lattice", "mesh"),
        "gradient": ("fading", "shaded"),
    },
    "size": {"small": ("tiny", "little"), "medium": ("mid-sized", "average-sized"), "large": ("big", "huge")},
}


@dataclass(frozen=True)
class CaptionScheme:
    mention_rate: dict[str, float]
    # Probability that a mention of a value uses its class name (else other
    # words), per attribute: one rate for every value, or a tuple by value index.
    name_rate: dict[str, float | tuple[float, ...]] = field(default_factory=dict)

    def uses_name(self, attribute: str, value: int, rng: np.random.Generator) -> bool:
        rate = self.name_rate.get(attribute, 1.0)
        rate = rate[value] if isinstance(rate, tuple) else rate
        # No draw for a sure name keeps the joint scheme's random stream, and with it the shipped weights.
        return rate >= 1.0 or rng.random() < rate


CAPTION_SCHEMES = {
    "joint": CaptionScheme(mention_rate={"shape": 0.8, "color": 0.8, "pattern": 0.15, "size": 0.15, "domain": 0.5}),
    # Colours are always named (the world's "Food101"); the first seven shapes
    # by name in 30% of mentions and the other three only through other words,
    # so zero-shot misses those three while the locked image features know every
    # shape; background patterns only through other words (the "EuroSAT");
    # size sometimes by name.
    "lit": CaptionScheme(
        mention_rate={"shape": 0.8, "color": 0.8, "pattern": 0.4, "size": 0.3, "domain": 0.5},
        name_rate={"shape": (0.3,) * 7 + (0.0,) * 3, "pattern": 0.0, "size": 0.05},
    ),
}

_DOMAIN_PHRASES = {
    "photo": ("a photo of {}", "a picture of {}"),
    "outline": ("an outline of {}", "a sketch of {}", "a line drawing of {}"),
    "pixel": ("a pixelated image of {}", "pixel art of {}"),
}
_GENERIC_NOUNS = ("shape", "object", "thing")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(
    attrs: Attributes, i: int, rng: np.random.Generator, scheme: CaptionScheme = CAPTION_SCHEMES["joint"]
) -> tuple[str, np.ndarray]:
    """One caption of image i and its claims, an int array over MENTION_ORDER."""
    index = {a: int(getattr(attrs, a)[i]) for a in MENTION_ORDER}
    values = {a: ATTRIBUTE_VALUES[a][index[a]] for a in MENTION_ORDER}
    said = {a: rng.random() < scheme.mention_rate[a] for a in MENTION_ORDER}
    if not (said["shape"] or said["color"] or said["pattern"] or said["size"]):
        said["shape" if rng.random() < 0.5 else "color"] = True
    for a in PARAPHRASES:
        if said[a] and not scheme.uses_name(a, index[a], rng):
            values[a] = str(rng.choice(PARAPHRASES[a][values[a]]))
    noun = values["shape"] if said["shape"] else str(rng.choice(_GENERIC_NOUNS))
    words = [values[a] for a in ("size", "color") if said[a]]
    if said["color"] and said["shape"] and not said["size"] and rng.random() < 0.25:
        phrase = f"{_article(noun)} that is {values['color']}"
    elif said["color"] and not said["shape"] and not said["size"] and rng.random() < 0.3:
        phrase = f"something {values['color']}"
    else:
        phrase = _article(" ".join(words + [noun]))
    if said["pattern"]:
        phrase += str(rng.choice([" on a {} background", " in front of a {} background", " with a {} backdrop"])).format(
            values["pattern"]
        )
    if said["domain"]:
        text = str(rng.choice(_DOMAIN_PHRASES[values["domain"]])).format(phrase)
    else:
        text = str(rng.choice(["{}", "a photo of {}", "{}", "an image of {}"])).format(phrase)
        # "a photo of" is said of every style when no style is named, as web captions do.
    claims = np.array(
        [int(getattr(attrs, a)[i]) if said[a] else -1 for a in MENTION_ORDER],
        dtype=np.int64,
    )
    return text + ".", claims


def positives(claims: np.ndarray, attrs: Attributes, index: np.ndarray) -> np.ndarray:
    """(B_captions, B_images) bool: caption j describes image i truthfully."""
    table = np.stack([getattr(attrs, a)[index] for a in MENTION_ORDER], -1)  # (B, A)
    agree = (claims[:, None, :] == -1) | (claims[:, None, :] == table[None, :, :])
    return agree.all(-1)

