"""Captions for pretraining the tiny CLIPs.

Each caption mentions a random subset of an image's attributes through varied
templates. Besides the text, a caption returns which attribute values it
claims (-1 where it is silent), so pretraining can treat every image that a
caption describes truthfully as a positive for it.

Mention rates are graded on purpose: colour and shape are named in most
captions, background pattern and size rarely, and the drawing style
sometimes. That grading is what gives the world tasks their spread of
zero-shot difficulty.
"""

from __future__ import annotations

import numpy as np

from ptlab.world.render import Attributes
from ptlab.world.tasks import ATTRIBUTE_VALUES

MENTION_ORDER = ("shape", "color", "pattern", "size", "domain")
MENTION_RATE = {"shape": 0.8, "color": 0.8, "pattern": 0.15, "size": 0.15, "domain": 0.5}
_DOMAIN_PHRASES = {
    "photo": ("a photo of {}", "a picture of {}"),
    "outline": ("an outline of {}", "a sketch of {}", "a line drawing of {}"),
    "pixel": ("a pixelated image of {}", "pixel art of {}"),
}
_GENERIC_NOUNS = ("shape", "object", "thing")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(attrs: Attributes, i: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """One caption of image i and its claims, an int array over MENTION_ORDER."""
    values = {a: ATTRIBUTE_VALUES[a][int(getattr(attrs, a)[i])] for a in MENTION_ORDER}
    said = {a: rng.random() < MENTION_RATE[a] for a in MENTION_ORDER}
    if not (said["shape"] or said["color"] or said["pattern"] or said["size"]):
        said["shape" if rng.random() < 0.5 else "color"] = True
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

