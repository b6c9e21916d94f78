"""Models named by import reference: ``"package.module:callable"``, the way Flower names its apps.

A reference names a factory (a class or a function) that returns an ``nn.Module``. Every process builds its model
from such a name: the ServerApp and ClientApp from the run config, an edge server from the spec a device sends.
Code never travels over the network; a process that builds models from network input (an edge server, an
inference node) builds only references it was told to trust (``edgeflower edge-server --model pkg.mod:Net``,
or :func:`trust_reference` in the process that configured the run).
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "ModelReferenceError",
    "check_trusted",
    "factory_kwargs",
    "is_reference",
    "resolve_reference",
    "trust_reference",
    "trusted_references",
]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE = re.compile(f"^{_NAME}:{_NAME}$")

_trusted: set[str] = set()
_lock = threading.Lock()


class ModelReferenceError(ValueError):
    """A model reference is malformed, cannot be imported, or is not trusted here."""


def is_reference(name: str) -> bool:
    """True if ``name`` has the form of an import reference ``"package.module:callable"``.

    Parameters
    ----------
    name : str
        A model name from a run config, a command line or a spec.
    """
    return isinstance(name, str) and ":" in name


def _check_form(ref: str) -> tuple[str, str]:
    if not _REFERENCE.match(ref):
        raise ModelReferenceError(
            f"invalid model reference {ref!r}: expected 'package.module:callable' (identifiers separated by dots)"
        )
    module, _, attr = ref.partition(":")
    return module, attr


def resolve_reference(ref: str) -> Callable[..., Any]:
    """Import the factory that ``ref`` names.

    Parameters
    ----------
    ref : str
        ``"package.module:callable"`` (the callable may be a dotted attribute path, e.g. ``"pkg.mod:Zoo.small"``).

    Returns
    -------
    callable
        The factory.

    Raises
    ------
    ModelReferenceError
        If the reference is malformed, the module cannot be imported (the message says why) or the attribute is
        missing or not callable.
    """
    module_name, attr = _check_form(ref)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelReferenceError(
            f"cannot import module {module_name!r} of model reference {ref!r}: {exc} "
            "(is the package installed or on PYTHONPATH in this process?)"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelReferenceError(f"model reference {ref!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ModelReferenceError(f"model reference {ref!r} names a {type(obj).__name__}, not a class or function")
    return obj


def factory_kwargs(factory: Callable[..., Any], offered: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``factory``: every option, plus each offered value the factory names as a parameter.

    Parameters
    ----------
    factory : callable
        The model factory.
    offered : dict
        Values the factory may take if it wants them (``in_shape``, ``num_classes``, ``norm``).
    options : dict
        Values it must take (the spec's options; an unknown one is an error).
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in offered.items() if k in params}
    kwargs.update(options)
    return kwargs


def trust_reference(*refs: str) -> None:
    """Allow this process to build the given references when a network peer names them.

    Parameters
    ----------
    *refs : str
        Model references; each is checked for form and imported now, so a typo fails at start-up.
    """
    for ref in refs:
        resolve_reference(ref)
        with _lock:
            _trusted.add(ref)


def trusted_references() -> frozenset[str]:
    """The references this process builds for network peers."""
    with _lock:
        return frozenset(_trusted)


def check_trusted(name: str, trusted: Iterable[str] | None = None) -> None:
    """Raise :class:`ModelReferenceError` unless ``name`` is a zoo name or a trusted reference.

    Parameters
    ----------
    name : str
        The model name received from a peer.
    trusted : iterable of str, optional
        The allowed references; defaults to :func:`trusted_references`.
    """
    if not is_reference(name):
        return
    allowed = frozenset(trusted) if trusted is not None else trusted_references()
    if name not in allowed:
        hint = ", ".join(sorted(allowed)) or "none"
        raise ModelReferenceError(
            f"model reference {name!r} is not trusted by this process (trusted: {hint}); start it with --model " + name
        )
