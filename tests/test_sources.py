"""Dataset sources on tiny fake datasets written to disk in each layout."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptlab.config import DataConfig
from ptlab.data import sources
from ptlab.data.sources import DataError, check_dataset, list_sources, load_dataset


def img(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (shade, 255 - shade, 7)).save(path)
    return path


def load(source: str, root: Path | None = None, **options) -> sources.DatasetBundle:
    # Straight to the loader: these tests change files on disk between loads.
    scheme, rest = sources.parse_source(source)
    return sources.SOURCES[scheme](rest, DataConfig(root=str(root) if root else None, **options))


def write_split(path: Path, split: dict) -> Path:
    path.write_text(json.dumps(split))
    return path


def coop_split(image_dir: Path, classes: list[str], sizes=(2, 1, 2), folder_of=None) -> dict:
    """CoOp split rows for `classes`, writing each listed image under image_dir."""
    split = {}
    for name, n in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for label, cls in enumerate(classes):
            folder = folder_of(cls) if folder_of else cls
            for i in range(n):
                rel = f"{folder}/{name}_{i}.jpg"
                img(image_dir / rel, 40 * label)
                rows.append([rel, label, cls])
        split[name] = rows
    return split


# (name, folder, image folder, split file, template): CoOp's DATASETS.md and datasets/*.py
COOP_SPLIT_FILE_LAYOUTS = [
    ("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    ("Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."),
    ("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    ("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    ("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    ("Food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    ("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    ("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
    ("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
]


@pytest.mark.parametrize("name,folder,images,split_file,template", COOP_SPLIT_FILE_LAYOUTS)
def test_coop_split_file_layouts(tmp_path, name, folder, images, split_file, template):
    base = tmp_path / folder
    classes = ["Apply_Eye_Makeup", "banded", "Sea or Lake"]
    write_split(base / split_file, coop_split(base / images if images else base, classes))
    bundle = load(f"coop:{name}", tmp_path)
    assert bundle.source == f"coop:{name}"
    assert bundle.classnames == ["Apply Eye Makeup", "banded", "Sea or Lake"]
    assert bundle.template == template
    assert {s: len(bundle.split(s)) for s in ("train", "val", "test")} == {"train": 6, "val": 3, "test": 6}
    assert bundle.split("train").labels.tolist() == [0, 0, 1, 1, 2, 2]
    train = bundle.split("train").images
    assert train.paths[2] == str((base / images if images else base) / "banded" / "train_0.jpg")
    assert train.load(2).size == (4, 4)


def test_coop_keeps_the_split_files_class_names(tmp_path):
    # CoOp renames EuroSAT's folders (AnnualCrop -> "Annual Crop Land"); the file is the authority.
    base = tmp_path / "eurosat"
    names = {"AnnualCrop": "Annual Crop Land", "SeaLake": "Sea or Lake"}
    split = coop_split(base / "2750", list(names.values()), folder_of=lambda c: {v: k for k, v in names.items()}[c])
    write_split(base / "split_zhou_EuroSAT.json", split)
    bundle = load("coop:EuroSAT", tmp_path)
    assert bundle.classnames == ["Annual Crop Land", "Sea or Lake"]
    assert bundle.split("test").images.paths[0].endswith("2750/AnnualCrop/test_0.jpg")


def test_coop_names_are_case_insensitive_and_take_coops_aliases(tmp_path):
    base = tmp_path / "oxford_flowers"
    write_split(base / "split_zhou_OxfordFlowers.json", coop_split(base / "jpg", ["rose", "tulip"]))
    assert load("coop:OxfordFlowers", tmp_path).source == "coop:Flowers102"
    assert load("coop:flowers102", tmp_path).classnames == ["rose", "tulip"]
    with pytest.raises(DataError, match=r"unknown name 'Flowerz'; known: OxfordPets, Flowers102"):
        load("coop:Flowerz", tmp_path)


def test_coop_root_from_environment(tmp_path, monkeypatch):
    base = tmp_path / "dtd"
    write_split(base / "split_zhou_DescribableTextures.json", coop_split(base / "images", ["banded", "zigzagged"]))
    monkeypatch.setenv("PTLAB_DATA", str(tmp_path))
    assert load("coop:DescribableTextures").classnames == ["banded", "zigzagged"]
    monkeypatch.delenv("PTLAB_DATA")
    with pytest.raises(DataError, match="no data root: set data.root .* PTLAB_DATA"):
        load("coop:DescribableTextures")


def test_load_dataset_cache_follows_the_environment_root(tmp_path, monkeypatch):
    for root, classes in (("a", ["banded", "dotted"]), ("b", ["woven", "veined", "zigzagged"])):
        base = tmp_path / root / "dtd"
        write_split(base / "split_zhou_DescribableTextures.json", coop_split(base / "images", classes))
    monkeypatch.setenv("PTLAB_DATA", str(tmp_path / "a"))
    assert load_dataset("coop:DTD").n_classes == 2
    monkeypatch.setenv("PTLAB_DATA", str(tmp_path / "b"))
    assert load_dataset("coop:DTD").n_classes == 3


def test_coop_fgvc_aircraft_reads_its_variant_lists(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    base.mkdir()
    (base / "variants.txt").write_text("707-320\nA300B4\nCessna 172\n")
    for split, rows in {
        "train": ["0001 707-320", "0002 Cessna 172", "0003 A300B4"],
        "val": ["0004 A300B4"],
        "test": ["0005 Cessna 172", "0006 707-320"],
    }.items():
        (base / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            img(base / "images" / f"{row.split()[0]}.jpg")
    bundle = load("coop:FGVCAircraft", tmp_path)
    assert bundle.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert bundle.template == "a photo of a {}, a type of aircraft."
    assert bundle.split("train").labels.tolist() == [0, 2, 1]
    assert bundle.split("test").images.paths[1] == str(base / "images" / "0006.jpg")

    (base / "images_variant_val.txt").write_text("0004 A300-600\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt: line 1: '0004 A300-600'; expected .* variants.txt"):
        load("coop:FGVCAircraft", tmp_path)


def test_coop_imagenet_reads_folders_and_classnames(tmp_path):
    base = tmp_path / "imagenet"
    base.mkdir()
    (base / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    for wnid, n_train in (("n01443537", 3), ("n01440764", 2), ("n01484850", 1)):
        for i in range(n_train):
            img(base / "images" / "train" / wnid / f"{wnid}_{i}.JPEG")
        img(base / "images" / "val" / wnid / f"val_{wnid}.JPEG")
    bundle = load("coop:ImageNet", tmp_path)
    assert bundle.classnames == ["tench", "goldfish", "great white shark"]
    assert bundle.split("train").labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert bundle.split("test").labels.tolist() == [0, 1, 2]
    # CoOp evaluates ImageNet on its val folder and has no separate validation split.
    assert bundle.split("val") is bundle.split("test")

    img(base / "images" / "train" / "n09999999" / "x.JPEG")
    with pytest.raises(DataError, match=r"classnames.txt: no class name for folder 'n09999999'"):
        load("coop:ImageNet", tmp_path)


def test_folder_without_split_file_splits_each_class_50_20_30(tmp_path):
    for cls, n in (("golden_retriever", 10), ("tabby_cat", 6)):
        for i in range(n):
            img(tmp_path / "pets" / cls / f"{i:02d}.png", i)
    (tmp_path / "pets" / "notes.txt").write_text("not a class")
    bundle = load(f"folder:{tmp_path / 'pets'}")
    assert bundle.classnames == ["golden retriever", "tabby cat"]
    assert bundle.template == "a photo of a {}."
    sizes = {s: np.bincount(bundle.split(s).labels, minlength=2).tolist() for s in ("train", "val", "test")}
    assert sizes == {"train": [5, 3], "val": [2, 1], "test": [3, 2]}
    paths = {s: set(bundle.split(s).images.paths) for s in ("train", "val", "test")}
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"] or paths["val"] & paths["test"])
    assert len(set.union(*paths.values())) == 16

    again = load(f"folder:{tmp_path / 'pets'}")
    assert again.split("val").images.paths == bundle.split("val").images.paths
    # The split is a fixed hash of each path, not of the listing, so one new image moves nothing else.
    img(tmp_path / "pets" / "golden_retriever" / "10.png")
    grown = load(f"folder:{tmp_path / 'pets'}")
    before = {p: s for s in ("train", "val", "test") for p in bundle.split(s).images.paths}
    after = {p: s for s in ("train", "val", "test") for p in grown.split(s).images.paths}
    assert sum(before[p] != after[p] for p in before) <= 1


def test_folder_with_split_file(tmp_path):
    split = coop_split(tmp_path / "mine", ["cat", "dog"], sizes=(1, 1, 3))
    write_split(tmp_path / "mine" / "split.json", split)
    bundle = load(f"folder:{tmp_path / 'mine'}")
    assert bundle.classnames == ["cat", "dog"]
    assert [len(bundle.split(s)) for s in ("train", "val", "test")] == [2, 2, 6]
    assert bundle.meta["split_file"] == str(tmp_path / "mine" / "split.json")


def test_identity_changes_with_content_and_only_then(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            img(tmp_path / "d" / cls / f"{i}.png", i)
    source = f"folder:{tmp_path / 'd'}"
    first = load(source)
    train = first.split("train").images
    assert str(tmp_path / "d") in train.identity and ":train:" in train.identity and ":n2:" in train.identity
    assert load(source).split("train").images.identity == train.identity
    assert len({first.split(s).images.identity for s in ("train", "val", "test")}) == 3

    changed = Path(train.paths[0])
    Image.new("RGB", (5, 5)).save(changed)
    os.utime(changed, ns=(1, 1))
    assert load(source).split("train").images.identity != train.identity


def test_identity_changes_when_a_split_is_reordered(tmp_path):
    # Cached features are stored by index: the same files in another order are new content.
    split = coop_split(tmp_path / "d", ["cat", "dog"])
    write_split(tmp_path / "d" / "split.json", split)
    before = load(f"folder:{tmp_path / 'd'}").split("train").images.identity
    split["train"].reverse()
    write_split(tmp_path / "d" / "split.json", split)
    assert load(f"folder:{tmp_path / 'd'}").split("train").images.identity != before


# --- every malformed input names its path and what was expected ---------------


def dtd(tmp_path: Path, split: dict | str) -> Path:
    base = tmp_path / "dtd"
    base.mkdir(exist_ok=True)
    path = base / "split_zhou_DescribableTextures.json"
    path.write_text(split if isinstance(split, str) else json.dumps(split))
    return path


def dtd_error(tmp_path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load("coop:DescribableTextures", tmp_path)
    return info.value


def test_error_missing_data_root(tmp_path):
    with pytest.raises(DataError, match=f"data root {tmp_path / 'nowhere'} is not a directory"):
        load("coop:DescribableTextures", tmp_path / "nowhere")


def test_error_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'dtd'} not found; expected CoOp's dtd/ folder"):
        load("coop:DescribableTextures", tmp_path)


def test_error_missing_split_file(tmp_path):
    (tmp_path / "dtd").mkdir()
    path = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    assert str(dtd_error(tmp_path)).startswith(f"{path}: split file not found; expected a JSON file")


def test_error_bad_json(tmp_path):
    path = dtd(tmp_path, '{"train": [')
    assert str(dtd_error(tmp_path)).startswith(f"{path}: not valid JSON (")


def test_error_split_file_shape(tmp_path):
    path = dtd(tmp_path, [["a.jpg", 0, "x"]])
    assert str(dtd_error(tmp_path)).startswith(f"{path}: expected a JSON object")
    dtd(tmp_path, {"train": [], "test": [], "tset": []})
    assert dtd_error(tmp_path).problems == [
        f'{path}: no \'val\' list; expected {{"train"|"val"|"test": [[relative_path, label, classname], ...]}}',
        f"{path}: unexpected key 'tset'; expected only train, val and test",
    ]


def test_error_entries_that_are_not_path_label_classname(tmp_path):
    bad = [["a.jpg", 0], ["a.jpg", "0", "x"], ["a.jpg", True, "x"], "a.jpg 0 x", ["", 0, "x"], ["a.jpg", 0, ""]]
    path = dtd(tmp_path, {"train": [["ok.jpg", 0, "x"], *bad], "val": [], "test": []})
    problems = dtd_error(tmp_path).problems
    assert [p.split(" is ")[0] for p in problems] == [f"{path}: train[{i}]" for i in range(1, 7)]
    assert all(p.endswith("; expected [relative_path, label, classname]") for p in problems)


def test_error_label_out_of_range(tmp_path):
    path = dtd(tmp_path, {"train": [["a.jpg", 0, "x"], ["b.jpg", 5, "y"]], "val": [], "test": [["c.jpg", -1, "z"]]})
    assert dtd_error(tmp_path).problems == [
        f"{path}: test[0]: label -1 out of range; 3 distinct labels, so labels must be 0..2",
        f"{path}: train[1]: label 5 out of range; 3 distinct labels, so labels must be 0..2",
    ]


def test_error_classname_inconsistent_with_label(tmp_path):
    path = dtd(tmp_path, {"train": [["a.jpg", 0, "x"], ["b.jpg", 1, "y"]], "val": [["c.jpg", 0, "w"]], "test": []})
    assert dtd_error(tmp_path).problems == [f"{path}: val[0] names label 0 'w', but train[0] named it 'x'"]
    dtd(tmp_path, {"train": [["a.jpg", 0, "x"], ["b.jpg", 1, "y"]], "val": [], "test": [["c.jpg", 1, "x"]]})
    assert dtd_error(tmp_path).problems[-1] == f"{path}: test[0] gives class 'x' label 1, but train[0] gave it 0"


def test_error_missing_image_listed_in_the_split(tmp_path):
    split = coop_split(tmp_path / "dtd" / "images", ["banded", "dotted"])
    path = dtd(tmp_path, split)
    gone = tmp_path / "dtd" / "images" / "dotted" / "test_1.jpg"
    gone.unlink()
    assert dtd_error(tmp_path).problems == [f"{gone}: image file not found (listed in {path}, test[3])"]


def test_error_many_problems_are_all_kept_but_few_shown(tmp_path):
    rows = [[f"{i}.jpg", 0, "x"] for i in range(25)]
    dtd(tmp_path, {"train": rows, "val": [], "test": []})
    err = dtd_error(tmp_path)
    assert len(err.problems) == 25
    assert len(str(err).splitlines()) == DataError.SHOWN + 1
    assert str(err).endswith("... and 15 more (ptlab data check SOURCE lists them all)")
    # Ray ships a failed trial's exception between processes.
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_error_folder_layouts(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'none'} is not a directory; expected one sub-folder"):
        load(f"folder:{tmp_path / 'none'}")
    (tmp_path / "flat").mkdir()
    img(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=f"{tmp_path / 'flat'} has no class sub-folders"):
        load(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "flat" / "empty").mkdir()
    (tmp_path / "flat" / "empty" / "readme.md").write_text("")
    with pytest.raises(DataError, match=f"{tmp_path / 'flat' / 'empty'}: no images \\(files ending .bmp"):
        load(f"folder:{tmp_path / 'flat'}")
    for i in range(2):
        img(tmp_path / "flat" / "empty" / f"{i}.png")
    with pytest.raises(
        DataError, match="class 'empty' has 2 images; splitting it into train, val, test needs at least 3"
    ):
        load(f"folder:{tmp_path / 'flat'}")


# --- check_dataset and list_sources -----------------------------------------


def test_check_dataset_lists_structural_and_unreadable_problems(tmp_path):
    split = coop_split(tmp_path / "dtd" / "images", ["banded", "dotted"])
    split["val"] = []
    dtd(tmp_path, split)
    options = DataConfig(root=str(tmp_path))
    assert check_dataset("coop:DTD", options) == ["coop:DTD: split 'val' has no images"]

    broken = tmp_path / "dtd" / "images" / "banded" / "train_1.jpg"
    broken.write_bytes(b"not an image")
    split["val"] = split["test"]
    split["train"] = [row for row in split["train"] if row[1] == 0]
    dtd(tmp_path, split)
    problems = check_dataset("coop:DTD", options)
    assert problems[0] == "coop:DTD: 1 classes have no training images: 'dotted'"
    assert problems[1].startswith(f"{broken}: not a readable image")
    assert len(problems) == 2  # val and test share their files: checked once

    rows = [[f"{i}.jpg", 0, "x"] for i in range(25)]
    dtd(tmp_path, {"train": rows, "val": [], "test": []})
    assert len(check_dataset("coop:DTD", options)) == 25
    assert check_dataset("nope:x") == [
        f"dataset 'nope:x': unknown scheme 'nope'; known: {', '.join(sorted(sources.SOURCES))}"
    ]


def test_list_sources_names_schemes_and_known_datasets():
    rows = dict(list_sources())
    assert set(rows) >= {"world", "coop", "folder", "torchvision"}
    assert "shapes" in rows["world"]
    assert "DescribableTextures" in rows["coop"] and "ImageNet" in rows["coop"]
    assert "OxfordIIITPet" in rows["torchvision"] and "data.download" in rows["torchvision"]
    assert "split.json" in rows["folder"]


# --- torchvision: the on-disk layouts torchvision reads, never downloading ----


def test_torchvision_eurosat_loads_without_download(tmp_path):
    for label, cls in enumerate(("AnnualCrop", "Forest", "SeaLake")):
        for i in range(5):
            img(tmp_path / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg", 30 * label)
    bundle = load("torchvision:EuroSAT", tmp_path)
    assert bundle.classnames == ["AnnualCrop", "Forest", "SeaLake"]
    assert bundle.template == "a centered satellite photo of {}."
    # EuroSAT has no official split: 50/20/30 per class, as folder: does.
    assert [len(bundle.split(s)) for s in ("train", "val", "test")] == [6, 3, 6]
    assert np.bincount(bundle.split("test").labels).tolist() == [2, 2, 2]
    test = bundle.split("test").images
    assert all(
        Path(p).parent.name == bundle.classnames[y]
        for p, y in zip(test.paths, bundle.split("test").labels, strict=True)
    )
    assert test.identity.startswith("torchvision:EuroSAT:test:")


def test_torchvision_dtd_uses_its_own_splits(tmp_path):
    data = tmp_path / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    lists = {"train": 2, "val": 1, "test": 3}
    for split, n in lists.items():
        rows = [f"{cls}/{cls}_{split}_{i}.jpg" for cls in ("banded", "zigzagged") for i in range(n)]
        for row in rows:
            img(data / "images" / row)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    bundle = load("torchvision:DTD", tmp_path)
    assert bundle.classnames == ["banded", "zigzagged"]
    assert bundle.template == "{} texture."
    assert {s: len(bundle.split(s)) for s in lists} == {s: 2 * n for s, n in lists.items()}
    assert bundle.split("test").labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert bundle.split("val").images.load(1).size == (4, 4)


def test_torchvision_missing_dataset_names_the_path_and_never_downloads(tmp_path):
    expected = tmp_path / "eurosat" / "2750"
    with pytest.raises(DataError, match=f"{expected} not found; .*set data.download: true"):
        load("torchvision:EuroSAT", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing fetched
    with pytest.raises(DataError, match="torchvision cannot download ImageNet"):
        load("torchvision:ImageNet", tmp_path, download=True)
    with pytest.raises(DataError, match="use coop:UCF101"):
        load("torchvision:UCF101", tmp_path)


def test_torchvision_food101_carves_val_from_train(tmp_path):
    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    for split, n in (("train", 5), ("test", 2)):
        lists = {cls: [f"{cls}/{split}{i}" for i in range(n)] for cls in ("apple_pie", "ramen")}
        (base / "meta" / f"{split}.json").write_text(json.dumps(lists))
        for rows in lists.values():
            for row in rows:
                img(base / "images" / f"{row}.jpg")
    bundle = load("torchvision:Food101", tmp_path)
    assert bundle.classnames == ["apple pie", "ramen"]
    assert bundle.template == "a photo of {}, a type of food."
    # torchvision has train and test only: 20% of each class's train images become val, as CoOp does.
    counts = {s: np.bincount(bundle.split(s).labels).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [4, 4], "val": [1, 1], "test": [2, 2]}
    assert not set(bundle.split("train").images.paths) & set(bundle.split("val").images.paths)


def test_data_check_decodes_bodies_and_prints_counts(tmp_path):
    from typer.testing import CliRunner

    from ptlab.cli import app

    for cls, n in (("cat", 4), ("dog", 3)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.effect_noise((64, 64), 60).convert("RGB").save(tmp_path / "data" / cls / f"{i}.jpg")
    ok = CliRunner().invoke(app, ["data", "check", f"folder:{tmp_path / 'data'}"])
    assert ok.exit_code == 0, ok.output
    assert "2 classes" in ok.output and "ok, every image decodes" in ok.output
    assert any(line.split()[:1] == ["cat"] for line in ok.output.splitlines())
    whole = (tmp_path / "data" / "cat" / "0.jpg").read_bytes()
    (tmp_path / "data" / "cat" / "0.jpg").write_bytes(whole[: len(whole) // 2])  # header intact, body cut
    broken = CliRunner().invoke(app, ["data", "check", f"folder:{tmp_path / 'data'}"])
    assert broken.exit_code == 2 and "0.jpg: not a readable image" in broken.output
