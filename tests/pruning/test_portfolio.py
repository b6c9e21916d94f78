"""Sparse training on real data, the portfolio on disk, and the switcher's policy."""

from __future__ import annotations

import itertools
import json
import math
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeflower.cli import main
from edgeflower.data import load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.pruning import (
    Budget,
    BudgetError,
    IMPConfig,
    Portfolio,
    PortfolioError,
    Switcher,
    Variant,
    choose,
    global_magnitude_masks,
    make_portfolio,
)


@pytest.fixture(scope="module")
def data() -> tuple:
    train = load_dataset("fashion-mnist", train=True)
    test = load_dataset("fashion-mnist", train=False)
    return train.subset(range(3000)), test.subset(range(300))


@pytest.fixture(scope="module")
def built(data: tuple, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    train, test = data
    torch.manual_seed(0)
    model = build_model("vgg11", (1, 28, 28), 10, "batch", width=0.125)
    cfg = IMPConfig(compressions=(2, 4, 16, 64, 256), retrain_epochs=0.2, batch_size=64, lr=0.05, seed=0)
    out = tmp_path_factory.mktemp("pf") / "vgg11"
    return make_portfolio(model, train, test, cfg, dense_epochs=0.5, rewind_batches=5, out=out, progress=False)


def test_imp_reaches_each_target_compression_with_nested_masks(built) -> None:  # type: ignore[no-untyped-def]
    levels = built.levels
    assert [round(lv.compression) for lv in levels] == [2, 4, 16, 64, 256]
    for a, b in itertools.pairwise(levels):
        for k in a.masks:
            assert not bool((b.masks[k] & ~a.masks[k]).any())  # pruned weights stay pruned


def test_dense_training_on_fashion_mnist_learns(built) -> None:  # type: ignore[no-untyped-def]
    assert built.portfolio.meta["dense"]["accuracy"] > 0.5


def test_parameter_count_falls_monotonically_with_sparsity(built) -> None:  # type: ignore[no-untyped-def]
    params = [v.params for v in built.portfolio.variants]
    assert all(b <= a for a, b in itertools.pairwise(params))
    assert params[-1] < params[0] < built.portfolio.meta["dense"]["params"]


def test_surgery_is_lossless_on_every_portfolio_level(built) -> None:  # type: ignore[no-untyped-def]
    for v in built.portfolio.variants:
        assert v.extra["max_abs_diff"] <= 1e-4
        assert v.accuracy == pytest.approx(v.extra["sparse_accuracy"], abs=1e-9)


def test_save_load_round_trip_rebuilds_the_architecture(built, data) -> None:  # type: ignore[no-untyped-def]
    _, test = data
    loaded = Portfolio.load(built.path)
    assert loaded.names == built.portfolio.names
    for old, new in zip(built.portfolio.variants, loaded.variants, strict=True):
        shapes = {k: t.shape for k, t in old.model.state_dict().items()}
        assert {k: t.shape for k, t in new.model.state_dict().items()} == shapes
        with torch.no_grad():
            assert torch.equal(old.model(test.x[:16]), new.model(test.x[:16]))
    assert (built.path / "pareto.png").stat().st_size > 0


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupted_weight_file_fails_with_a_clear_error(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _copy(built.path, tmp_path / "pf")
    target = root / "x16.pt"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(PortfolioError, match=r"x16\.pt.*SHA-256"):
        Portfolio.load(root)


def test_missing_weight_file_and_manifest_fail_with_clear_errors(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _copy(built.path, tmp_path / "pf")
    (root / "x4.pt").unlink()
    with pytest.raises(PortfolioError, match=r"x4\.pt"):
        Portfolio.load(root)
    (root / "portfolio.json").write_text("{not json")
    with pytest.raises(PortfolioError, match=r"portfolio\.json.*JSON"):
        Portfolio.load(root)
    (root / "portfolio.json").unlink()
    with pytest.raises(PortfolioError, match="manifest not found"):
        Portfolio.load(root)


def test_tampered_architecture_or_file_name_fails_with_a_clear_error(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _copy(built.path, tmp_path / "pf")
    manifest = json.loads((root / "portfolio.json").read_text())
    layer = next(iter(manifest["variants"][0]["arch"]["layers"].values()))
    layer["out"] += 1
    (root / "portfolio.json").write_text(json.dumps(manifest))
    with pytest.raises(PortfolioError, match=r"x2\.pt.*does not fit"):
        Portfolio.load(root)
    manifest["variants"][0]["file"] = "../evil.pt"
    (root / "portfolio.json").write_text(json.dumps(manifest))
    with pytest.raises(PortfolioError, match="unsafe file name"):
        Portfolio.load(root, models=False)


def _variant(name: str, acc: float, ms: float, size: int) -> Variant:
    return Variant(name, 1.0, size, size, {1: ms, 32: 10 * ms}, acc, {})


def test_switcher_choice_is_the_best_variant_within_the_budget() -> None:
    gen = torch.Generator().manual_seed(0)
    variants = [
        _variant(f"v{i}", float(torch.rand(1, generator=gen)), float(torch.rand(1, generator=gen)) * 10, i * 100 + 1)
        for i in range(12)
    ]
    for _ in range(200):
        lat, size = float(torch.rand(1, generator=gen)) * 10, int(torch.randint(1, 1300, (1,), generator=gen))
        budget = Budget(max_latency_ms=lat, max_bytes=size)
        fits = [v for v in variants if v.latency_ms[1] <= lat and v.bytes <= size]
        if not fits:
            with pytest.raises(BudgetError):
                choose(variants, budget)
            continue
        assert choose(variants, budget).accuracy == max(v.accuracy for v in fits)
        floor = float(torch.rand(1, generator=gen))
        fits = [v for v in variants if v.accuracy >= floor]
        if fits:
            assert choose(variants, Budget(min_accuracy=floor)).latency_ms[1] == min(v.latency_ms[1] for v in fits)


def test_switcher_swaps_in_place_while_serving(built, data) -> None:  # type: ignore[no-untyped-def]
    _, test = data
    pf = built.portfolio
    switcher = Switcher(pf)
    assert pf[switcher.active].accuracy == max(v.accuracy for v in pf.variants)
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                assert switcher(test.x[:8]).shape == (8, 10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    for name in pf.names * 5:
        assert switcher.switch(name).current == name
    stop.set()
    thread.join()
    assert not errors
    fastest = min(pf.variants, key=lambda v: v.latency_ms[1])
    event = switcher.select(Budget(max_latency_ms=fastest.latency_ms[1]))  # on the portfolio's recorded latencies
    assert pf[event.current].latency_ms[1] == fastest.latency_ms[1]  # the fastest variant (or one as fast)
    lazy = Switcher(Portfolio.load(built.path, models=False), resident=False, initial="x2")
    assert lazy.switch("x4").loaded
    with torch.no_grad():
        assert torch.equal(lazy(test.x[:4]), pf["x4"].model(test.x[:4]))


def test_global_magnitude_masks_hit_the_exact_sparsity_and_keep_the_largest() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(8, 4, 3, 3, generator=gen), "b.weight": torch.randn(16, 8, 3, 3, generator=gen)}
    masks = global_magnitude_masks(tensors, 0.75)
    kept = torch.cat([t[masks[k]].abs() for k, t in tensors.items()])
    dropped = torch.cat([t[~masks[k]].abs() for k, t in tensors.items()])
    total = sum(t.numel() for t in tensors.values())
    assert kept.numel() == round(0.25 * total)
    assert kept.min() >= dropped.max()


def test_cli_prune_and_portfolio_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pf"
    argv = [
        "prune",
        "--model",
        "vgg5",
        "--width",
        "0.25",
        "--dense-epochs",
        "0.05",
        "--compressions",
        "2,8",
        "--retrain-epochs",
        "0.02",
        "--train-samples",
        "4000",
        "--test-samples",
        "200",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main(["portfolio", "show", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "x8" in text and "verified" in text
    assert main(["portfolio", "show", str(tmp_path / "nowhere")]) == 1
    assert not math.isnan(Portfolio.load(out, models=False)["x2"].accuracy)


def test_unsupported_layer_is_reported_by_path() -> None:
    from edgeflower.pruning import SurgeryError, surgery

    model = build_model("vgg5", (1, 28, 28), 10, "none", width=0.25)
    model.blocks[1] = nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True), nn.Softmax(dim=1))  # couples channels
    with pytest.raises(SurgeryError, match=r"blocks\.1\.1.*Softmax"):
        surgery(model)


def test_cli_prunes_the_checkpoint_of_an_fl_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeflower.config import AppConfig

    run = tmp_path / "run"  # what an FL run directory holds: its run config and the final global model
    run.mkdir()
    cfg = AppConfig.from_run_config({"model": "vgg5", "norm": "batch"})
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(0)
    model = cfg.build_model()
    torch.save(model.state_dict(), run / "model.pt")
    out = tmp_path / "pf"
    common = ["--compressions", "2", "--retrain-epochs", "0.01", "--train-samples", "1000", "--test-samples", "100"]
    assert main(["prune", "--checkpoint", str(run), *common, "--out", str(out), "--no-progress"]) == 0
    loaded = Portfolio.load(out)
    assert loaded.names == ["x2"] and loaded.spec == model.spec
    assert loaded["x2"].params < sum(p.numel() for p in model.parameters())

    wrong = tmp_path / "other.pt"  # a state dict that does not fit the zoo model asked for
    torch.save(build_model("vgg11", (1, 28, 28), 10, "batch", width=0.125).state_dict(), wrong)
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(wrong), "--model", "vgg5", *common, "--out", str(tmp_path / "x")]) == 1
    assert "does not fit vgg5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_levels_that_surgery_cannot_shrink_are_named_as_dense_sized_in_the_output(capsys):
    """Magnitude pruning at x2..x32 zeroed scattered weights: 458,570 of 458,890 parameters remained, the variant
    was the dense model in size and speed, and the table offered it as a compressed model without a word."""
    from edgeflower.commands.portfolio import print_portfolio

    spec = build_model("vgg5", (1, 28, 28), 10, "group", width=0.25).spec

    def variant(name: str, params: int, dense: int | None = 458_890) -> Variant:
        extra = {"sparse_accuracy": 0.9} if dense is None else {"sparse_accuracy": 0.9, "sparse_params": dense}
        return Variant(name, float(name[1:]), params, 4 * params, {1: 0.3, 32: 2.0}, 0.9, {}, extra=extra)

    pf = Portfolio(spec, [variant("x2", 458_570), variant("x32", 458_570), variant("x256", 120_000)])
    assert [v.name for v in pf.not_smaller()] == ["x2", "x32"]
    assert pf["x256"].structural_saving == pytest.approx(1 - 120_000 / 458_890)
    text = print_portfolio(pf)
    assert "x2, x32 are not structurally smaller than the dense model" in text and "Smaller models: x256." in text
    assert "99.9%" in text and "26.2%" in text  # each variant's size next to the dense model's
    only_dense_sized = Portfolio(spec, [variant("x2", 458_570)])
    assert "No level removed whole channels" in print_portfolio(only_dense_sized)
    unknown = Portfolio(spec, [variant("x4", 1000, dense=None)])  # an old manifest: nothing to compare with
    assert unknown.not_smaller() == [] and "note:" not in print_portfolio(unknown)
    capsys.readouterr()
