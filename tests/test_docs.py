"""The documented examples work as written: ``scripts/doc_examples.py`` checks every one (cheap ones run)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("doc_examples", ROOT / "scripts" / "doc_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_examples"] = module
    spec.loader.exec_module(module)
    return module


doc = _load_script()


def test_extraction_joins_continuations_skips_heredocs_and_reads_the_expected_time(tmp_path):
    (tmp_path / "README.md").write_text(
        "text\n```bash\nmake run RUN_CONFIG='mode=\"split\"' \\\n  NUM_SUPERNODES=2   # about 3 min\n"
        "cat > x <<'EOF'\nnot = a command\nEOF\nedgeflower plot runs/x\n```\n"
        "```python\nprint(1)\n```\n"
    )
    found = doc.extract(tmp_path / "README.md", tmp_path)
    assert [(e.kind, e.line) for e in found] == [("make-run", 3), ("shell", 5), ("edgeflower", 8), ("python", 11)]
    assert found[0].expected_s == 180.0
    assert doc.words(found[0].text) == ["make", "run", 'RUN_CONFIG=mode="split"', "NUM_SUPERNODES=2"]


@pytest.mark.parametrize(
    "line",
    [
        """make run RUN_CONFIG='mode="split" split-point=4 link-profiles="75/75/5,10/10/20"'""",
        """make run RUN_CONFIG="num-rounds=2 model=\\"resnet18\\"" NUM_SUPERNODES=2""",
    ],
)
def test_make_run_passes_run_config_to_flower_exactly_as_written(line):
    """Both quoting forms of the README reach ``flwr run --run-config`` unchanged and parse with Flower's parser."""
    argv = shlex.split(line)
    written = argv[2].split("=", 1)[1]
    reached = doc.make_run_argv(argv[1:], ROOT)
    assert reached[reached.index("--run-config") + 1] == written
    parsed = doc.parse_run_config(written, ROOT)
    assert parsed and all(isinstance(v, (int, float, str, bool)) for v in parsed.values())
    if "resnet18" in line:
        assert parsed == {"num-rounds": 2, "model": "resnet18"}
        assert reached[reached.index("--num-supernodes") + 1] == "2"


def test_run_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown run-config keys"):
        doc.parse_run_config("no-such-key=1", ROOT)
    with pytest.raises(ValueError, match="Flower cannot parse"):
        doc.parse_run_config('mode="split', ROOT)


def test_every_documented_example_works_as_written():
    """Every example in README.md and docs/ (dry for the long ones: `make -n`, argument parsers, run-config
    validation, compiled Python without undefined names; marked cheap ones run)."""
    outcomes = doc.check_all("cheap", ROOT)
    failing = [
        f"{o.example.where}: {o.example.text.splitlines()[0][:80]}\n    {o.detail}" for o in outcomes if not o.ok
    ]
    assert not failing, "\n".join(failing)
    kinds = {o.example.kind for o in outcomes}
    assert {"make-run", "edgeflower", "python", "flwrctl"} <= kinds
    assert any(o.mode == "real" for o in outcomes)  # the cheap ones ran


def test_real_all_runs_self_contained_commands_and_keeps_their_output(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        "```bash\nedgeflower train-agent --out a.pt --episodes 3\nedgeflower plot runs/<run>\n"
        "edgeflower prune --checkpoint model.pt --model vgg5\nedgeflower prune --checkpoint missing.pt --model vgg5\n"
        "edgeflower serve --config serve.json\n.venv/bin/python -m edgeflower.flwrctl run-deploy . --stream\n"
        "edgeflower --version\n```\n"
    )
    found = doc.extract(tmp_path / "README.md", tmp_path)
    assert [doc.runs_alone(e, tmp_path) for e in found] == [True, False, True, False, False, True, False]
    version = found[-1]
    version.text = f"{sys.executable} -m edgeflower.cli --version"
    outcome = doc.run_real(version, ROOT, logs=tmp_path / "logs")
    assert outcome.ok, outcome.detail
    log = (tmp_path / "logs" / "README.md-8.log").read_text()
    assert log.startswith("$ ") and "edgeflower" in log
