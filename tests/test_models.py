"""Networks: shapes on odd multiples of the stride, the remover's untouched-outside rule,
the shipped weights load, and a few training steps lower the loss."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from clearmark.models import STRIDE, build_model, load_model, weights_path
from clearmark.models import train as training
from clearmark.models.networks import remover_input
from clearmark.models.registry import ModelEngine
from clearmark.models.train import LOSSES, detector_batch, load_init, remover_batch, select_trainable
from clearmark.settings import get_settings

torch.set_num_threads(1)


@pytest.mark.parametrize("h,w", [(48, 80), (16, 144), (STRIDE, STRIDE)])
def test_shapes(h, w):
    det, rem = build_model("detector").eval(), build_model("remover").eval()
    with torch.inference_mode():
        p = det(torch.rand(2, 3, h, w))
        r = rem(torch.rand(2, 7, h, w))
    assert p.shape == (2, 1, h, w) and r.shape == (2, 4, h, w)
    assert 0 <= p.min() and p.max() <= 1 and 0 <= r.min() and r.max() <= 1


def test_remover_leaves_outside_mask_unchanged():
    rem = build_model("remover").eval()
    x = torch.rand(1, 7, 64, 96)
    x[:, 3] = 0
    x[:, 3, 20:40, 30:70] = 1
    with torch.inference_mode():
        out = rem(x)
    outside = x[:, 3:4].expand(-1, 3, -1, -1) == 0
    assert torch.equal(out[:, :3][outside], x[:, :3][outside])
    assert not out[:, 3][x[:, 3] == 0].any()  # no watermark outside the mask either


def test_remover_input_prefills_only_the_hole():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :, 1] = 200
    rgb[10:20, 20:40] = (255, 0, 255)  # the "mark"
    mask = np.zeros((40, 60), np.float32)
    mask[8:22, 18:42] = 1
    x = remover_input(rgb, mask)
    assert x.shape == (7, 40, 60) and x.dtype == np.float32
    assert np.array_equal(x[:3], rgb.transpose(2, 0, 1) / np.float32(255)) and np.array_equal(x[3], mask)
    fill = np.rint(x[4:] * 255).astype(int)
    assert np.array_equal(fill[:, mask == 0], x[:3][:, mask == 0] * 255)  # untouched outside
    assert np.abs(fill[:, 10:20, 20:40] - np.array([0, 200, 0])[:, None, None]).max() <= 4


def _older_remover(in_channels: int) -> dict:
    """Random weights shaped like an earlier remover: `in_channels` inputs, no mask head,
    no mark refiner."""
    old = {
        k: torch.randn_like(v) if v.is_floating_point() and "running" not in k else v
        for k, v in build_model("remover").state_dict().items()
        if not k.startswith("refine.")
    }
    first = old["net.downs.0.0.weight"]
    old["net.downs.0.0.weight"] = torch.randn(first.shape[0], in_channels, *first.shape[2:])
    old["net.head.weight"], old["net.head.bias"] = old["net.head.weight"][:8], old["net.head.bias"][:8]
    return old


def test_load_init_widens_a_single_stage_remover():
    old = _older_remover(4)
    model = build_model("remover")
    load_init(model, old)
    state = model.state_dict()
    assert torch.equal(state["net.downs.0.0.weight"][:, :4], old["net.downs.0.0.weight"])
    assert not state["net.downs.0.0.weight"][:, 4:].any()  # the prefill starts unused
    assert not state["net.head.weight"][4:7].any() and not state["net.head.bias"][4:7].any()
    assert torch.equal(state["net.head.weight"][:4], old["net.head.weight"][:4])


def test_load_init_starts_the_mask_head_as_thresholded_opacity():
    torch.manual_seed(0)
    old = _older_remover(7)
    model = build_model("remover").eval()
    load_init(model, old)
    x = torch.rand(1, 7, 32, 48)
    x[:, 3] = 1.0
    with torch.inference_mode():
        _, alpha, mark = model.parts(x)
    off_edge = (torch.logit(alpha.double()) + 4).abs() > 1e-4  # float rounding decides there
    threshold = torch.sigmoid(torch.tensor(-4.0))
    assert torch.equal((mark >= 0.5)[off_edge], (alpha >= threshold)[off_edge])
    assert 0 < float((mark >= 0.5).float().mean()) < 1  # a real split, not all one side


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_shipped_weights_load(kind):
    if not weights_path(kind).exists():
        pytest.skip("no shipped weights")
    model = load_model(kind)
    assert not model.training
    assert weights_path(kind).stat().st_size < 20 * 1024 * 1024


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    make = detector_batch if kind == "detector" else remover_batch
    batch = make(rng, 4, 32, source="studio")
    model = build_model(kind, base=8)
    losses = _losses_over_steps(LOSSES[kind], model, select_trainable(model, "all"), batch)
    assert losses[-1] < losses[0]


def _losses_over_steps(loss_of, model, params, batch, steps: int = 12) -> list[float]:
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_train_zero_steps_converts_older_weights(tmp_path):
    from clearmark.models.train import train

    old = tmp_path / "old.pt"
    torch.save(_older_remover(7), old)
    recipe = train("remover", steps=0, init=old, out_dir=tmp_path / "out")
    state = torch.load(tmp_path / "out" / "remover.pt", weights_only=True)
    assert recipe["steps_done"] == 0 and state["net.head.weight"].shape[0] == 9
    assert torch.equal(state["net.head.bias"][8], torch.load(old)["net.head.bias"][0] + 4.0)


def test_mark_head_training_moves_only_the_refiner_and_lowers_its_loss(tmp_path, grocery_data):
    from clearmark.models.train import mark_head_loss, train

    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    torch.save(build_model("remover").state_dict(), init)
    train(
        "remover",
        steps=2,
        batch=2,
        crop=32,
        init=init,
        out_dir=tmp_path / "out",
        trainable="mark-head",
        data_dir=grocery_data,
    )
    before, after = torch.load(init), torch.load(tmp_path / "out" / "remover.pt")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("refine.") for k in moved)  # BN statistics too stay

    model = build_model("remover", base=8)
    params = select_trainable(model, "mark-head")
    assert not model.net.training and {id(p) for p in params} == {id(p) for p in model.refine.parameters()}
    batch = remover_batch(np.random.default_rng(1), 4, 32, source="studio")
    losses = _losses_over_steps(mark_head_loss, model, params, batch)
    assert losses[-1] < losses[0]


def _uniform_detector(logit: float) -> ModelEngine:
    """A real detector whose every pixel scores sigmoid(logit)."""
    model = build_model("detector", base=8)
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.fill_(logit)
    return ModelEngine(model)


def test_remover_batch_masks_crops_as_the_detector_would(monkeypatch):
    def batch(logit: float):
        x, _, alpha = remover_batch(
            np.random.default_rng(3), 4, 48, source="studio", detector=_uniform_detector(logit)
        )
        return x[:, 3], alpha

    monkeypatch.setattr(training, "DETECTOR_MASK_SHARE", 1.0)
    monkeypatch.setattr(training, "DETECTOR_CLEAN_SHARE", 0.0)
    assert bool((batch(20.0)[0] == 1).all())
    nowhere = batch(-20.0)[0]  # it finds nothing, so each crop gets the noisy true mask
    assert not (nowhere == 1).flatten(1).all(1).any() and (nowhere > 0).flatten(1).any(1).all()
    monkeypatch.setattr(training, "DETECTOR_CLEAN_SHARE", 1.0)
    mask, alpha = batch(20.0)  # photos without a mark: all it finds is false alarms
    assert bool((mask == 1).all()) and not alpha.any()


class _RedDetector(torch.nn.Module):
    """Fires where the red channel is high."""

    def forward(self, x):
        return torch.sigmoid(40 * (x[:, :1] - 0.5))


def test_detector_mask_is_dilated_as_asked():
    from clearmark.models.train import detector_mask

    img = np.zeros((96, 96, 3), np.uint8)
    img[40:56, 40:56, 0] = 255
    masks = [detector_mask(ModelEngine(_RedDetector()), img, 96, px) for px in (3, 8)]
    assert masks[0][40:56, 40:56].all() and not masks[0][:36].any() and masks[0][37, 48]
    assert masks[1].sum() > masks[0].sum() and masks[1][32, 48] and not masks[1][30].any()


def test_training_with_detector_masks_records_that_detector(tmp_path, grocery_data):
    from clearmark.models.registry import file_sha256
    from clearmark.models.train import train

    weights = tmp_path / "detector.pt"
    torch.save(build_model("detector").state_dict(), weights)
    recipe = train(
        "remover",
        steps=1,
        batch=2,
        crop=32,
        out_dir=tmp_path / "out",
        detector_masks=weights,
        data_dir=grocery_data,
    )
    assert recipe["detector_masks"]["sha256"] == file_sha256(weights)
    assert recipe["detector_masks"]["dilate_px"] == get_settings().mask_dilate_px
    with pytest.raises(ValueError, match="remover"):
        train("detector", steps=1, detector_masks=weights)


def test_a_wider_refiner_grows_from_a_narrow_one_with_the_same_output(tmp_path, grocery_data):
    from clearmark.models.registry import load_model
    from clearmark.models.train import train

    torch.manual_seed(0)
    narrow = build_model("remover", base=8, refine_width=4)
    for param in narrow.refine.parameters():  # a trained refiner: no zero output layer
        torch.nn.init.normal_(param, std=0.3)
    wide = build_model("remover", base=8, refine_width=12)
    load_init(wide, narrow.state_dict())
    x = torch.rand(2, 7, 32, 48)
    x[:, 3] = (x[:, 3] > 0.4).float()
    with torch.inference_mode():
        assert torch.allclose(narrow.eval()(x), wide.eval()(x), atol=1e-6)
    assert wide.refine.body[0].weight[4:].abs().sum() > 0  # new channels are not dead

    init = tmp_path / "narrow.pt"
    torch.save(narrow.state_dict(), init)
    train(
        "remover",
        steps=1,
        batch=2,
        crop=32,
        arch={"base": 8},
        init=init,
        refine_width=12,
        trainable="mark-head",
        out_dir=tmp_path / "wide",
        data_dir=grocery_data,
    )
    assert load_model("remover", tmp_path / "wide").refine.body[0].weight.shape[0] == 12
    train(
        "remover",
        steps=1,
        batch=2,
        crop=32,
        arch={"base": 8},
        init=tmp_path / "wide" / "remover.pt",
        trainable="mark-head",
        out_dir=tmp_path / "again",
        data_dir=grocery_data,
    )  # width from init
    assert load_model("remover", tmp_path / "again").refine.body[0].weight.shape[0] == 12


def test_mark_head_training_is_remover_only():
    from clearmark.models.train import train

    with pytest.raises(ValueError, match="mark-head"):
        train("detector", steps=1, trainable="mark-head")


def test_weights_hash_follows_the_file_on_disk(tmp_path):
    from clearmark.models.registry import weights_sha256

    assert weights_sha256("detector", tmp_path) == "untrained"
    path = tmp_path / "detector.pt"
    path.write_bytes(b"first weights")
    assert weights_sha256("detector", tmp_path) == hashlib.sha256(b"first weights").hexdigest()
    path.write_bytes(b"retrained weights")  # a new size: a new hash even with coarse mtimes
    assert weights_sha256("detector", tmp_path) == hashlib.sha256(b"retrained weights").hexdigest()


def test_worker_processes_make_the_same_batches_as_the_thread(tmp_path, grocery_data):
    from clearmark.models.feed import BatchRecipe, batches
    from clearmark.models.train import make_batch

    detector = _uniform_detector(20.0).model  # finds the whole window: no threshold noise
    torch.save(detector.state_dict(), tmp_path / "detector.pt")
    (tmp_path / "manifest.json").write_text('{"detector": {"architecture": {"base": 8}}}')
    for recipe in (
        BatchRecipe("detector", seed=4, batch=2, crop=32, data_dir=grocery_data),
        BatchRecipe(
            "remover",
            seed=4,
            batch=2,
            crop=32,
            data_dir=grocery_data,
            detector_masks=tmp_path / "detector.pt",
        ),
    ):
        thread = list(batches(make_batch, recipe, 3, workers=0))
        procs = list(batches(make_batch, recipe, 3, workers=2))
        assert len(thread) == len(procs) == 3
        for ours, theirs in zip(thread, procs):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        assert not torch.equal(thread[0][0], thread[1][0])  # each step its own batch
    rng = np.random.default_rng([training.TRAIN_TAG, 4, 2])
    direct = detector_batch(rng, 2, 32, grocery_data)
    assert all(
        np.array_equal(a, b.numpy())
        for a, b in zip(make_batch(BatchRecipe("detector", 4, 2, 32, grocery_data), 2), direct)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is")
def test_training_on_a_missing_gpu_says_so(tmp_path):
    from click.testing import CliRunner

    from clearmark.workers.cli import cli

    res = CliRunner().invoke(
        cli, ["train", "detector", "--steps", "1", "--device", "cuda", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "no CUDA GPU" in res.output
    assert not (tmp_path / "detector.pt").exists()


def test_fine_tuning_keeps_the_lineage_in_the_manifest(tmp_path, grocery_data):
    import json

    from click.testing import CliRunner

    from clearmark.models.registry import file_sha256
    from clearmark.workers.cli import cli

    def run(*extra, out=tmp_path):
        res = CliRunner().invoke(
            cli,
            [
                "train",
                "detector",
                "--steps",
                "1",
                "--batch",
                "2",
                "--crop",
                "32",
                "--data",
                str(grocery_data),
                "--out",
                str(out),
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
        return json.loads((out / "manifest.json").read_text())["detector"]

    first = run()
    assert first["history"] == [] and first["recipe"]["command"].startswith(
        "clearmark train detector --steps 1 --batch 2 --crop 32 --seed 0"
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["detector"]["eval"] = {"model": {"f1": 0.5}}  # numbers of the first weights
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    copy = tmp_path / "first.pt"
    copy.write_bytes((tmp_path / "detector.pt").read_bytes())

    second = run("--init", str(copy), "--seed", "3")
    assert "eval" not in second and second["sha256"] != first["sha256"]
    assert [h["sha256"] for h in second["history"]] == [first["sha256"]]
    assert second["history"][0]["seed"] == 0 and second["recipe"]["seed"] == 3
    assert file_sha256(copy) in second["recipe"]["init"]

    elsewhere = run("--init", str(tmp_path / "detector.pt"), out=tmp_path / "elsewhere")
    assert [h["sha256"] for h in elsewhere["history"]] == [first["sha256"], second["sha256"]]

    assert run("--init", str(copy))["history"] == []  # no manifest describes these weights
    assert run()["history"] == []  # from scratch


def test_missing_weights_are_an_error_naming_the_file(tmp_path, monkeypatch):
    """Never a silent fall-back to untrained weights: the engines' loader refuses too."""
    from clearmark.engine_build.sources import load_source_model
    from clearmark.models import registry

    with pytest.raises(registry.MissingWeights, match=str(tmp_path / "remover.pt")):
        registry.load_model("remover", tmp_path)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)  # a checkout without its weights
    with pytest.raises(registry.MissingWeights, match=str(tmp_path / "detector.pt")):
        load_source_model("detector")
