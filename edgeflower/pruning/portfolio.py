"""A portfolio: the structurally pruned variants of one model, measured, and saved without pickle.

On disk a portfolio is a directory with ``portfolio.json`` (the manifest: the zoo spec, and per variant its
architecture description, measured figures and the SHA-256 of its weight file) and one ``<name>.pt`` weight file
per variant (a plain dict of tensors, read back with ``torch.load(weights_only=True)`` only after its hash was
checked). Anything missing, corrupt or tampered with raises :class:`PortfolioError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from edgeflower.data import ImageData
from edgeflower.models.splittable import ModelSpec
from edgeflower.models.zoo import build_model
from edgeflower.pruning.arch import build_from_arch, describe_arch
from edgeflower.pruning.errors import PortfolioError
from edgeflower.pruning.imp import SparseLevel
from edgeflower.pruning.measure import count_params, cpu_latency_ms, state_bytes
from edgeflower.pruning.surgery import surgery
from edgeflower.training import evaluate

__all__ = ["MANIFEST", "MIN_STRUCTURAL_SAVING", "Portfolio", "Variant", "build_portfolio", "measure_variant"]

MIN_STRUCTURAL_SAVING = 0.01
"""Share of the dense model's parameters surgery must remove for a variant to count as structurally smaller.

Magnitude pruning zeroes single weights; surgery can only remove a channel once *all* its weights are zero. At
low compression the zeros are scattered, nothing (or a few hundred parameters) is removed, and the variant is the
dense model in size and speed: the portfolio says so instead of passing it off as a smaller model."""

MANIFEST = "portfolio.json"
FORMAT = "edgeflower.portfolio"
VERSION = 1


@dataclass
class Variant:
    """One variant of a portfolio.

    Attributes
    ----------
    name : str
        Identifier, also the weight file's stem (e.g. ``"x16"``).
    compression : float
        Compression of the prunable weights of the sparse model it came from.
    params : int
        Parameters of the surgered model.
    bytes : int
        Size of its weight file.
    latency_ms : dict of int to float
        Median CPU latency per batch size.
    accuracy : float
        Test accuracy (NaN when not measured).
    arch : dict
        Architecture description (see :func:`~edgeflower.pruning.arch.describe_arch`).
    file, sha256 : str
        Weight file name and its hash (set when saved).
    extra : dict
        Anything else worth keeping (sparse accuracy, surgery time, ...).
    model : nn.Module, optional
        The model itself when in memory (never serialised).
    """

    name: str
    compression: float
    params: int
    bytes: int
    latency_ms: dict[int, float]
    accuracy: float
    arch: dict[str, Any]
    file: str = ""
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def dense_params(self) -> int | None:
        """Parameters of the dense model it was cut from (its sparse model's count), when recorded."""
        value = self.extra.get("sparse_params")
        return int(value) if value else None

    @property
    def structural_saving(self) -> float | None:
        """Share of the dense model's parameters surgery removed (``None`` when the dense count is unknown)."""
        dense = self.dense_params
        return None if dense is None else 1.0 - self.params / dense

    @property
    def structurally_smaller(self) -> bool:
        """Whether surgery removed at least :data:`MIN_STRUCTURAL_SAVING` of the dense parameters (``True`` when
        the dense count is unknown: nothing to compare with)."""
        saving = self.structural_saving
        return saving is None or saving >= MIN_STRUCTURAL_SAVING

    def to_json(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "name": self.name,
            "compression": self.compression,
            "params": self.params,
            "bytes": self.bytes,
            "latency_ms": {str(k): v for k, v in self.latency_ms.items()},
            "accuracy": None if math.isnan(self.accuracy) else self.accuracy,
            "file": self.file,
            "sha256": self.sha256,
            "arch": self.arch,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Variant:
        """Inverse of :meth:`to_json` (raises ``KeyError``/``TypeError``/``ValueError`` when malformed)."""
        acc = data["accuracy"]
        return cls(
            name=str(data["name"]),
            compression=float(data["compression"]),
            params=int(data["params"]),
            bytes=int(data["bytes"]),
            latency_ms={int(k): float(v) for k, v in dict(data["latency_ms"]).items()},
            accuracy=float("nan") if acc is None else float(acc),
            arch=dict(data["arch"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            extra=dict(data.get("extra", {})),
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def measure_variant(
    model: nn.Module,
    in_shape: Sequence[int],
    test: ImageData | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
) -> dict[str, Any]:
    """Parameter count, bytes, CPU latency per batch size and accuracy of ``model``."""
    return {
        "params": count_params(model),
        "bytes": state_bytes(model),
        "latency_ms": {b: cpu_latency_ms(model, in_shape, b, repeats) for b in batch_sizes},
        "accuracy": evaluate(model, test)[1] if test is not None else float("nan"),
    }


class Portfolio:
    """Variants of one zoo model, ordered by compression.

    Parameters
    ----------
    spec : ModelSpec
        The zoo model the variants came from.
    variants : sequence of Variant
        The variants.
    meta : dict, optional
        Anything else (the dense baseline's figures, the IMP schedule ...), kept in the manifest.
    """

    def __init__(self, spec: ModelSpec, variants: Sequence[Variant], meta: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.variants = sorted(variants, key=lambda v: v.compression)
        self.meta = dict(meta or {})
        self.root: Path | None = None
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; have {', '.join(v.name for v in self.variants)}")

    @property
    def names(self) -> list[str]:
        """Variant names in order of compression."""
        return [v.name for v in self.variants]

    def pareto(self, batch_size: int = 1) -> list[Variant]:
        """Variants not dominated in (higher accuracy, lower latency at ``batch_size``, fewer bytes)."""

        def dominated(a: Variant, b: Variant) -> bool:  # b dominates a
            ka = (a.accuracy, -a.latency_ms.get(batch_size, math.inf), -a.bytes)
            kb = (b.accuracy, -b.latency_ms.get(batch_size, math.inf), -b.bytes)
            return all(y >= x for x, y in zip(ka, kb, strict=True)) and kb != ka

        return [a for a in self.variants if not any(dominated(a, b) for b in self.variants if b is not a)]

    def not_smaller(self) -> list[Variant]:
        """Variants surgery could not make structurally smaller than the dense model (see
        :data:`MIN_STRUCTURAL_SAVING`): the dense model in size and speed, useful only for their sparse accuracy."""
        return [v for v in self.variants if not v.structurally_smaller]

    def rows(self) -> list[dict[str, Any]]:
        """One table row per variant."""
        out = []
        for v in self.variants:
            row: dict[str, Any] = {
                "name": v.name,
                "compression": v.compression,
                "params": v.params,
                "bytes": v.bytes,
                "accuracy": v.accuracy,
            }
            row.update({f"ms@{b}": ms for b, ms in sorted(v.latency_ms.items())})
            out.append(row)
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, root: str | Path) -> Path:
        """Write the manifest and one weight file per in-memory variant; returns the directory."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for v in self.variants:
            if v.model is None:
                if self.root is None:
                    raise PortfolioError(f"variant {v.name!r} has no model in memory and no source directory")
                v.model = self.load_model(v.name)
            buf = io.BytesIO()
            torch.save({k: t.detach().contiguous() for k, t in v.model.state_dict().items()}, buf)
            data = buf.getvalue()
            v.file = f"{v.name}.pt"
            v.sha256 = _sha256(data)
            v.bytes = len(data)
            (root / v.file).write_bytes(data)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "spec": self.spec.to_dict(),
            "meta": self.meta,
            "variants": [v.to_json() for v in self.variants],
        }
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=float))
        tmp.replace(root / MANIFEST)
        self.root = root
        return root

    @classmethod
    def load(cls, root: str | Path, models: bool = True) -> Portfolio:
        """Read a portfolio directory.

        Parameters
        ----------
        root : str or Path
            The directory written by :meth:`save`.
        models : bool
            Also load (and verify) every variant's weights into memory; otherwise only the manifest is read and
            :meth:`load_model` loads a variant on demand.

        Raises
        ------
        PortfolioError
            If the manifest or a weight file is missing, corrupt, tampered with or does not fit its architecture.
        """
        root = Path(root)
        path = root / MANIFEST
        data = _read_manifest(path)
        try:
            spec = ModelSpec.from_dict(data["spec"])
            variants = [Variant.from_json(v) for v in data["variants"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PortfolioError(f"{path}: malformed manifest ({exc!r})") from exc
        for v in variants:
            if Path(v.file).name != v.file or not v.file:
                raise PortfolioError(f"{path}: variant {v.name!r} has an unsafe file name {v.file!r}")
        try:
            portfolio = cls(spec, variants, data.get("meta") or {})
        except ValueError as exc:
            raise PortfolioError(f"{path}: {exc}") from exc
        portfolio.root = root
        if models:
            for v in portfolio.variants:
                v.model = portfolio.load_model(v.name)
        return portfolio

    def load_model(self, name: str) -> nn.Module:
        """Load variant ``name`` from disk (hash checked first; ``weights_only=True``); eval mode."""
        if self.root is None:
            raise PortfolioError("this portfolio was never saved or loaded from a directory")
        v = self[name]
        path = self.root / v.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PortfolioError(f"{path}: weight file of variant {name!r} cannot be read ({exc})") from exc
        if _sha256(data) != v.sha256:
            raise PortfolioError(f"{path}: SHA-256 mismatch, the weight file of variant {name!r} is corrupt or altered")
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:
            raise PortfolioError(f"{path}: cannot be read as a tensor file ({exc})") from exc
        try:
            model = build_from_arch(v.arch)
            model.load_state_dict(state, strict=True)
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            raise PortfolioError(f"{path}: does not fit the architecture of variant {name!r} ({exc})") from exc
        return model.eval()


def build_portfolio(
    levels: Sequence[SparseLevel],
    spec: ModelSpec,
    test: ImageData | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    progress: bool = True,
) -> Portfolio:
    """Surgery and measurement of every IMP level: the portfolio in memory (call :meth:`Portfolio.save`).

    Each variant's ``extra`` keeps the sparse model's figures (``sparse_accuracy``, ``sparse_params``),
    the surgery time and the largest output difference between the sparse and the surgered model on test data.
    """
    variants = []
    for level in tqdm(levels, desc="surgery", disable=not progress):
        sparse = build_model(spec)
        sparse.load_state_dict(level.state_dict)
        sparse.eval()
        result = surgery(sparse)
        model = result.model
        figures = measure_variant(model, spec.in_shape, test, batch_sizes, repeats)
        probe = test.x[:64] if test is not None else torch.randn(8, *spec.in_shape)
        with torch.no_grad():
            diff = float((sparse(probe) - model(probe)).abs().max())
        variants.append(
            Variant(
                name=f"x{level.target:g}",
                compression=level.compression,
                params=figures["params"],
                bytes=figures["bytes"],
                latency_ms=figures["latency_ms"],
                accuracy=figures["accuracy"],
                arch=describe_arch(model, spec),
                extra={
                    "sparse_accuracy": level.accuracy,
                    "sparse_params": count_params(sparse),
                    "surgery_s": result.seconds,
                    "max_abs_diff": diff,
                    "removed_channels": result.removed,
                    "folded_constants": result.folded_constants,
                },
                model=model,
            )
        )
    return Portfolio(spec, variants)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The JSON of a portfolio manifest, checked to be one of this format and version."""
    if not path.is_file():
        raise PortfolioError(f"{path}: portfolio manifest not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PortfolioError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PortfolioError(f"{path}: not an edgeflower portfolio manifest")
    if data.get("version") != VERSION:
        raise PortfolioError(f"{path}: unsupported portfolio version {data.get('version')!r}")
    return data
