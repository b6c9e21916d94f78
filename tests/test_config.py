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
    assert AppConfig.from_run_config({"microbatches": "8"}).microbatches == 8
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
