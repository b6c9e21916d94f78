"""Run configuration: defaults match pyproject, bad values fail fast naming the key."""

from __future__ import annotations

import tomllib

import pytest

from edgeflower.app.task import load_partition, load_test_set
from edgeflower.config import AppConfig, ConfigError
from tests.conftest import ROOT


def _pyproject_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_config_documents_every_key_with_the_code_defaults():
    cfg = _pyproject_config()
    assert set(cfg) == set(AppConfig().to_dict())
    assert AppConfig.from_run_config(cfg) == AppConfig()


def test_auto_is_accepted_where_documented():
    cfg = AppConfig.from_run_config({"mode": "pipeline", "split-point": "auto", "microbatches": "auto"})
    assert (cfg.split_point, cfg.microbatches) == (-1, 0)
    assert AppConfig.from_run_config({"mode": "pipeline", "microbatches": "8"}).microbatches == 8
    with pytest.raises(ConfigError, match="'microbatches'"):
        AppConfig.from_run_config({"microbatches": "many"})


def test_readme_documents_every_run_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in AppConfig().to_dict() if f"`{k}`" not in readme]
    assert not missing, f"README lacks run-config keys {missing}"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("model", "alexnet", "unknown value"),
        ("split-point", 99, "out of range"),
        ("split-point", -2, "out of range"),
        ("num-rounds", -1, ">= 1"),
        ("num-rounds", 0, ">= 1"),
        ("lr", "fast", "expected float"),
        ("batch-size", 2.5, "expected int"),
        ("norm", "layer", "unknown value"),
        ("dataset", "imagenet", "unknown value"),
        ("fraction-train", 0.0, "(0, 1]"),
        ("momentum", 1.5, "[0, 1)"),
        ("dirichlet-alpha", 0.0, "> 0"),
        ("mode", "magic", "unknown value"),
        ("fallback-replay-mb", -1.0, ">= 0"),
    ],
)
def test_bad_run_config_value_fails_fast_naming_the_key(key, value, needle):
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config({key: value})
    assert f"'{key}'" in str(info.value) and needle in str(info.value)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("run_config", "key", "needle"),
    [
        ({"split-point": 3}, "split-point", "splits nothing in mode 'fl'"),
        ({"mode": "split", "microbatches": 4}, "microbatches", "mode 'pipeline' only"),
        ({"mobility": "0@2:0.5->1"}, "mobility", "needs mode 'split' or 'pipeline'"),
        ({"mode": "split", "edge-servers": 2, "mobility": "0@2:0.5->7"}, "mobility", "edge servers are 0..1"),
        ({"mode": "split", "num-rounds": 3, "mobility": "0@9:0.5->1"}, "mobility", "rounds 1..3"),
    ],
)
def test_a_value_the_run_would_ignore_or_fail_on_mid_run_is_refused_up_front(run_config, key, needle):
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config(run_config)
    assert info.value.key == key and needle in str(info.value)


def test_edge_root_cert_needs_external_edge_servers(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 32)
    external = {"mode": "split", "edge-addresses": "127.0.0.1:50051", "edge-secret-file": str(secret)}
    with pytest.raises(ConfigError, match=r"'edge-root-cert'.*needs edge-addresses"):
        AppConfig.from_run_config({"mode": "split", "edge-root-cert": "ca.pem"})
    # only the nodes read the certificate: the ServerApp's machine need not have the file
    assert AppConfig.from_run_config({**external, "edge-root-cert": "ca.pem"}).edge_root_cert == "ca.pem"


def test_missing_data_fails_naming_data_root(tmp_path):
    cfg = AppConfig.from_run_config({"data-root": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"'data-root'.*dataset-fashion-mnist"):
        load_test_set(cfg)


def test_node_config_without_partition_id_is_a_clear_error():
    with pytest.raises(ConfigError, match="partition-id"):
        load_partition(AppConfig(), {})
    with pytest.raises(ConfigError, match=r"not in 0\.\.1"):
        load_partition(AppConfig(), {"partition-id": 5, "num-partitions": 2})


def test_lr_decays_tenfold_from_the_configured_round():
    cfg = AppConfig(lr=0.1, lr_decay_round=3)
    assert [cfg.lr_at(r) for r in (1, 2, 3, 4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_unknown_key_is_named_with_the_nearest_known_key():
    with pytest.raises(ConfigError, match=r"'split-piont': unknown key; did you mean 'split-point'\?") as info:
        AppConfig.from_run_config({"split-piont": 3})
    assert info.value.key == "split-piont"
    assert AppConfig.from_run_config({"my-own-key": 1, "lr": 0.1}, strict=False).lr == 0.1  # an app's own keys


@pytest.mark.parametrize("value", ["inf", float("inf"), float("-inf"), float("nan"), "nan"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match=r"'lr': must be a finite number"):
        AppConfig.from_run_config({"lr": value})


@pytest.mark.parametrize("mode", ["split", "pipeline"])
def test_a_split_point_that_offloads_nothing_is_refused_in_a_split_mode(mode):
    blocks = AppConfig().build_model().num_blocks
    with pytest.raises(ConfigError, match=rf"'split-point'.*nothing is offloaded in mode '{mode}'"):
        AppConfig.from_run_config({"mode": mode, "split-point": blocks})
    assert AppConfig.from_run_config({"mode": "fl", "split-point": blocks}).split_point == blocks


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("fallback", "sometimes", "expected one of transient, never"), ("max-message-mb", -1.0, ">= 0"),
     ("max-failed-fraction", 1.0, "[0, 1)"), ("round-timeout", 0, "(0, 3600]"), ("round-timeout", 7200, "(0, 3600]")],
)  # fmt: skip
def test_failure_handling_keys_are_validated(key, value, needle):
    with pytest.raises(ConfigError, match=rf"'{key}'") as info:
        AppConfig.from_run_config({key: value})
    assert needle in str(info.value)


def test_message_limit_is_sized_from_the_model_unless_overridden():
    from edgeflower.config import MIN_MESSAGE_BYTES, message_limit_bytes
    from edgeflower.models.zoo import build_model

    small = build_model("vgg5")
    assert message_limit_bytes(small, 100) == MIN_MESSAGE_BYTES  # a small model keeps the transport's default
    assert message_limit_bytes(small, 100, override_mb=3.5) == int(3.5 * 2**20)
    big = build_model("vgg16", (3, 32, 32))
    state = sum(t.numel() * t.element_size() for t in big.state_dict().values())
    limit = message_limit_bytes(big, 100)
    assert limit > 2 * state  # a migration carries the whole tail (k = 0) with its momentum
    # the widest activation of a 100-sample batch fits as well
    assert message_limit_bytes(big, 4000) > 4000 * 64 * 32 * 32 * 4


def test_missing_dataset_file_is_named(tmp_path):
    source = "/usr/share/datasets/fashion-mnist"
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").symlink_to(f"{source}/{stem}.gz")
    cfg = AppConfig.from_run_config({"data-root": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"'data-root'.*lacks train-images-idx3-ubyte\[\.gz\]"):
        load_partition(cfg, {"partition-id": 0, "num-partitions": 2})
