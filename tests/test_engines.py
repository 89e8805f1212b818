"""engine_build: ONNX export, backend parity, TensorRT engine cache, `auto` fallback.

Fast on CPU: the two fp32 ONNX exports are made once per session (a few seconds each)
into a temporary engine dir; every other test reuses them. TensorRT execution tests run
only where tensorrt, pycuda and a GPU exist and are skipped with the reason otherwise;
the TensorRT *cache* logic runs everywhere, with only the TensorRT builder call faked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import types

import numpy as np
import pytest

from clearmark.engine_build import Engine, EngineNotBuilt, load_engine, onnx_export, trt_backend
from clearmark.engine_build import base as engine_base
from clearmark.engine_build.bench import sample_batch
from clearmark.engine_build.onnx_export import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, export_onnx
from clearmark.engine_build.profiles import engine_profile, parse_profile, run_bucketed
from clearmark.engine_build.trt_cache import EngineCacheKey, cached_engine, engine_path
from clearmark.models.networks import OUT_CHANNELS
from clearmark.models.weights import weights_sha256
from clearmark.settings import Settings, get_settings, set_settings

SHAPES = [(1, 32, 48), (2, 64, 80), (3, 48, 112), (1, 80, 16)]  # odd multiples of 16 too
FAKE_IDENTITY = ("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines")
    previous = get_settings()
    set_settings(previous.replace(engine_dir=str(path), threads=2))
    yield path
    set_settings(previous)


@pytest.fixture(scope="session")
def exported(engine_dir):
    return {kind: export_onnx(kind, "fp32", engine_dir) for kind in ("detector", "remover")}


@pytest.fixture(scope="session")
def engines(exported):
    """torch and onnxruntime engines per kind, created once."""
    return {
        (kind, backend): load_engine(kind, backend=backend, device="cpu")
        for kind in ("detector", "remover")
        for backend in ("torch", "onnxruntime")
    }


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_export_is_valid_with_dynamic_shapes(exported, kind):
    import onnx
    import onnxruntime as ort

    path = exported[kind]
    onnx_export.check_onnx(path, kind)  # onnx.checker (full) + signature
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [onnx_export.ONNX_OPSET]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    # one export, one session, several batch sizes and shapes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_c = OUT_CHANNELS[kind]
    for n, h, w in SHAPES:
        y = sess.run([OUTPUT_NAME], {INPUT_NAME: sample_batch(kind, n, h, w)})[0]
        assert y.shape == (n, out_c, h, w) and y.dtype == np.float32
        assert np.isfinite(y).all()


def test_export_is_cached_by_model_identity(exported, engine_dir):
    path = exported["detector"]
    assert path.name.startswith("detector-fp32-opset18-")
    assert weights_sha256("detector") in path.name  # weights sha256 in the key
    mtime = path.stat().st_mtime_ns
    assert export_onnx("detector", "fp32", engine_dir) == path
    assert path.stat().st_mtime_ns == mtime  # not exported again


def test_corrupt_cached_onnx_is_exported_again(exported, tmp_path, monkeypatch):
    good = exported["detector"].read_bytes()
    calls = []

    def fake_export(kind, precision, dest):  # stands in for the (slow) dynamo export
        calls.append(kind)
        dest.write_bytes(good)

    monkeypatch.setattr(onnx_export, "_export", fake_export)
    target = onnx_export.onnx_path("detector", "fp32", tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(good[: len(good) // 2])  # truncated file
    assert export_onnx("detector", "fp32", tmp_path) == target
    assert calls == ["detector"]
    assert target.read_bytes() == good
    export_onnx("detector", "fp32", tmp_path)
    assert calls == ["detector"]  # valid now: reused


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["detector", "remover"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity_torch_vs_onnxruntime(engines, kind, shape):
    x = sample_batch(kind, *shape, seed=sum(shape))
    ref = engines[(kind, "torch")].run(x)
    got = engines[(kind, "onnxruntime")].run(x)
    assert ref.shape == got.shape == (shape[0], OUT_CHANNELS[kind], *shape[1:])
    assert ref.dtype == got.dtype == np.float32
    assert float(np.abs(ref - got).max()) <= 1e-3


def test_batch_equals_single_images(engines):
    eng = engines[("remover", "onnxruntime")]
    x = sample_batch("remover", 3, 32, 48, seed=5)
    batched = eng.run(x)
    singles = np.concatenate([eng.run(x[i : i + 1]) for i in range(3)])
    assert np.abs(batched - singles).max() <= 1e-5


def test_engine_interface_and_keys(engines):
    t, o = engines[("detector", "torch")], engines[("detector", "onnxruntime")]
    for eng in (t, o):
        assert isinstance(eng, Engine) and eng.stride == 16 and eng.kind == "detector"
        assert eng.key.startswith(f"detector:{weights_sha256('detector')[:12]}:")
    assert t.backend == "torch" and o.backend == "onnxruntime"
    assert t.key != o.key
    assert "onnxruntime:CPUExecutionProvider:opset18" in o.key
    assert "torch:cpu:fp32" in t.key


@pytest.mark.parametrize("bad", [(1, 4, 32, 32), (1, 3, 40, 32), (3, 32, 32)])
def test_run_rejects_bad_input(engines, bad):
    with pytest.raises(ValueError):
        engines[("detector", "onnxruntime")].run(np.zeros(bad, np.float32))


# --------------------------------------------------------------------------- cache keys


def _key(**changes) -> EngineCacheKey:
    base = EngineCacheKey(
        kind="detector",
        weights_sha256="a" * 64,
        onnx_sha256="b" * 64,
        trt_version="10.3.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        profile="1x32x32,1x512x512,8x1024x1024",
    )
    return dataclasses.replace(base, **changes)


def test_every_key_field_changes_the_key():
    base = _key()
    other = {
        "kind": "remover",
        "weights_sha256": "c" * 64,
        "onnx_sha256": "d" * 64,
        "trt_version": "10.4.0",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "precision": "fp32",
        "profile": "1x32x32,1x256x256,4x512x512",
    }
    assert set(other) == {f.name for f in dataclasses.fields(EngineCacheKey)}
    digests = {base.digest}
    for name, value in other.items():
        changed = _key(**{name: value})
        assert changed.digest != base.digest, name
        assert changed.file_name() != base.file_name(), name
        digests.add(changed.digest)
    assert len(digests) == len(other) + 1
    assert _key().digest == base.digest  # and it is deterministic


def test_each_model_has_one_profile_sized_to_what_the_pipeline_sends():
    s = get_settings().replace(detect_long_side=640, remove_max_crop=1024)
    det, rem = engine_profile("detector", s), engine_profile("remover", s)
    assert str(det) == "1x16x16,2x640x640,2x640x640"  # a photo and its mirror, long side 640
    assert str(rem) == "1x128x128,2x512x512,8x1024x1024"  # the crop buckets, batches of 8
    assert str(engine_profile("detector", s.replace(detect_long_side=650))).endswith("2x656x656")
    assert str(engine_profile("remover", s.replace(remove_max_crop=1500))).endswith("8x1504x1504")
    assert det.contains(2, 640, 432) and not det.contains(3, 64, 64) and not det.contains(1, 16, 656)
    assert rem.nchw(7)[2] == (8, 7, 1024, 1024)
    batched = s.replace(batch_max=16)  # batching across jobs: calls of up to 16 images
    assert str(engine_profile("detector", batched)) == "1x16x16,2x640x640,16x640x640"
    assert str(engine_profile("remover", batched)).endswith(",16x1024x1024")


def test_profile_parsing():
    p = parse_profile("1x16x16,1x512x512,8x1024x1024")
    assert str(p) == "1x16x16,1x512x512,8x1024x1024"
    assert p.contains(1, 16, 16) and p.contains(8, 1024, 1024) and not p.contains(9, 64, 64)
    assert parse_profile("64,2x128x128,4x256x512").min.batch == 1
    for bad in ("1x32x32,1x64x64", "1x30x32,1x64x64,1x128x128", "4x64x64,1x64x64,8x64x64", "a,b,c"):
        with pytest.raises(ValueError):
            parse_profile(bad)


def test_precision_plan_follows_tensorrt_version():
    plan = trt_backend.plan_precision
    assert plan("fp16", "10.3.0", "8.9") == ("fp16", "fp16", True)  # the fp16 graph, typed
    assert plan("fp16", "11.4.0", "8.9") == ("fp16", "fp16", False)  # 11 types every network
    assert plan("fp16", "10.3.0", "6.1")[0] == "fp32"  # no fast fp16 on this GPU
    assert plan("fp32", "10.3.0", "9.0") == plan("fp32", "11.4.0", "9.0") == ("fp32", "fp32", False)
    with pytest.raises(ValueError, match="fp32 or fp16"):
        plan("int8", "10.3.0", "9.0")  # INT8 calibration is gone


# --------------------------------------------------------------------------- engine cache


@pytest.fixture
def trt_dir(exported, engine_dir, tmp_path):
    """A fresh engine dir holding copies of the session's ONNX files (no re-export)."""
    shutil.copytree(engine_dir / "onnx", tmp_path / "onnx")
    return tmp_path


class FakeBuilder:
    """Replaces only the TensorRT builder call; everything around it is the real code."""

    def __init__(self):
        self.plans = []

    def __call__(self, plan):
        self.plans.append(plan)
        return f"FAKE-ENGINE {plan.kind} {plan.precision} {plan.profile} #{len(self.plans)}".encode()


def _ensure(engine_dir, builder, **kw):
    kw.setdefault("identity", FAKE_IDENTITY)
    return trt_backend.ensure_engine(
        "detector",
        kw.pop("precision", "fp32"),
        kw.pop("profile", "1x32x32,1x64x64,2x128x128"),
        engine_dir,
        builder=builder,
        **kw,
    )


def test_engine_cache_builds_once_then_reuses(trt_dir):
    builder = FakeBuilder()
    first = _ensure(trt_dir, builder)
    assert first.built and len(builder.plans) == 1
    plan = builder.plans[0]
    assert plan.workspace_mb == get_settings().trt_workspace_mb
    assert plan.timing_cache.parent == first.path.parent  # timing cache beside the engines
    assert plan.profile == parse_profile("1x32x32,1x64x64,2x128x128")
    assert first.key.weights_sha256 == weights_sha256("detector")  # what the ONNX graph holds
    assert first.key.gpu_name == FAKE_IDENTITY[1] and first.key.trt_version == "10.3.0"
    second = _ensure(trt_dir, builder)
    assert not second.built and second.data == first.data and len(builder.plans) == 1
    # another profile, precision or GPU is another engine, never the cached one
    _ensure(trt_dir, builder, profile="1x32x32,1x128x128,4x256x256")
    _ensure(trt_dir, builder, identity=("10.3.0", "NVIDIA L4", "8.9"))
    _ensure(trt_dir, builder, identity=("10.4.0", *FAKE_IDENTITY[1:]))
    assert len(builder.plans) == 4


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "no-meta", "bad-meta"])
def test_corrupt_engine_file_is_rebuilt(trt_dir, damage):
    builder = FakeBuilder()
    first = _ensure(trt_dir, builder)
    path, meta = first.path, first.path.with_suffix(".engine.json")
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:5] + bytes([data[5] ^ 0xFF]) + data[6:])
    elif damage == "truncate":
        path.write_bytes(data[:-3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "no-meta":
        meta.unlink()
    else:
        meta.write_text("{not json")
    assert cached_engine(trt_dir, first.key)[0] is None
    again = _ensure(trt_dir, builder)
    assert again.built and len(builder.plans) == 2
    assert path.read_bytes() == again.data != data
    assert cached_engine(trt_dir, first.key)[0] == again.data  # valid again afterwards


@pytest.mark.parametrize(
    "field",
    [
        "trt_version",
        "gpu_name",
        "compute_capability",
        "precision",
        "profile",
        "weights_sha256",
        "onnx_sha256",
    ],
)
def test_mismatched_engine_file_is_rebuilt(trt_dir, field):
    builder = FakeBuilder()
    first = _ensure(trt_dir, builder)
    meta_path = first.path.with_suffix(".engine.json")
    meta = json.loads(meta_path.read_text())
    meta["key"][field] = "something-else"  # e.g. an engine from another TensorRT or GPU
    meta_path.write_text(json.dumps(meta))
    data, why = cached_engine(trt_dir, first.key)
    assert data is None and field in why
    assert _ensure(trt_dir, builder).built and len(builder.plans) == 2


def test_new_weights_give_a_new_engine(trt_dir, monkeypatch):
    builder = FakeBuilder()
    first = _ensure(trt_dir, builder)
    monkeypatch.setattr(trt_backend, "recorded_weights", lambda path: "f" * 64)
    second = _ensure(trt_dir, builder)
    assert second.built and second.path != first.path and len(builder.plans) == 2


def test_prune_deletes_only_files_from_other_weights_or_code(trt_dir, monkeypatch):
    from click.testing import CliRunner

    from clearmark.workers.commands.engines import engines_group

    builder = FakeBuilder()
    current = _ensure(trt_dir, builder)
    other_gpu = _ensure(trt_dir, builder, identity=("10.3.0", "NVIDIA L4", "8.9"))
    with monkeypatch.context() as m:  # an engine built from earlier weights
        m.setattr(trt_backend, "recorded_weights", lambda path: "f" * 64)
        old = _ensure(trt_dir, builder)
    orphan = trt_dir / "tensorrt" / "remover-fp16-0123456789abcdef0123.engine"
    orphan.write_bytes(b"no sidecar")
    old_onnx = trt_dir / "onnx" / f"detector-fp32-opset{ONNX_OPSET}-{'e' * 64}-0123456789ab.onnx"
    old_onnx.write_bytes(b"graph of earlier weights")
    kept = sorted((trt_dir / "onnx").glob("*.onnx"))
    kept.remove(old_onnx)
    assert kept, "the session's current exports are in the dir"
    set_settings(get_settings().replace(engine_dir=str(trt_dir)))  # undone by _restore_settings

    dry = CliRunner().invoke(engines_group, ["prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "4 stale file(s)" in dry.output and old.path.exists() and old_onnx.exists()
    res = CliRunner().invoke(engines_group, ["prune"])
    assert res.exit_code == 0, res.output
    assert not old.path.exists() and not old.path.with_suffix(".engine.json").exists()
    assert not orphan.exists() and not old_onnx.exists()
    assert current.path.exists() and other_gpu.path.exists()
    assert all(p.exists() for p in kept)
    assert cached_engine(trt_dir, current.key)[0] == current.data


def test_engine_path_layout(tmp_path):
    key = _key()
    assert engine_path(tmp_path, key) == tmp_path / "tensorrt" / key.file_name()
    assert key.file_name().startswith("detector-fp16-")


# --------------------------------------------------------------------------- auto


def _hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def _fake_pycuda(monkeypatch, count: int):
    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None
    driver.Device = types.SimpleNamespace(count=lambda: count)
    pkg = types.ModuleType("pycuda")
    pkg.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)


def test_tensorrt_status_reasons(monkeypatch):
    _hide(monkeypatch, "tensorrt")
    ok, why = trt_backend.tensorrt_status()
    assert not ok and "tensorrt not importable" in why

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    _hide(monkeypatch, "pycuda", "pycuda.driver")
    ok, why = trt_backend.tensorrt_status()
    assert not ok and "pycuda not importable" in why

    _fake_pycuda(monkeypatch, count=0)
    ok, why = trt_backend.tensorrt_status()
    assert not ok and "no CUDA GPU" in why

    _fake_pycuda(monkeypatch, count=1)
    for version, usable in (("9.3.0", False), ("10.3.0", True), ("11.4.0", True), ("12.0.0", False)):
        monkeypatch.setattr(sys.modules["tensorrt"], "__version__", version, raising=False)
        ok, why = trt_backend.tensorrt_status()
        assert ok == usable, (version, why)
        assert usable or why == f"tensorrt {version} is not supported (clearmark needs TensorRT 10 or 11)"


@pytest.mark.parametrize("missing", [("tensorrt",), ("pycuda", "pycuda.driver")])
def test_auto_falls_back_when_tensorrt_or_pycuda_missing(exported, monkeypatch, caplog, missing):
    if "tensorrt" not in missing:
        monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    _hide(monkeypatch, *missing)
    caplog.set_level(logging.INFO, logger="clearmark.engine_build")
    eng = load_engine("detector", backend="auto", device="cuda")
    assert eng.backend in ("torch", "onnxruntime")  # torch on CUDA where a GPU exists
    assert f"{missing[0]} not importable" in caplog.text
    assert eng.run(sample_batch("detector", 1, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(engine_base.BackendUnavailable, match="not importable"):
        load_engine("detector", backend="tensorrt", device="cuda")


def test_auto_falls_back_when_engine_build_fails(exported, monkeypatch, caplog):
    monkeypatch.setattr(trt_backend, "tensorrt_status", lambda: (True, "fake"))

    def broken(*a, **kw):
        raise RuntimeError("parser failed")

    monkeypatch.setattr(trt_backend, "TrtEngine", broken)
    eng = load_engine("detector", backend="auto", device="cuda")
    assert eng.backend != "tensorrt" and "parser failed" in caplog.text


def test_auto_on_cpu_picks_the_measured_faster_backend(exported):
    eng = load_engine("remover", backend="auto", device="cpu")
    assert eng.backend == engine_base.CPU_AUTO_BACKEND == "onnxruntime"


def test_explicit_settings_object_is_honoured(trt_dir):
    settings = get_settings().replace(engine_dir=str(trt_dir), threads=1, backend="auto")
    eng = load_engine("detector", backend=None, device=None, settings=settings)
    assert eng.backend == "onnxruntime" and eng.threads == 1
    assert eng.path.parent == trt_dir / "onnx"  # not the process-wide engine dir


def test_unknown_backend_and_device():
    with pytest.raises(ValueError):
        load_engine("detector", backend="openvino", device="cpu")
    with pytest.raises(ValueError):
        load_engine("detector", backend="torch", device="tpu")
    with pytest.raises(ValueError):
        load_engine("segmenter", backend="torch", device="cpu")


# --------------------------------------------------------------------------- CLI


def test_cli_export_bench_and_build(exported):
    from click.testing import CliRunner

    from clearmark.workers.commands.engines import bench_command, engines_group

    runner = CliRunner()
    res = runner.invoke(engines_group, ["export", "--kind", "detector"])
    assert res.exit_code == 0, res.output
    assert str(exported["detector"]) in res.output
    res = runner.invoke(
        bench_command,
        ["--backend", "onnxruntime", "--backend", "torch", "--size", "32", "--seconds", "0", "--warmup", "1"],
    )
    assert res.exit_code == 0, res.output
    assert "images/s" in res.output and "ms/image" in res.output
    assert res.output.count("detector") >= 2 and res.output.count("remover") >= 2
    # `build` makes what workers load with these settings: here (no GPU) the ONNX exports.
    res = runner.invoke(engines_group, ["build", "--kind", "detector"])
    assert res.exit_code == 0, res.output
    assert (
        res.output
        == f"detector: {load_engine('detector', device='cpu').key} cached: {exported['detector']}\n"
    )
    if not trt_backend.tensorrt_status()[0]:
        set_settings(get_settings().replace(backend="tensorrt"))  # undone by _restore_settings
        res = runner.invoke(engines_group, ["build"])
        assert (
            res.exit_code == 1
            and "Error: tensorrt backend unavailable: tensorrt not importable" in res.output
        )


def test_cli_bench_pipeline_times_every_stage_of_real_photos(monkeypatch, grocery_data):
    from click.testing import CliRunner

    from clearmark.pipeline.stages import STAGES
    from clearmark.workers.commands.engines import bench_command
    from clearmark.workers.pipeline_bench import bench_images, bench_pipeline

    # The bench photos come from the eval set, whose photo backgrounds are read from the
    # default data dir (../shared/data, not in the repository): use generated ones.
    monkeypatch.setattr("clearmark.models.scenes.DEFAULT_DATA", grocery_data)
    files = bench_images(2, 160)
    assert len(files) == 2 and all(f[:2] == b"\xff\xd8" for f in files)  # JPEG files
    row = bench_pipeline(files, "torch", flip=False)
    assert row.images == 2 and sum(row.statuses.values()) == 2 and len(row.total_ms) == 2
    assert set(row.stage_ms) == set(STAGES) and row.stage_ms["detect"] > 0
    assert sum(row.stage_ms.values()) <= sum(row.total_ms) / 2  # the stages are laps of it
    res = CliRunner().invoke(
        bench_command, ["--pipeline", "--backend", "torch", "--images", "1", "--size", "96", "--warmup", "0"]
    )
    assert res.exit_code == 0, res.output
    assert "detect ms" in res.output and "residual ms" in res.output
    assert [line.split()[:2] for line in res.output.splitlines()[2:]] == [["torch", "on"], ["torch", "off"]]


def test_cli_benches_without_shared_data_use_studio_scenes_or_your_photos(tmp_path, no_shared_data):
    """A clone has no ../shared/data: --pipeline and --jpeg run on studio scenes the project
    draws itself (one line on stderr says so), or on --photos; a --photos folder without
    images is a one-line usage error."""
    from click.testing import CliRunner

    from clearmark.workers.commands.engines import bench_command
    from tests.services import product_photo

    runner = CliRunner()
    pipeline = ["--pipeline", "--backend", "torch", "--images", "2", "--size", "96", "--warmup", "0"]
    res = runner.invoke(bench_command, pipeline)  # seed 0's second image has a photo background
    assert res.exit_code == 0 and res.exception is None, res.output
    assert res.stderr.startswith(f"no photos in {no_shared_data}/grocery") and res.stderr.count("\n") == 1
    assert [line.split()[:4] for line in res.stdout.splitlines()[2:]] == [
        ["torch", "on", "96", "2"],
        ["torch", "off", "96", "2"],
    ]
    jpeg = runner.invoke(bench_command, ["--jpeg", "--images", "2", "--size", "128"])
    assert jpeg.exit_code == 0 and jpeg.exception is None, jpeg.output
    assert jpeg.stderr.startswith("no product photos in ../shared/data/products")
    assert [line.split()[:3] for line in jpeg.stdout.splitlines()[1:5]] == [
        ["corner", "exact", "2"],
        ["corner", "full", "2"],
        ["centre", "exact", "2"],
        ["centre", "full", "2"],
    ]

    photos = tmp_path / "mine"
    (photos / "shoes").mkdir(parents=True)
    product_photo(1).save(photos / "a.png")
    product_photo(2).save(photos / "shoes" / "b.jpg", quality=90)
    mine = runner.invoke(bench_command, [*pipeline, "--photos", str(photos)])
    assert mine.exit_code == 0 and "no photos" not in mine.stderr, mine.output
    assert [line.split()[:4] for line in mine.stdout.splitlines()[2:]][0] == ["torch", "on", "96", "2"]
    mine = runner.invoke(bench_command, ["--jpeg", "--images", "1", "--photos", str(photos)])
    assert mine.exit_code == 0 and "no product photos" not in mine.stderr, mine.output
    assert mine.stdout.splitlines()[1].split()[:3] == ["corner", "exact", "1"]

    empty = tmp_path / "empty"
    empty.mkdir()
    for mode in ("--pipeline", "--jpeg"):
        refused = runner.invoke(bench_command, [mode, "--photos", str(empty)])
        assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit), refused.output
        assert refused.output.splitlines()[-1] == f"Error: Invalid value for --photos: no images in {empty}"


# --------------------------------------------------------------------------- TensorRT


def _require_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU host)")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    if trt_backend.cuda_device_count() < 1:
        pytest.skip("no CUDA GPU visible to pycuda")


@pytest.fixture(scope="module")
def trt_profile():
    return "1x16x16,2x64x64,4x128x128"


@pytest.mark.parametrize("kind", ["detector", "remover"])
def test_tensorrt_fp32_matches_onnxruntime(engines, engine_dir, trt_profile, kind):
    _require_tensorrt()
    from clearmark.engine_build.trt_backend import TrtEngine

    eng = TrtEngine(kind, "cuda:0", precision="fp32", profile=trt_profile)
    assert eng.backend == "tensorrt" and "fp32" in eng.key
    for shape in SHAPES:
        x = sample_batch(kind, *shape, seed=3)
        ref = run_bucketed(engines[(kind, "onnxruntime")].run, x, eng.buckets)  # the same padding
        assert np.abs(eng.run(x) - ref).max() <= 1e-3
    with pytest.raises(ValueError, match="outside its TensorRT engine's profile"):
        eng.run(sample_batch(kind, 8, 32, 32))


def test_tensorrt_fp16_close_to_onnxruntime(engines, engine_dir, trt_profile):
    _require_tensorrt()
    from clearmark.engine_build.trt_backend import TrtEngine

    eng = TrtEngine("remover", "cuda:0", precision="fp16", profile=trt_profile)
    x = sample_batch("remover", 2, 64, 80, seed=4)
    ref = run_bucketed(engines[("remover", "onnxruntime")].run, x, eng.buckets)
    assert np.abs(eng.run(x) - ref).max() <= 3e-2


def test_tensorrt_engine_cache_and_corrupt_file(engine_dir, trt_profile):
    _require_tensorrt()
    from clearmark.engine_build.trt_backend import TrtEngine, ensure_engine

    first = ensure_engine("detector", "fp32", trt_profile, engine_dir)
    assert not ensure_engine("detector", "fp32", trt_profile, engine_dir).built
    first.path.write_bytes(first.path.read_bytes()[:1000])  # corrupt it
    eng = TrtEngine("detector", "cuda:0", precision="fp32", profile=trt_profile)
    assert eng.run(sample_batch("detector", 1, 32, 32)).shape == (1, 1, 32, 32)
    assert cached_engine(engine_dir, first.key)[0] is not None


def test_tensorrt_auto_prefers_tensorrt(exported):
    _require_tensorrt()
    assert load_engine("detector", backend="auto", device="cuda").backend == "tensorrt"


# --------------------------------------------------------------------------- TensorRT code
# path against a fake API (here, where TensorRT cannot run). The fake mimics the
# TensorRT 10 and 11 / pycuda calls the backend makes and executes the parsed ONNX graph with
# ONNX Runtime, so the real build, cache, buffer and run code is exercised end to end.
# It proves the plumbing, not the real API: the tests above do that on a GPU host.


class _Enum:
    def __init__(self, *names):
        for i, n in enumerate(names):
            setattr(self, n, i)


def _make_fake_cuda():
    mem: dict[int, np.ndarray] = {}
    serial = iter(range(1, 1 << 30))

    class Alloc:
        def __init__(self, n):
            self.buf = np.zeros(n, np.uint8)
            self.ptr = next(serial) << 32
            mem[self.ptr] = self.buf
            self.freed = False

        def __int__(self):
            return self.ptr

        def free(self):
            self.freed = True
            mem.pop(self.ptr, None)

    class Stream:
        handle = 7

        def synchronize(self):
            pass

    class Ctx:
        depth = 0

        def push(self):
            Ctx.depth += 1

    class Context:
        @staticmethod
        def pop():
            assert Ctx.depth > 0
            Ctx.depth -= 1

    class Device:
        def __init__(self, idx):
            self.idx = idx

        @staticmethod
        def count():
            return 1

        def name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (8, 9)

        def retain_primary_context(self):
            return Ctx()

    def htod(dst, src, stream=None):
        assert Ctx.depth > 0, "CUDA call outside an active context"
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        dst.buf[: raw.size] = raw

    def dtoh(dst, src, stream=None):
        assert Ctx.depth > 0, "CUDA call outside an active context"
        flat = dst.reshape(-1).view(np.uint8)
        flat[:] = src.buf[: flat.size]

    drv = types.ModuleType("pycuda.driver")
    drv.init = lambda: None
    drv.Device, drv.Context, drv.Stream = Device, Context, Stream
    drv.mem_alloc = lambda n: Alloc(n)
    drv.pagelocked_empty = lambda n, dtype: np.empty(n, dtype)
    drv.memcpy_htod = htod
    drv.memcpy_htod_async = htod
    drv.memcpy_dtoh_async = dtoh
    drv.mem = mem
    drv.ctx = Ctx
    return drv


def _make_fake_trt(cuda, version="10.3.0"):
    """The TensorRT API the backend uses, as 10.x or 11.x has it: 11 has no precision
    builder flags, and its STRONGLY_TYPED creation flag is a deprecated no-op."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds, trt.loggers, trt.executed = [], [], []

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            trt.loggers.append(self)

    trt.Logger = Logger
    if version.startswith("10."):
        trt.NetworkDefinitionCreationFlag = _Enum("EXPLICIT_BATCH", "STRONGLY_TYPED")
        trt.BuilderFlag = _Enum("FP16", "INT8", "TF32")
    else:
        trt.NetworkDefinitionCreationFlag = _Enum("STRONGLY_TYPED")
        trt.BuilderFlag = _Enum("DEBUG", "TF32")
    trt.MemoryPoolType = _Enum("WORKSPACE")
    trt.TensorIOMode = _Enum("NONE", "INPUT", "OUTPUT")
    trt.DataType = _Enum("FLOAT", "HALF")
    trt.nptype = lambda dt: np.float32 if dt == trt.DataType.FLOAT else np.float16

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags, self.onnx = flags, None

        num_inputs = 1

        def get_input(self, i):
            return Tensor("input")

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx = path
            return True

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timing"

    class Config:
        def __init__(self):
            self.flags, self.pool, self.profiles = {trt.BuilderFlag.TF32}, {}, []
            self.timing = None

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache
            return True

        def get_timing_cache(self):
            return self.timing

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

    class OptProfile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = {name: (lo, opt, hi)}

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            info = {
                "onnx": network.onnx,
                "flags": network.flags,
                "builder_flags": sorted(config.flags),
                "pool": config.pool,
                "shapes": config.profiles[0].shapes["input"],
            }
            trt.builds.append(info)
            return b"FAKETRT" + json.dumps(info).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addr = engine, None, {}

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.info["shapes"]
            self.shape = tuple(shape)
            return all(a <= b <= c for a, b, c in zip(lo, shape, hi))

        def get_tensor_shape(self, name):
            n, _, h, w = self.shape
            return (n, self.engine.out_c, h, w)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, handle):
            trt.executed.append(self.shape)
            count = int(np.prod(self.shape))
            x = cuda.mem[self.addr["input"]][: count * 4].view(np.float32).reshape(self.shape)
            y = self.engine.session.run(None, {"input": x.copy()})[0]
            raw = np.ascontiguousarray(y, np.float32).view(np.uint8).ravel()
            cuda.mem[self.addr["output"]][: raw.size] = raw
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, info):
            self.info = info
            self.session = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
            self.out_c = self.session.get_outputs()[0].shape[1]

        def get_tensor_name(self, i):
            return ("input", "output")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if not bytes(data).startswith(b"FAKETRT"):
                return None  # what TensorRT does with a foreign or broken plan
            return Engine(json.loads(bytes(data)[7:]))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture(scope="session")
def exported_fp16(exported, engine_dir):
    """The fp16 graphs TensorRT builds from, exported once (trt_dir copies them)."""
    return {kind: export_onnx(kind, "fp16", engine_dir) for kind in ("detector", "remover")}


@pytest.fixture(params=["10.3.0", "11.4.0"])
def fake_trt(request, exported_fp16, trt_dir, monkeypatch):
    cuda = _make_fake_cuda()
    pkg = types.ModuleType("pycuda")
    pkg.driver = cuda
    trt = _make_fake_trt(cuda, request.param)
    monkeypatch.setattr(trt_backend, "_trt_logger", functools.cache(trt_backend._trt_logger.__wrapped__))
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    set_settings(get_settings().replace(engine_dir=str(trt_dir)))  # undone by _restore_settings
    return trt, cuda, trt_dir


@pytest.fixture(autouse=True)
def _restore_settings():
    previous = get_settings()
    yield
    set_settings(previous)


def test_trt_path_with_fake_api_builds_runs_and_reuses(fake_trt, engines):
    trt, cuda, trt_dir = fake_trt
    from clearmark.engine_build.profiles import remover_buckets
    from clearmark.engine_build.trt_backend import TrtEngine

    assert trt_backend.tensorrt_status()[0]
    eng = load_engine("remover", backend="auto", device="cuda")
    assert isinstance(eng, TrtEngine) and eng.backend == "tensorrt" and eng.built
    assert ":fp32:" not in eng.key and f"fp16:trt{trt.__version__}:" in eng.key
    (build,) = trt.builds
    assert build["onnx"].endswith(".onnx") and "-fp16-" in build["onnx"]  # fp16 graph
    typed = 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert build["flags"] == (typed if trt.__version__.startswith("10.") else 0)  # 11: always typed
    assert build["builder_flags"] == [trt.BuilderFlag.TF32]  # no precision flag: typed
    assert build["pool"] == {trt.MemoryPoolType.WORKSPACE: get_settings().trt_workspace_mb << 20}
    assert [tuple(s) for s in build["shapes"]] == [(1, 7, 128, 128), (2, 7, 512, 512), (8, 7, 1024, 1024)]
    assert eng.engine_path.exists() and list(trt_dir.glob("tensorrt/timing-*.cache"))

    ref = engines[("remover", "onnxruntime")]
    buckets = remover_buckets(get_settings().remove_max_crop)
    for shape in [(1, 32, 48), (3, 64, 80), (1, 16, 16), (2, 144, 272)]:
        x = sample_batch("remover", *shape, seed=2)
        want = run_bucketed(ref.run, x, buckets)  # what the padded crop gives in fp32
        assert np.abs(eng.run(x) - want).max() <= 3e-2  # the fake runs the fp16 ONNX
    assert [s[2:] for s in trt.executed] == [(128, 128)] * 3 + [(256, 384)]  # only bucket sizes
    assert eng.buckets == buckets
    state = eng._state()
    assert state.host["in"].size >= 3 * 7 * 128 * 128  # grown once, then reused
    with pytest.raises(ValueError, match="outside its TensorRT engine's profile"):
        eng.run(sample_batch("remover", 9, 16, 16))

    again = TrtEngine("remover", "cuda", precision="fp16", build=False)
    assert len(trt.builds) == 1 and again.key == eng.key and not again.built  # cached: loaded
    eng.close()
    again.close()
    assert cuda.ctx.depth == 0
    assert len(trt.loggers) == 1  # one TensorRT logger for builder and both runtimes


def test_trt_path_with_fake_api_rebuilds_undeserialisable_engine(fake_trt):
    trt, _, trt_dir = fake_trt
    from clearmark.engine_build.trt_backend import TrtEngine, ensure_engine
    from clearmark.engine_build.trt_cache import store_engine

    first = ensure_engine("detector", "fp32", None, trt_dir)
    assert str(first.plan.profile) == "1x16x16,2x640x640,2x640x640"
    store_engine(trt_dir, first.key, b"intact on disk, rejected by this TensorRT")
    with pytest.raises(RuntimeError, match="engines build --force"):  # a worker does not build
        TrtEngine("detector", "cuda:0", precision="fp32", build=False)
    eng = TrtEngine("detector", "cuda:0", precision="fp32")
    assert len(trt.builds) == 2 and "fp32" in eng.key and eng.buckets == ()  # detector: as it comes
    assert eng.run(sample_batch("detector", 1, 32, 32)).shape == (1, 1, 32, 32)
    assert trt.executed[-1] == (1, 3, 32, 32)
    assert trt.builds[-1]["builder_flags"] == []  # TF32 cleared for fp32
    assert trt.builds[-1]["flags"] == 0  # the fp32 graph, no creation flag


def test_trt_load_only_names_the_missing_engine_and_the_command(fake_trt):
    """A worker (build=False) with no engine for this GPU, TensorRT and weights fails at
    once with one line, and `auto` does not drop to the CPU instead."""
    trt, _, trt_dir = fake_trt
    with pytest.raises(EngineNotBuilt) as caught:
        load_engine("detector", backend="auto", device="cuda", build=False)
    message = str(caught.value)
    assert "\n" not in message and not trt.builds
    assert message.startswith(
        f"no TensorRT engine for the detector (fp16, TensorRT {trt.__version__}, Fake GPU sm8.9, "
        f"weights {weights_sha256('detector')[:12]}, profile 1x16x16,2x640x640,2x640x640) in "
        f"{trt_dir / 'tensorrt'} (no cached engine): build it with `clearmark engines build`"
    )
    load_engine("detector", backend="auto", device="cuda")  # what `clearmark engines build` does
    assert load_engine("detector", backend="auto", device="cuda", build=False).backend == "tensorrt"
    assert len(trt.builds) == 1


# --------------------------------------------------------------------------- build lock


def test_two_processes_build_one_engine_once(trt_dir):
    """The second process asks while the first is building: it waits for the build lock,
    then loads what the first wrote; the builder runs once."""
    ctx = multiprocessing.get_context("fork")
    building, results = ctx.Event(), ctx.Queue()
    builds = trt_dir / "builds.log"

    def child():
        def builder(plan):
            with open(builds, "a") as f:
                f.write(f"{os.getpid()}\n")
            building.set()
            time.sleep(1.5)
            return b"FAKE-ENGINE built once"

        result = _ensure(trt_dir, builder)
        results.put((result.built, result.data))

    first = ctx.Process(target=child)
    first.start()
    assert building.wait(60), "the first process never started building"
    second = ctx.Process(target=child)
    second.start()
    outcomes = sorted(results.get(timeout=60) for _ in range(2))
    for p in (first, second):
        p.join(30)
        assert p.exitcode == 0
    assert outcomes == [(False, b"FAKE-ENGINE built once"), (True, b"FAKE-ENGINE built once")]
    assert len(builds.read_text().splitlines()) == 1


def test_an_engine_is_visible_whole_or_not_at_all(trt_dir):
    def failing(plan):
        raise RuntimeError("out of GPU memory")

    with pytest.raises(RuntimeError, match="out of GPU memory"):
        _ensure(trt_dir, failing)
    assert [p.name for p in (trt_dir / "tensorrt").iterdir() if not p.name.endswith(".lock")] == []

    seen = []

    def watching(plan):
        key_path = next(iter((trt_dir / "tensorrt").glob("*.lock"))).with_suffix("")
        seen.append(key_path.exists())  # nothing at the engine's name while it is built
        return b"FAKE-ENGINE"

    made = _ensure(trt_dir, watching)
    assert seen == [False] and made.path.read_bytes() == b"FAKE-ENGINE"
    assert not list((trt_dir / "tensorrt").glob("*.tmp"))


def test_a_file_is_renamed_into_place_only_when_whole(tmp_path):
    from clearmark.engine_build.files import atomic_write, temporary_beside

    target = tmp_path / "cache" / "model.onnx"
    atomic_write(target, b"old graph")
    with pytest.raises(OSError):
        with temporary_beside(target) as tmp:
            tmp.write_bytes(b"half a gra")
            assert target.read_bytes() == b"old graph"  # readers still see the old file
            raise OSError("disk full")
    assert target.read_bytes() == b"old graph" and sorted(p.name for p in target.parent.iterdir()) == [
        "model.onnx"
    ]
    with temporary_beside(target) as tmp:
        tmp.write_bytes(b"new graph")
        assert target.read_bytes() == b"old graph"
    assert target.read_bytes() == b"new graph" and len(list(target.parent.iterdir())) == 1


# --------------------------------------------------------------------------- load only


def test_load_only_names_the_missing_onnx_export_and_the_command(exported, tmp_path):
    from click.testing import CliRunner

    from clearmark.workers.commands.engines import engines_group

    empty = get_settings().replace(engine_dir=str(tmp_path / "engines"))
    with pytest.raises(EngineNotBuilt) as caught:
        load_engine("detector", backend="onnxruntime", device="cpu", settings=empty, build=False)
    assert str(caught.value) == (
        f"no ONNX export of the detector (fp32, weights {weights_sha256('detector')[:12]}) in "
        f"{tmp_path / 'engines' / 'onnx'} (not exported yet): build it with `clearmark engines build` "
        "(same CLEARMARK_* settings), or let workers build at start (CLEARMARK_WORKER_BUILD_BUDGET_S)"
    )
    assert not (tmp_path / "engines").exists()  # loading wrote nothing

    set_settings(empty)  # undone by _restore_settings
    res = CliRunner().invoke(engines_group, ["check"])
    assert res.exit_code == 1
    assert res.output == f"Error: engines cannot load: EngineNotBuilt: {caught.value}\n"

    shutil.copytree(exported["detector"].parent, tmp_path / "engines" / "onnx")  # as `build` leaves it
    loaded = load_engine("detector", backend="onnxruntime", device="cpu", settings=empty, build=False)
    assert loaded.artifact == tmp_path / "engines" / "onnx" / exported["detector"].name and not loaded.built


# --------------------------------------------------------------------------- weights


def test_the_key_names_the_weights_loaded_not_the_file_now(exported, tmp_path, monkeypatch):
    """Weights replaced under running engines: their keys (and so their jobs' records)
    still name the weights they hold; an engine made afterwards names the new ones."""
    import torch

    from clearmark.models import weights

    shutil.copytree(weights.WEIGHTS_DIR, tmp_path / "weights")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    loaded = weights_sha256("detector")
    running = [load_engine("detector", backend=b, device="cpu") for b in ("torch", "onnxruntime")]
    keys = [e.key for e in running]
    assert all(e.weights_sha256 == loaded and f"detector:{loaded[:12]}:" in e.key for e in running)

    state = torch.load(tmp_path / "weights" / "detector.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1  # retrained weights, dropped in under the running engines
    torch.save(state, tmp_path / "weights" / "detector.pt")
    assert weights_sha256("detector") != loaded
    assert [e.key for e in running] == keys
    assert load_engine("detector", backend="torch", device="cpu").weights_sha256 == weights_sha256("detector")


# --------------------------------------------------------------------------- crop buckets


def test_remover_buckets_and_padding():
    from clearmark.engine_build.profiles import bucket, remover_buckets

    assert remover_buckets(1024) == (128, 256, 384, 512, 768, 1024)
    assert remover_buckets(1500) == (128, 256, 384, 512, 768, 1024, 1504)
    assert remover_buckets(100) == (112,)
    sides = remover_buckets(1024)
    assert [bucket(n, sides) for n in (16, 128, 144, 1024, 1040)] == [128, 128, 256, 1024, 1040]

    x = np.arange(2 * 3 * 32 * 48, dtype=np.float32).reshape(2, 3, 32, 48) + 1
    seen = []

    def run(batch):
        seen.append(batch)
        return batch * 2

    out = run_bucketed(run, x, sides)
    assert seen[0].shape == (2, 3, 128, 128) and np.array_equal(seen[0][..., :32, :48], x)
    assert not seen[0][..., 32:, :].any() and not seen[0][..., :, 48:].any()  # zeros below, right
    assert np.array_equal(out, x * 2)
    assert run_bucketed(run, x, ()) is not None and seen[-1] is x  # no buckets: x itself


def test_cpu_engines_run_every_crop_as_it_comes(engines):
    """The CPU outputs do not move: no CPU engine pads, its run is the session's output."""
    assert all(e.buckets == () for e in engines.values())
    eng = engines[("remover", "onnxruntime")]
    x = sample_batch("remover", 2, 48, 80, seed=1)
    assert np.array_equal(eng.run(x), eng.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


@pytest.mark.parametrize("shape", [(160, 208), (304, 208)])
def test_a_crop_padded_to_its_bucket_keeps_the_remover_output_where_the_pipeline_uses_it(engines, shape):
    """The pipeline keeps a crop's core: its margin (CLEARMARK_REMOVE_CROP_MARGIN, 32 px)
    in from each side is context. There the zero-padded crop gives the unpadded output."""
    from clearmark.engine_build.profiles import remover_buckets

    eng = engines[("remover", "onnxruntime")]
    h, w = shape
    x = sample_batch("remover", 2, 512, 512, seed=11)[..., :h, :w].copy()  # a crop of a photo
    plain = eng.run(x)
    shapes = []

    def run(batch):
        shapes.append(batch.shape[2:])
        return eng.run(batch)

    diff = np.abs(run_bucketed(run, x, remover_buckets(1024)) - plain)
    assert shapes == [(256 if h <= 256 else 384, 256)]
    core = diff[..., 32 : h - 32, 32 : w - 32]
    assert core.mean() <= 1e-4 and (core > 0.1).mean() <= 1e-3  # rare pixels near the far edges
    assert diff.max() <= 0.6  # the margin next to the padding moves most


# --------------------------------------------------------------------------- device


def test_device_auto_is_the_gpu_only_where_one_is_usable(tmp_path, monkeypatch, caplog):
    def probe():
        raise AssertionError("a host without an NVIDIA driver is not probed further")

    monkeypatch.setattr(engine_base, "NVIDIA_DRIVER_PATHS", (str(tmp_path / "no-driver"),))
    monkeypatch.setattr(engine_base, "_torch_cuda_available", probe)
    monkeypatch.setattr(trt_backend, "tensorrt_status", probe)
    assert engine_base.gpu_usable() == (False, "no NVIDIA driver on this host")

    driver = tmp_path / "version"
    driver.write_text("NVRM version: 580.65")
    monkeypatch.setattr(engine_base, "NVIDIA_DRIVER_PATHS", (str(driver),))
    monkeypatch.setattr(engine_base, "_torch_cuda_available", lambda: False)
    monkeypatch.setattr(trt_backend, "tensorrt_status", lambda: (False, "tensorrt not importable"))
    usable, why = engine_base.gpu_usable()  # this onnxruntime is the CPU build
    assert not usable and why.startswith("an NVIDIA driver but nothing here can use it")
    monkeypatch.setattr(trt_backend, "tensorrt_status", lambda: (True, "tensorrt 10.3.0, 1 GPU(s)"))
    assert engine_base.gpu_usable() == (True, "tensorrt 10.3.0, 1 GPU(s)")
    monkeypatch.setattr(engine_base, "_torch_cuda_available", lambda: True)
    assert engine_base.gpu_usable() == (True, "torch sees a CUDA GPU")

    monkeypatch.setattr(engine_base, "_auto_device", functools.cache(engine_base._auto_device.__wrapped__))
    caplog.set_level(logging.INFO, logger="clearmark.engine_build")
    assert Settings.model_fields["device"].default == "auto"
    assert engine_base.resolve_device(None) == engine_base.resolve_device("auto") == "cuda"
    assert caplog.text.count("device auto -> cuda (torch sees a CUDA GPU)") == 1  # once a process
    assert engine_base.resolve_device("cpu") == "cpu"  # still there as a setting
