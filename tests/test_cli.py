"""The ``edgeflower`` command: every subcommand listed, described and showing its defaults; a cheap start; the
``predict`` client."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgeflower.commands
from edgeflower.cli import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (p, helps.get(name, "")) for name, p in action.choices.items()}
    return {}


def test_command_table_lists_every_command_module_with_its_own_help():
    """``edgeflower --help`` reads :data:`COMMANDS` instead of importing the modules: it must not drift from them."""
    modules = {i.name for i in pkgutil.iter_modules(edgeflower.commands.__path__) if not i.name.startswith("_")}
    assert {module for module, _ in COMMANDS.values()} == modules
    full = _subparsers(build_parser())
    assert set(full) == set(COMMANDS)
    for name, (_, text) in full.items():
        assert text == COMMANDS[name][1], name


def test_every_subcommand_has_a_description_and_shows_its_defaults():
    def walk(parser, prog):
        assert parser.description, f"{prog} has no description"
        text = parser.format_help()
        for action in parser._actions:
            shown = action.default not in (None, False, "", argparse.SUPPRESS) and action.option_strings
            if shown and action.help and action.help is not argparse.SUPPRESS:
                assert f"{action.default}" in text.replace("\n", " ").replace("  ", " ") or "default" in text, (
                    prog,
                    action.dest,
                )
        for name, (sub, _) in _subparsers(parser).items():
            walk(sub, f"{prog} {name}")

    walk(build_parser(), "edgeflower")
    assert "(default: 300)" in _subparsers(build_parser())["train-agent"][0].format_help()
    assert "(default: vgg16)" in " ".join(_subparsers(build_parser())["prune"][0].format_help().split())


def test_help_and_version_import_no_command_module():
    """`edgeflower --help` stays cheap by importing no command module (they import torch, Flower, matplotlib)."""
    code = (
        "import sys\nfrom edgeflower.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "prefixes = ('torch', 'flwr', 'matplotlib', 'edgeflower.commands.')\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "edgeflower 0.1.0" in out and "predict" in out
    assert "HEAVY []" in out


def test_predict_sends_a_client_token_and_prints_each_class(tmp_path, monkeypatch, capsys):
    from edgeflower.transport.auth import ROLE_CLIENT, TokenVerifier

    secret = tmp_path / "serve.secret"
    secret.write_bytes(b"k" * 32)
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 1, 28, 28), dtype=np.float32))
    seen = {}

    class FakeClient:
        def __init__(self, addresses, token, deadline_s, root_cert):
            seen["addresses"], seen["token"] = addresses, token

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def predict(self, x, request_id):
            seen["shape"] = tuple(x.shape)
            logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
            return argparse.Namespace(request_id=request_id, logits=logits, technique="initial", replayed=False)

        def status(self):
            return {"route": [0, 1]}

    monkeypatch.setattr(importlib.import_module("edgeflower.serving"), "ServingClient", FakeClient)
    argv = ["predict", "--controller", "h:1,h:2", "--secret-file", str(secret), "--input", str(batch)]
    assert main([*argv, "--request-id", "r1"]) == 0
    out = capsys.readouterr().out
    assert "sample 0: class 1" in out and "sample 1: class 0" in out and "sample 2: class 1" in out
    assert "request r1: 3 sample(s)" in out and "technique initial" in out
    assert seen["addresses"] == ["h:1", "h:2"] and seen["shape"] == (3, 1, 28, 28)
    TokenVerifier(b"k" * 32).verify(seen["token"], roles=ROLE_CLIENT)  # a client token, nothing more
    assert main([*argv, "--status"]) == 0
    assert json.loads(capsys.readouterr().out) == {"route": [0, 1]}
    np.save(batch, np.zeros((3, 28), dtype=np.float32))
    assert main(argv) == 1  # a batch of the wrong rank: a clear error, no traceback
    assert "expected an array [batch, C, H, W]" in capsys.readouterr().err


def test_client_token_is_a_client_role_token_that_predict_uses_without_the_secret(tmp_path, monkeypatch, capsys):
    from edgeflower.transport.auth import ROLE_CLIENT, ROLE_CONTROLLER, TokenVerifier
    from edgeflower.transport.errors import EdgeAuthError

    secret = tmp_path / "serve.secret"
    secret.write_bytes(b"k" * 32)
    token_file = tmp_path / "client.token"
    assert main(["client-token", "--secret-file", str(secret), "--client-id", "7", "--out", str(token_file)]) == 0
    assert (token_file.stat().st_mode & 0o777) == 0o600
    token = token_file.read_text().strip()
    claims = TokenVerifier(b"k" * 32).verify(token, roles=ROLE_CLIENT)
    assert claims.node_id == 7
    with pytest.raises(EdgeAuthError):
        TokenVerifier(b"k" * 32).verify(token, roles=ROLE_CONTROLLER)  # it cannot deploy or forward
    assert main(["client-token", "--secret-file", str(secret), "--ttl", "7200"]) == 1  # longer than services accept
    from edgeflower.commands.client_token import MAX_TTL_S
    from edgeflower.transport.auth import MAX_LIFETIME_S

    assert MAX_TTL_S == MAX_LIFETIME_S  # a token this command issues is one the controller accepts
    capsys.readouterr()
    seen = {}

    class FakeClient:
        def __init__(self, addresses, token, deadline_s, root_cert):
            seen["token"] = token

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def status(self):
            return {"route": [0]}

    monkeypatch.setattr(importlib.import_module("edgeflower.serving"), "ServingClient", FakeClient)
    assert main(["predict", "--controller", "h:1", "--token-file", str(token_file), "--status"]) == 0
    assert seen["token"] == token
    both = ["predict", "--controller", "h:1", "--token-file", str(token_file), "--secret-file", str(secret)]
    assert main(both) == 1 and "exactly one of --token-file" in capsys.readouterr().err
