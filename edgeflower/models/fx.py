"""Any ``nn.Module`` as a :class:`~edgeflower.models.splittable.SplittableModel`, by tracing it with ``torch.fx``.

An ``nn.Sequential`` is split between its children as it is. Any other module is traced into a graph; a *valid
cut* (the Adaptive DNNs paper's term) is a point in the graph's execution order where exactly one value, a tensor,
is computed before it and used after it, no module or parameter is used on both sides, and nothing after it writes
into that tensor in place (a tail receives it as a leaf that requires grad). The graph between two
consecutive valid cuts becomes one block, a ``torch.fx.GraphModule`` that keeps the original module paths, so the
blocks' state-dict keys are ``blocks.<i>.<original path>``.

Tracing is symbolic: control flow that depends on tensor values cannot be traced, and the error names the
construct. A submodule whose ``forward`` reads ``self.training`` (dropout-like behaviour written by hand, e.g.
torchvision's ``StochasticDepth``) is kept as one opaque call so the traced graph stays correct in both modes.
"""

from __future__ import annotations

import inspect
import itertools
import textwrap
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from edgeflower.models.splittable import ModelSpec, SplittableModel

__all__ = ["TraceError", "splittable", "trace_module"]


class TraceError(ValueError):
    """A module cannot be traced into a graph (the message names the construct and where it is)."""


def _reads_training_flag(module: nn.Module) -> bool:
    forward = type(module).forward
    if forward in (nn.Module.forward, nn.Sequential.forward):
        return False
    try:
        source = textwrap.dedent(inspect.getsource(forward))
    except (OSError, TypeError):
        return False
    return "self.training" in source


class _Tracer(fx.Tracer):
    """fx's tracer with more leaves: modules that branch on ``self.training`` and any requested types."""

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaves and isinstance(m, self.leaves):
            return True
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return True
        if super().is_leaf_module(m, module_qualified_name):
            return True
        return module_qualified_name != "" and _reads_training_flag(m)


def trace_module(module: nn.Module, leaves: Sequence[type[nn.Module]] = ()) -> fx.GraphModule:
    """Trace ``module`` symbolically into a ``GraphModule`` that shares its submodules and parameters.

    Parameters
    ----------
    module : nn.Module
        The module.
    leaves : sequence of type
        Module types to keep as opaque calls (in addition to ``torch.nn``'s own layers).

    Raises
    ------
    TraceError
        If tracing fails (data-dependent control flow, unsupported Python constructs); the message names the
        module type and fx's reason.
    """
    tracer = _Tracer(tuple(leaves))
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError ... for untraceable code
        raise TraceError(
            f"cannot trace {type(module).__module__}.{type(module).__qualname__} with torch.fx: "
            f"{type(exc).__name__}: {exc}. Data-dependent control flow (if/for on tensor values) and "
            "non-tensor-friendly Python cannot be traced; make that code a submodule and pass its type in leaves="
        ) from exc
    name = type(module).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _check_mode_independent(module: nn.Module, gm: fx.GraphModule, leaves: Sequence[type[nn.Module]]) -> None:
    was = module.training
    try:
        module.train(not was)
        other = trace_module(module, leaves)
    finally:
        module.train(was)
    if other.code != gm.code:
        raise TraceError(
            f"the forward of {type(module).__qualname__} branches on self.training: the traced graph differs "
            "between train and eval mode, so one graph cannot stand for the model"
        )


def _resources(node: fx.Node) -> tuple[str, ...]:
    if node.op in ("call_module", "get_attr"):
        return (str(node.target),)
    return ()


def _in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` overwrites its input (a tail must never start by writing into the received activation)."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    return node.op == "call_function" and bool(node.kwargs.get("inplace", False))


def _shared_spans(nodes: list[fx.Node], index: dict[fx.Node, int]) -> list[tuple[int, int]]:
    """``(first, last)`` node index of every module or attribute used more than once: no cut may fall in between."""
    span: dict[str, list[int]] = {}
    for n in nodes:
        if n.op == "get_attr":  # attributes are re-read in every block that uses them
            for user in n.users:
                span.setdefault(str(n.target), []).append(index[user])
        elif n.op == "call_module":
            span.setdefault(str(n.target), []).append(index[n])
    return [(min(v), max(v)) for v in span.values() if min(v) != max(v)]


def _can_cross(crossing: fx.Node, i: int, shared: list[tuple[int, int]], root: nn.Module) -> bool:
    """Whether a cut after node ``i`` with ``crossing`` the one live value is valid: a tensor of known shape, no
    shared module or attribute on both sides, and no user that overwrites it."""
    if not isinstance(crossing.meta.get("tensor_meta"), TensorMetadata):
        return False
    if any(lo <= i < hi for lo, hi in shared):
        return False
    return not any(_in_place(user, root) for user in crossing.users)


def _cuts(nodes: list[fx.Node], root: nn.Module) -> list[tuple[int, fx.Node]]:
    """``(i, value)`` for every valid cut after ``nodes[i]``, ``value`` being the one tensor that crosses it."""
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    shared = _shared_spans(nodes, index)
    cuts: list[tuple[int, fx.Node]] = []
    live: set[fx.Node] = set()
    compute = False  # a call since the last cut (no empty blocks)
    for i, n in enumerate(nodes[:-2]):  # never cut right before the output (an empty last block)
        if n.op != "get_attr":
            live.add(n)
        compute = compute or n.op.startswith("call_")
        live = {m for m in live if last_use[m] > i}
        if not compute or len(live) != 1:
            continue
        (crossing,) = live
        if _can_cross(crossing, i, shared, root):
            cuts.append((i, crossing))
            compute = False
    return cuts


def _block_name(nodes: list[fx.Node]) -> str:
    for n in reversed(nodes):
        if n.op == "call_module":
            return str(n.target)
    return nodes[-1].name


def _segment(gm: fx.GraphModule, nodes: list[fx.Node], source: fx.Node, final: fx.Node | None) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder("x")}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise TraceError(f"internal: value {n.name} crosses a cut")
            env[n] = graph.get_attr(n.target)  # type: ignore[arg-type]
        return env[n]

    for n in nodes:
        if n.op in ("placeholder", "get_attr"):
            continue
        if n.op == "output":
            graph.output(fx.map_arg(n.args[0], arg))
            continue
        env[n] = graph.node_copy(n, arg)
    if final is not None:
        graph.output(env[final])
    graph.lint()
    return fx.GraphModule(gm, graph, "Block")


def splittable(
    module: nn.Module,
    example_input: torch.Tensor,
    spec: ModelSpec | None = None,
    leaves: Sequence[type[nn.Module]] = (),
) -> SplittableModel:
    """Make ``module`` splittable; the result shares ``module``'s parameters.

    Parameters
    ----------
    module : nn.Module
        Any model taking one tensor and returning one tensor. An ``nn.Sequential`` (without its own ``forward``)
        is split between its children; anything else is traced with ``torch.fx``.
    example_input : torch.Tensor
        One batch of input (``[N, ...]``), used to find which values are tensors and the output shape.
    spec : ModelSpec, optional
        The model's description; by default ``"module:Class"`` of ``module`` with the example's shape and the
        output's width as ``num_classes``.
    leaves : sequence of type
        Module types to keep as opaque calls when tracing.

    Returns
    -------
    SplittableModel
        Blocks in order; ``model(x)`` equals ``module(x)``; ``model.split(k)`` cuts between blocks.

    Raises
    ------
    TraceError
        If tracing fails (naming the construct), the model does not take exactly one tensor and return one
        tensor, or its graph depends on the training mode.
    """
    if isinstance(module, SplittableModel):
        return module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(example_input)
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TraceError(
            f"{type(module).__qualname__} returns {type(out).__name__}; a splittable model returns a tensor"
        )
    if spec is None:
        cls = type(module)
        shape = tuple(int(s) for s in example_input.shape[1:])
        spec = ModelSpec(f"{cls.__module__}:{cls.__qualname__}", shape, int(out.shape[-1]))  # type: ignore[arg-type]
    if type(module).forward is nn.Sequential.forward:
        children = list(module.named_children())
        return SplittableModel([m for _, m in children], spec, [n for n, _ in children])
    gm = trace_module(module, leaves)
    _check_mode_independent(module, gm, leaves)
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        names = ", ".join(n.name for n in placeholders)
        raise TraceError(
            f"{type(module).__qualname__}.forward takes {len(placeholders)} inputs ({names}); expected one"
        )
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    finally:
        gm.train(was_training)
    # cut points, then blocks between consecutive cuts
    cuts = _cuts(nodes, gm)
    bounds: list[tuple[int, fx.Node | None]] = [(-1, placeholders[0]), *cuts, (len(nodes) - 1, None)]
    blocks: list[nn.Module] = []
    names: list[str] = []
    for (lo, source), (hi, final) in itertools.pairwise(bounds):
        part = nodes[lo + 1 : hi + 1]
        blocks.append(_segment(gm, part, source, final))  # type: ignore[arg-type]
        names.append(_block_name(part))
    model = SplittableModel(blocks, spec, names)
    model.train(was_training)
    return model
