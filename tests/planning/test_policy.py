"""Policy files: round trip without pickle; corrupted or mismatched files fail with PolicyError."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgeflower.models import build_model, profile_model
from edgeflower.planning import ActorCritic, PolicyError, load_policy, make_planner, save_policy
from edgeflower.planning.planners import FedAdaptPlanner
from edgeflower.planning.policy import HEADER_KEY
from edgeflower.planning.state import STATE_FEATURES


@pytest.fixture
def policy_file(tmp_path):
    torch.manual_seed(0)
    net = ActorCritic(STATE_FEATURES * 3, 3, 8)
    path = tmp_path / "policy.pt"
    save_policy(path, net, "vgg5", 7, {"episodes": 1})
    return path, net


def test_policy_round_trip_keeps_weights_and_header(policy_file):
    path, net = policy_file
    loaded, header = load_policy(path, model="vgg5", num_blocks=7, num_groups=3)
    assert header.model == "vgg5" and header.num_groups == 3 and header.info["episodes"] == 1
    assert header.state_dim == STATE_FEATURES * 3 and header.num_choices == 8 and header.version == 2
    x = torch.rand(4, STATE_FEATURES * 3)
    assert torch.equal(loaded(x)[0], net(x)[0])
    model = build_model("vgg5")
    planner = make_planner("fedadapt", model, profile_model(model, batch_size=10, repeats=1), policy_path=str(path))
    assert isinstance(planner, FedAdaptPlanner)


def test_truncated_or_garbage_files_raise_policy_error(policy_file, tmp_path):
    path, _ = policy_file
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a policy at all")
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy(junk)
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")


def test_pickled_objects_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"__header__": object()}, f)
    with pytest.raises(PolicyError):
        load_policy(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"actor.0.weight": torch.zeros(2)}, plain)
    with pytest.raises(PolicyError, match="not an edgeflower policy"):
        load_policy(plain)


def test_tampered_weights_fail_the_checksum(policy_file):
    path, _ = policy_file
    data = torch.load(path, weights_only=True)
    data["actor.0.weight"] = data["actor.0.weight"] + 1.0
    torch.save(data, path)
    with pytest.raises(PolicyError, match="sha256"):
        load_policy(path)


def test_mismatched_policies_name_what_differs(policy_file):
    path, _ = policy_file
    with pytest.raises(PolicyError, match=r"num_groups=3.*num_groups=2"):
        load_policy(path, num_groups=2)
    with pytest.raises(PolicyError, match=r"model='vgg5'.*model='resnet18'"):
        load_policy(path, model="resnet18")
    with pytest.raises(PolicyError, match="num_blocks"):
        load_policy(path, num_blocks=9)
    model = build_model("vgg5")
    with pytest.raises(PolicyError):
        make_planner(
            "fedadapt", model, profile_model(model, batch_size=10, repeats=1), policy_path=str(path), num_groups=4
        )


def test_version_1_gaussian_policies_and_wrong_cut_counts_are_refused(tmp_path):
    import json

    def write(path, header, net):
        state = {k: v.clone() for k, v in net.state_dict().items()}
        raw = torch.tensor(list(json.dumps(header).encode()), dtype=torch.uint8)
        torch.save({HEADER_KEY: raw, **state}, path)

    net = ActorCritic(STATE_FEATURES * 3, 3, 8)
    good = save_policy(tmp_path / "ok.pt", net, "vgg5", 7)
    meta = json.loads(good.to_json())
    write(tmp_path / "v1.pt", {**meta, "version": 1}, net)
    with pytest.raises(PolicyError, match=r"version 1.*retrain"):
        load_policy(tmp_path / "v1.pt")
    save_policy(tmp_path / "cuts.pt", ActorCritic(STATE_FEATURES * 3, 3, 6), "vgg5", 7)
    with pytest.raises(PolicyError, match="num_choices"):
        load_policy(tmp_path / "cuts.pt")


def test_corrupted_header_is_reported(policy_file):
    path, _ = policy_file
    data = torch.load(path, weights_only=True)
    data["__header__"] = torch.tensor(list(b"{broken"), dtype=torch.uint8)
    torch.save(data, path)
    with pytest.raises(PolicyError, match="header"):
        load_policy(path)


def test_train_agent_command_writes_a_loadable_policy_and_a_reward_png(tmp_path, capsys):
    from edgeflower.cli import main

    out = tmp_path / "agent.pt"
    assert main(["train-agent", "--out", str(out), "--episodes", "3", "--episode-len", "4", "--no-progress"]) == 0
    assert out.with_suffix(".png").stat().st_size > 0
    _, header = load_policy(out, model="vgg5", num_blocks=7, num_groups=3)
    assert header.info["episodes"] == 3
    assert "reward" in capsys.readouterr().out
