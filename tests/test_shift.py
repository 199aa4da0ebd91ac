import json

import numpy as np
import pytest

from ptlab.data.shift import (
    PUBLISHED_SPLITS,
    UNKNOWN,
    class_shift,
    proportional_split,
    resolve_split,
)
from ptlab.data.sources import DataError, DatasetBundle


def _bundle(classnames):
    return DatasetBundle("test:names", list(classnames), "a photo of a {}.", {})


def test_proportional_split_reproduces_office31():
    office = PUBLISHED_SPLITS["office31"]
    scaled = proportional_split(31)
    assert scaled.known == office.known
    assert scaled.present == office.present


def test_proportional_split_of_the_world_tasks_is_as_documented():
    shapes = proportional_split(10)
    assert shapes.known == tuple(range(8))
    assert shapes.present == {"partial": tuple(range(6)), "open": tuple(range(9)), "open_partial": (0, 1, 2, 3, 4, 8)}
    color_shapes = proportional_split(100)
    assert color_shapes.known == tuple(range(81))
    assert color_shapes.present["partial"] == tuple(range(65))
    assert color_shapes.present["open"] == tuple(range(90))
    assert color_shapes.present["open_partial"] == tuple(range(48)) + tuple(range(81, 90))


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 12, 31, 65, 100, 345])
def test_every_scenario_keeps_its_defining_relation(n):
    bundle = _bundle([f"class {i}" for i in range(n)])
    shifts = {s: class_shift(bundle, s) for s in ("closed", "partial", "open", "open_partial")}
    known = set(shifts["closed"].known)
    assert 0 < len(known) < n
    assert set(shifts["closed"].present) == known
    assert set(shifts["partial"].present) < known
    assert set(shifts["open"].present) > known
    op = set(shifts["open_partial"].present)
    assert known - op and op - known
    assert all(s.known == shifts["closed"].known for s in shifts.values())
    none = class_shift(bundle, "none")
    assert none.known == none.present == tuple(range(n)) and none.unknown == ()


def test_published_split_follows_alphabetical_names_whatever_their_case_or_order():
    names = ["back pack", "Bike", "bike helmet", "bookcase", "bottle", "calculator", "desk chair", "desk lamp",
             "desktop computer", "file cabinet", "headphones", "keyboard", "laptop computer", "letter tray",
             "mobile phone", "monitor", "mouse", "mug", "paper notebook", "pen", "phone", "printer", "projector",
             "punchers", "ring binder", "ruler", "scissors", "speaker", "stapler", "tape dispenser", "trash can"]
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(31)]
    split = resolve_split("office31", shuffled)
    assert [shuffled[i] for i in split.known] == names[:25]
    assert sorted(shuffled[i] for i in split.present["open_partial"]) == sorted(names[:15] + names[25:28])
    with pytest.raises(DataError, match="31 classes"):
        resolve_split("office31", names[:30])


def test_json_class_lists(tmp_path):
    names = ["ant", "bee", "cat", "dog", "eel"]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"known": ["Cat", "ant", "dog"], "partial": ["ant"], "open": ["ant", "cat", "dog", "eel"],
                                "open_partial": ["ant", "eel"]}))
    shift = class_shift(_bundle(names), "open_partial", str(path))
    assert shift.known == (2, 0, 3)  # the file's order is the prompt order
    assert shift.present == (0, 4)
    assert shift.known_labels(np.array([0, 1, 2, 3, 4])).tolist() == [1, UNKNOWN, 0, 2, UNKNOWN]
    assert shift.present_positions(np.array([4, 1, 0, 0])).tolist() == [0, 2, 3]
    path.write_text(json.dumps({"known": ["ant", "gnu"], "partial": [], "open": [], "open_partial": []}))
    with pytest.raises(DataError, match="gnu"):
        class_shift(_bundle(names), "open", str(path))


def test_bad_scenario_and_split_names():
    bundle = _bundle(["a", "b", "c"])
    with pytest.raises(ValueError, match="scenario"):
        class_shift(bundle, "half-open")
    with pytest.raises(DataError, match="proportional"):
        class_shift(bundle, "open", "officehouse")
    with pytest.raises(ValueError, match="at least 3"):
        class_shift(_bundle(["a", "b"]), "open")
