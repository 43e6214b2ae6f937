import pytest
import torch
from PIL import Image

from coursekit import data


def test_digits_have_images_and_labels():
    ds = data.load_dataset("digits")
    assert ds.column_names == ["image", "label"]
    assert len(ds) == 1797
    assert ds.features["label"].names == [str(i) for i in range(10)]
    im = ds[0]["image"]
    assert im.size == (8, 8) and im.mode == "L"
    assert sorted(set(ds["label"])) == list(range(10))


def test_photo_crops_are_a_colour_set_with_the_same_columns():
    ds = data.load_dataset("photo-crops")
    assert ds.column_names == ["image", "label"]
    assert len(ds) > 200
    assert ds[0]["image"].mode == "RGB" and ds[0]["image"].size == (32, 32)
    assert ds.features["label"].names == ["china", "grace_hopper", "astronaut", "chelsea", "coffee", "rocket"]


def test_flower_crops_differ_visibly_from_the_photo_crops():
    """The fine-tuning target: one photo's crops, with colour statistics unlike the pretraining set's."""
    from coursekit import metrics

    flowers, photos = data.load_dataset("flower-crops"), data.load_dataset("photo-crops")
    assert flowers.features["label"].names == ["flower"] and len(flowers) > 500
    assert flowers[0]["image"].size == (32, 32)
    x_f, _ = data.tensors(flowers, 16, 3)
    x_p, _ = data.tensors(photos, 16, 3)
    half = x_f[torch.randperm(len(x_f), generator=torch.Generator().manual_seed(0))]
    within = metrics.pixel_fd(half[: len(half) // 2], half[len(half) // 2:])
    assert metrics.pixel_fd(x_p[::4], x_f) > 5 * within


def test_to_tensor_scales_to_minus_one_one_and_back():
    ds = data.load_dataset("digits")
    x = data.to_tensor(ds[:4]["image"], 16, 1)
    assert x.shape == (4, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1, "black 0 -> -1 and white 255 -> 1"
    rgb = data.to_tensor(ds[0]["image"], 16, 3)
    assert rgb.shape == (1, 3, 16, 16)
    back = data.to_pil(data.to_tensor(ds[0]["image"], 8, 1))[0]
    assert back.tobytes() == ds[0]["image"].tobytes()


def test_to_tensor_takes_height_and_width():
    ds = data.load_dataset("digits")
    x = data.to_tensor(ds[:2]["image"], (16, 8), 1)
    assert x.shape == (2, 1, 16, 8)
    torch.testing.assert_close(x, data.to_tensor(ds[:2]["image"], [16, 8], 1))


def test_each_dataset_names_its_splits_and_a_valid_split_passes_the_check():
    assert data.dataset_splits("digits") == data.dataset_splits("music") == ("train",)
    assert data.dataset_splits("mnist") == data.dataset_splits("ylecun/mnist") == ("train", "test")
    assert data.dataset_splits("lewtun/music_genres_small") == ("train",)
    with pytest.raises(data.DataError, match=r"ylecun/mnist .*data.load_dataset\('digits'\)"):
        data.load_dataset("mnist", split="test")  # offline: the split is valid, the Hub is what is missing


def test_to_pil_handles_rgb_and_single_images():
    x = torch.linspace(-1, 1, 3 * 4 * 4).reshape(3, 4, 4)
    im = data.to_pil(x)[0]
    assert im.mode == "RGB" and im.size == (4, 4)
    assert im.getpixel((0, 0)) == (0, 87, 174)  # channels start at -1, -1 + 32/47, -1 + 64/47
    assert data.to_pil(torch.zeros(0, 1, 4, 4)) == []


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 1, 8, 8) * 255, r"0\.\.255 pixels use x / 127.5 - 1"),
    (torch.zeros(2, 2, 8, 8), r"shape \(N, 1 or 3, H, W\)"),
    (torch.zeros(8, 8), r"shape"),
    (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "float tensor"),
    ([[0.0]], "torch tensor"),
])
def test_to_pil_refuses_bad_input_clearly(bad, message):
    with pytest.raises(data.DataError, match=message):
        data.to_pil(bad)


def test_to_tensor_refuses_bad_channels_and_non_images():
    with pytest.raises(data.DataError, match="channels must be 1"):
        data.to_tensor(Image.new("L", (8, 8)), 8, 2)
    with pytest.raises(data.DataError, match="PIL images"):
        data.to_tensor([torch.zeros(8, 8)], 8, 1)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(data.DataError, match=r"unknown dataset 'cifar'.*digits.*photo-crops.*mnist"):
        data.load_dataset("cifar")


def test_full_track_dataset_offline_suggests_the_small_equivalent():
    with pytest.raises(data.DataError, match=r"ylecun/mnist .*HF_HUB_OFFLINE.*data.load_dataset\('digits'\)"):
        data.load_dataset("mnist")
    with pytest.raises(data.DataError, match=r"flower-crops"):
        data.load_dataset("huggan/smithsonian_butterflies_subset")


def test_full_track_dataset_loads_from_the_snapshot_of_its_pinned_revision(tmp_path, monkeypatch):
    """The full-track path, with the Hub cache holding two revisions of a dataset of the real
    columns: data.load reads the pinned one from disk, with no network."""
    import datasets
    from huggingface_hub import constants

    from coursekit import hub
    from tests.helpers import fake_hub_snapshot

    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    for rev, n in (("a" * 40, 3), ("b" * 40, 5)):
        snapshot = tmp_path / "hub" / "datasets--huggan--smithsonian_butterflies_subset" / "snapshots" / rev
        if rev == "a" * 40:
            snapshot = fake_hub_snapshot(tmp_path / "hub", "huggan/smithsonian_butterflies_subset", rev, kind="dataset")
        (snapshot / "data").mkdir(parents=True)
        datasets.Dataset.from_dict({"image": [Image.new("RGB", (6, 4))] * n, "name": ["x"] * n}, features=features
                                   ).to_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(hub, "pins", lambda: {"huggan/smithsonian_butterflies_subset": "b" * 40})
    ds = data.load_dataset("butterflies")
    assert ds.column_names == ["image"] and len(ds) == 5 and ds[0]["image"].size == (6, 4)


def test_loader_gives_reproducible_shuffled_batches():
    ds = data.load_dataset("digits")
    a = next(iter(data.loader(ds, 16, 1, 8, seed=3)))
    b = next(iter(data.loader(ds, 16, 1, 8, seed=3)))
    assert a["images"].shape == (8, 1, 16, 16) and a["labels"].shape == (8,)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
