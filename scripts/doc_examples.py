"""Check every example of README.md and docs/*.md against the code, so the docs cannot drift from it.

Every fenced block is extracted: each shell command (backslash continuations joined), each Python block, each JSON
block. What can run in seconds runs for real; everything else is checked without running it ("dry"):

* ``make run RUN_CONFIG=...``: ``make -n`` prints the recipe, which runs with the environment make exports, with
  ``printf`` in place of the Python interpreter, so we see the exact argv the user's command would produce; its
  ``--run-config`` string is parsed with Flower's own parser (``flwr.common.config.parse_config_args``) and every
  key and value is validated (keys of ``[tool.flwr.app.config]``, :class:`edgeflower.config.AppConfig`).
* other ``make`` targets: ``make -n`` must succeed.
* ``edgeflower ...`` and ``python -m edgeflower.flwrctl ...``: the arguments are parsed by the command's own parser.
* ``flwr run ... --run-config ...``: the run config is parsed and validated as above.
* Python blocks: compiled, undefined names reported by ``ruff --select F821`` (placeholders written ``...`` are
  allowed); blocks marked cheap run for real.
* JSON blocks: parsed.

``--real all`` also runs the long examples for real, one after another, and prints each one's wall time next to
the time the docs promise (a ``# about N min`` comment): ``make run`` lines (with a private ``FLWR_HOME``),
``run-deploy``, Python blocks, and the ``edgeflower`` commands that finish on their own and need nothing the docs
write as a placeholder (``runs/<run>``) or a file that is not there (:data:`RUNS_ALONE`); the rest stays dry.

Usage::

    .venv/bin/python scripts/doc_examples.py               # CI mode: cheap ones for real, the rest dry
    .venv/bin/python scripts/doc_examples.py --real all    # the long examples for real too (tens of minutes)
    .venv/bin/python scripts/doc_examples.py --real all --logs doc-logs   # ... keeping every output
    .venv/bin/python scripts/doc_examples.py --list        # what was extracted, with the docs' expected times
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ("README.md", "docs/*.md")
SHELL_WORDS = {"head", "cat", "ls", "source", "export", "cd", "echo", "kill", "mkdir", "rm", "cp"}
"""Ordinary shell commands in examples: nothing of ours to check."""
FLOWER_DAEMONS = {"flower-superlink", "flower-supernode"}
CHEAP_PYTHON_MARK = "# runs in seconds"
"""A Python block whose first line carries this comment runs for real in CI."""
NEEDS_SERVICE_MARK = "# with "
"""A Python block whose first line starts so (``# with `edgeflower serve` running``) needs a service started by an
earlier example: checked dry even with ``--real all``."""
MADE_EARLIER = ("does not exist", "is not a policy file")
"""Config errors about a file an earlier example writes (``agent.pt`` of ``train-agent``, a secret file): a dry
check accepts them; the real run comes after the step that writes the file."""
RUNS_ALONE = {"train-agent", "prune", "portfolio", "move"}
"""``edgeflower`` subcommands that finish on their own (no server that runs until stopped): ``--real all`` runs
them when the example has no placeholder and its ``--checkpoint`` exists."""
EXPECTED = re.compile(r"#.*?\babout (\d+(?:\.\d+)?) ?(s|min|minutes?|seconds?)\b")


@dataclass
class Example:
    """One command or code block of the docs."""

    file: str
    line: int
    lang: str
    text: str
    kind: str = ""
    expected_s: float | None = None

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"


@dataclass
class Outcome:
    """What checking (or running) one example gave."""

    example: Example
    mode: str  # "real", "dry", "skip"
    ok: bool
    detail: str = ""
    seconds: float = 0.0
    parsed: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------
def doc_paths(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown file under docs/."""
    out: list[Path] = []
    for pattern in DOC_FILES:
        out += sorted(root.glob(pattern))
    return out


def extract(path: Path, root: Path = ROOT) -> list[Example]:
    """Every shell command, Python block and JSON block in the fenced code of ``path``."""
    rel = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = len(fence.group(1)), fence.group(2)
        start = i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        if lang == "bash":
            out += _commands(rel, start, body)
        elif lang in ("python", "json"):
            out.append(Example(rel, start + 1, lang, "\n".join(body), kind=lang))
    return out


def _commands(rel: str, start: int, body: list[str]) -> list[Example]:
    out: list[Example] = []
    j = 0
    while j < len(body):
        first = j
        text = body[j]
        while text.rstrip().endswith("\\") and j + 1 < len(body):
            j += 1
            text = text.rstrip()[:-1] + " " + body[j].strip()
        j += 1
        if text.strip().startswith("<<") or not text.strip() or text.strip().startswith("#"):
            continue
        if "<<" in text:  # a heredoc: skip its body
            end = text.split("<<", 1)[1].strip().strip("'\"")
            while j < len(body) and body[j].strip() != end:
                j += 1
            j += 1
        ex = Example(rel, start + first + 1, "bash", text.strip())
        m = EXPECTED.search(text)
        if m:
            ex.expected_s = float(m.group(1)) * (60 if m.group(2).startswith("min") else 1)
        ex.kind = classify(ex.text)
        out.append(ex)
    return out


def words(text: str) -> list[str]:
    """The command's words as the user's shell splits them (comments, a leading ``sudo`` and a trailing ``&``
    dropped)."""
    argv = shlex.split(text, comments=True)
    argv = argv[1:] if argv[:1] == ["sudo"] else argv
    return argv[:-1] if argv and argv[-1] == "&" else argv


def classify(text: str) -> str:
    """``make-run``, ``make``, ``edgeflower``, ``flwrctl``, ``flwr``, ``flower-daemon`` or ``shell``."""
    try:
        argv = words(text)
    except ValueError:
        return "shell"
    if not argv:
        return "shell"
    exe = Path(argv[0]).name
    if exe == "make":
        return "make-run" if len(argv) > 1 and argv[1] == "run" else "make"
    if exe == "edgeflower":
        return "edgeflower"
    if exe.startswith("python") and argv[1:3] == ["-m", "edgeflower.flwrctl"]:
        return "flwrctl"
    if exe == "flwr":
        return "flwr"
    if exe in FLOWER_DAEMONS:
        return "flower-daemon"
    return "shell"


def all_examples(root: Path = ROOT) -> list[Example]:
    """Every example of every doc file."""
    out: list[Example] = []
    for path in doc_paths(root):
        out += extract(path, root)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------
def app_config_keys(root: Path = ROOT) -> dict:
    """The defaults of ``[tool.flwr.app.config]``."""
    with open(root / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def parse_run_config(text: str, root: Path = ROOT) -> dict:
    """Parse a ``--run-config`` string as ``flwr run`` does, then validate keys and values as the app does.

    Raises
    ------
    ValueError
        Naming the unknown key or the invalid value (Flower's own parse error included).
    """
    from flwr.common.config import parse_config_args

    try:
        parsed = dict(parse_config_args([text]))
    except Exception as exc:  # Flower raises click.ClickException on a malformed string
        raise ValueError(f"Flower cannot parse --run-config {text!r}: {exc}") from exc
    if text.strip() and not parsed:
        raise ValueError(f"--run-config {text!r} holds no key=value pair")
    defaults = app_config_keys(root)
    unknown = sorted(set(parsed) - set(defaults))
    if unknown:
        raise ValueError(f"unknown run-config keys {unknown}")
    from edgeflower.config import AppConfig

    try:
        AppConfig.from_run_config({**defaults, **parsed})
    except ValueError as exc:
        if not any(m in str(exc) for m in MADE_EARLIER):
            raise
    return parsed


def make_env(args: Sequence[str], root: Path = ROOT) -> dict[str, str]:
    """The environment make exports to its recipes for ``make <args>`` (read from make itself by a probe target
    that only prints it; the targets of ``args`` are left out, so nothing is built or run)."""
    probe = "_doc_examples_env: ; @env -0"
    variables = [a for a in args if "=" in a and not a.startswith("-")]
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(root), "--eval", probe, "_doc_examples_env", *variables],
        capture_output=True,
        check=True,
    )
    pairs = [p.split("=", 1) for p in proc.stdout.decode().split("\0") if "=" in p]
    return {k: v for k, v in pairs}


def make_run_argv(args: Sequence[str], root: Path = ROOT) -> list[str]:
    """The argv ``make <args>`` would run for ``flwrctl run-sim`` (``make -n``, the recipe evaluated by bash with
    make's environment and ``printf`` in place of the interpreter)."""
    recipe = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout
    joined = recipe.replace("\\\n", " ")
    lines = [ln for ln in joined.splitlines() if "edgeflower.flwrctl" in ln]
    if len(lines) != 1:
        raise ValueError(f"make -n {' '.join(args)}: expected one flwrctl line, got {len(lines)}:\n{recipe}")
    line = lines[0].strip()
    interp = line.split()[0]
    shown = "printf '%s\\0' " + line[len(interp) :]
    out = subprocess.run(
        ["bash", "-c", shown], capture_output=True, check=True, env=make_env(args, root), cwd=root
    ).stdout.decode()
    return [interp, *out.split("\0")[:-1]]


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _concrete(argv: list[str]) -> list[str]:
    """Drop what the docs write as placeholders: ``[optional parts]`` and ``...``."""
    out: list[str] = []
    depth = 0
    for a in argv:
        if a.startswith("["):
            depth += 1
        if depth == 0 and a != "...":
            out.append(a)
        if a.endswith("]"):
            depth = max(0, depth - 1)
    return out


def check_dry(ex: Example, root: Path = ROOT) -> Outcome:
    """Check one example without running it."""
    t0 = time.perf_counter()
    try:
        parsed: dict = {}
        detail = ""
        if ex.kind == "make-run":
            argv = make_run_argv(words(ex.text)[1:], root)
            rc = _option(argv, "--run-config") or ""
            parsed = parse_run_config(rc, root)
            detail = f"--run-config {rc!r}"
        elif ex.kind == "make":
            subprocess.run(["make", "-n", "-C", str(root), *words(ex.text)[1:]], capture_output=True, check=True)
        elif ex.kind == "edgeflower":
            from edgeflower.cli import build_parser

            _parse(build_parser(), _concrete(words(ex.text)[1:]))
        elif ex.kind == "flwrctl":
            from edgeflower.flwrctl import build_parser as flwrctl_parser

            args = _parse(flwrctl_parser(), _concrete(words(ex.text)[3:]))
            parsed = parse_run_config(args.run_config, root) if args.run_config else {}
        elif ex.kind == "flwr":
            rc = _option(words(ex.text), "--run-config")
            if rc is not None:
                parsed = parse_run_config(rc, root)
                detail = f"--run-config {rc!r}"
        elif ex.kind == "python":
            _check_python(ex.text, root)
        elif ex.kind == "json":
            json.loads(ex.text)
        else:
            return Outcome(ex, "skip", True, "shell/Flower command", 0.0)
        return Outcome(ex, "dry", True, detail, time.perf_counter() - t0, parsed)
    except (ValueError, SystemExit, subprocess.CalledProcessError, SyntaxError) as exc:
        msg = exc.stderr.decode() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        return Outcome(ex, "dry", False, msg.strip()[-600:], time.perf_counter() - t0)


class _ParseError(ValueError):
    pass


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    def fail(message: str) -> None:
        raise _ParseError(f"{parser.prog}: {message}")

    _patch_errors(parser, fail)
    return parser.parse_args(argv)


def _patch_errors(parser: argparse.ArgumentParser, fail) -> None:
    parser.error = fail  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _patch_errors(sub, fail)


def _check_python(code: str, root: Path) -> None:
    compile(code, "<doc>", "exec")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("ruff")), "check", "--no-cache", "--isolated", "--select", "F821",
             "--output-format", "concise", fh.name],
            capture_output=True, text=True, cwd=root,
        )  # fmt: skip
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        found = [ln.split(": ", 1)[-1] for ln in proc.stdout.splitlines() if "F821" in ln]
        raise ValueError("undefined names: " + "; ".join(found))


def run_real(ex: Example, root: Path = ROOT, timeout: float = 1800.0, logs: Path | None = None) -> Outcome:
    """Run one example for real (Python blocks in-process, commands through bash at the repository root); with
    ``logs``, a command's whole output goes to ``logs/<file>-<line>.log``."""
    t0 = time.perf_counter()
    try:
        if ex.kind == "python":
            cwd = os.getcwd()
            os.chdir(root)
            try:
                exec(compile(ex.text, ex.where, "exec"), {"__name__": "__doc_example__"})
            finally:
                os.chdir(cwd)
            return Outcome(ex, "real", True, "", time.perf_counter() - t0)
        # the docs write `edgeflower ...` for a shell with the virtual environment active (`source .venv/bin/activate`)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        text = ex.text
        if ex.kind == "make-run":  # a private Flower home: never the project's .flwr other runs may use
            text += f" FLWR_HOME={tempfile.mkdtemp(prefix='flwr-doc-')}"
        proc = subprocess.run(
            ["bash", "-c", text], cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        ok = proc.returncode == 0
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            name = ex.where.replace("/", "_").replace(":", "-")
            (logs / f"{name}.log").write_text(f"$ {ex.text}\n{proc.stdout}{proc.stderr}", encoding="utf-8")
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return Outcome(ex, "real", ok, " | ".join(tail)[-300:], time.perf_counter() - t0)
    except Exception as exc:  # report every failure of an example, keep checking the others
        return Outcome(ex, "real", False, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)


def is_cheap(ex: Example) -> bool:
    """Runs in seconds with nothing started before: marked Python blocks and ``edgeflower --help``/``--version``."""
    if ex.kind == "python":
        return ex.text.lstrip().startswith(CHEAP_PYTHON_MARK)
    if ex.kind == "edgeflower":
        argv = words(ex.text)
        return argv[1:] in (["--help"], ["--version"])
    return False


def runs_alone(ex: Example, root: Path = ROOT) -> bool:
    """Whether ``--real all`` runs ``ex``: ``make run``, ``run-deploy``, Python blocks that need no service started
    before, and the :data:`RUNS_ALONE` commands without placeholders whose ``--checkpoint`` exists."""
    if ex.kind in ("make-run", "flwrctl"):
        return True
    if ex.kind == "python":
        return not ex.text.startswith(NEEDS_SERVICE_MARK)
    if ex.kind != "edgeflower" or "<" in ex.text or "..." in ex.text:
        return False
    argv = words(ex.text)
    checkpoint = _option(argv, "--checkpoint")
    return len(argv) > 1 and argv[1] in RUNS_ALONE and (checkpoint is None or (root / checkpoint).exists())


def iter_checks(real: str = "cheap", root: Path = ROOT, only: str = "", logs: Path | None = None) -> Iterator[Outcome]:
    """Check every example, yielding each outcome as soon as it is known: ``real`` is ``none``, ``cheap`` (CI) or
    ``all``; ``logs`` keeps the output of every command run for real."""
    for ex in all_examples(root):
        if only and only not in ex.text and only not in ex.where:
            continue
        runs = (real == "all" and runs_alone(ex, root)) or (real in ("cheap", "all") and is_cheap(ex))
        yield run_real(ex, root, logs=logs) if runs else check_dry(ex, root)


def check_all(real: str = "cheap", root: Path = ROOT, only: str = "") -> list[Outcome]:
    """Every outcome of :func:`iter_checks`."""
    return list(iter_checks(real, root, only))


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit code 1 when any example fails."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--real", choices=("none", "cheap", "all"), default="cheap", help="what runs for real")
    parser.add_argument("--list", action="store_true", help="only list the extracted examples")
    parser.add_argument(
        "--only", default="", help="only examples whose text or place (e.g. docs/pruning.md:75) contains this string"
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep each real command's output in this folder")
    args = parser.parse_args(argv)
    if args.list:
        for ex in all_examples():
            print(f"{ex.where:24} {ex.kind:13} {_fmt_s(ex.expected_s):>7}  {ex.text.splitlines()[0][:90]}")
        return 0
    failed = 0
    for o in iter_checks(args.real, only=args.only, logs=args.logs):  # one line per example as it finishes
        ex = o.example
        status = "ok" if o.ok else "FAIL"
        failed += not o.ok
        first = ex.text.splitlines()[0][:80]
        expected = f" (docs: {_fmt_s(ex.expected_s)})" if ex.expected_s else ""
        print(f"{status:4} {o.mode:4} {_fmt_s(o.seconds):>7}{expected} {ex.where:22} {first}", flush=True)
        if not o.ok:
            print(f"       {o.detail}", flush=True)
    print(f"{failed} failing example(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
