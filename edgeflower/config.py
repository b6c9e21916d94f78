"""The app's run configuration: parsed from Flower's ``run_config`` and validated, failing fast by key name.

Every key lives in ``[tool.flwr.app.config]`` of ``pyproject.toml`` (hyphenated, as Flower does) and can be
overridden with ``flwr run . --run-config "key=value"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgeflower.config_keys import FALLBACKS, MODES, PARTITIONERS, RANGES, ConfigError, key_of, parse_value
from edgeflower.data.datasets import DATASET_SHAPES, DATASETS
from edgeflower.models.reference import is_reference, trust_reference
from edgeflower.models.splittable import SplittableModel
from edgeflower.models.zoo import NORMS, available_models, build_model
from edgeflower.privacy.models import dp_norm
from edgeflower.privacy.settings import CENTRAL_DP, DPSettings, central_dp_config_error, dp_config_error
from edgeflower.transport.emulation import LinkSchedule, parse_profiles
from edgeflower.transport.limits import MESSAGE_HEADROOM, MIN_MESSAGE_BYTES, message_limit_bytes
from edgeflower.transport.wire import WIRE_DTYPES

__all__ = ["MESSAGE_HEADROOM", "MIN_MESSAGE_BYTES", "AppConfig", "ConfigError", "message_limit_bytes"]


@dataclass(frozen=True)
class AppConfig:
    """Validated run configuration (field ``foo_bar`` is run-config key ``foo-bar``).

    Attributes
    ----------
    mode : str
        ``"fl"`` (classic federated learning: the whole model on the device), ``"split"`` (the device trains
        blocks ``[:split-point]``, an edge server the rest, batch by batch over the offload channel) or
        ``"pipeline"`` (split training with micro-batches in flight, PiPar).
    model : str
        Zoo model name.
    norm : str
        ``"batch"``, ``"group"`` or ``"none"``.
    model_width : float
        Channel multiplier of the model (1.0 = as published).
    split_point : int
        Blocks kept on the device; ``-1`` (or ``"auto"``) means all of them in ``fl`` mode, half of them in
        ``split`` mode, and the PiPar selection in ``pipeline`` mode.
    microbatches : int
        Micro-batches per batch in ``pipeline`` mode; ``0`` (or ``"auto"``) lets PiPar's selection choose.
    dataset : str
        ``"fashion-mnist"``, ``"mnist"`` or ``"cifar10"``.
    data_root : str
        Data directory; empty for the default (Debian's Fashion-MNIST, else ``$EDGEFLOWER_DATA``).
    partitioner : str
        ``"iid"`` or ``"dirichlet"``.
    dirichlet_alpha : float
        Concentration of the Dirichlet label skew.
    num_rounds : int
        Federated rounds.
    local_epochs : int
        Local epochs per round.
    batch_size : int
        Mini-batch size.
    lr, momentum, weight_decay : float
        SGD settings.
    lr_decay_round : int
        Multiply the learning rate by 0.1 from this round on (0 = never), as FedAdapt does at half the rounds.
    fraction_train : float
        Fraction of nodes sampled per round.
    min_nodes : int
        Minimum number of nodes a round needs.
    max_batches : int
        Cap on batches per local epoch (0 = the whole partition); for quick runs.
    eval_samples : int
        Test samples for the centralised evaluation (0 = the whole test set).
    seed : int
        Seed of model initialisation, partitioning and shuffling.
    run_dir : str
        Directory under which each run writes its own folder.
    edge_servers : int
        Edge servers the ServerApp starts in-process on loopback (split modes, when ``edge-addresses`` is empty).
    edge_addresses : str
        Comma-separated ``host:port`` of running ``edgeflower edge-server`` processes (empty = in-process).
    edge_secret_file : str
        File with the token secret those edge servers share (required with ``edge-addresses``).
    edge_root_cert : str
        PEM CA certificate the nodes trust for TLS to the ``edge-addresses`` servers (empty = plaintext); a node's
        node config ``edge-root-cert`` overrides it. Read on the nodes only.
    fallback_replay_mb : float
        Megabytes of sent activations a node keeps per round to rebuild a dead edge server's tail (0 = none).
    device_profiles : str
        Per-node compute slow-down factors, e.g. ``"1,4,2.5"`` (node ``i`` takes value ``i mod n``).
    link_profiles : str
        Per-node links ``"up/down/latency"`` in Mbit/s and ms, e.g. ``"50/50/5,10/10/20"`` (0 = unlimited).
    link_trace : str
        JSON or CSV file of a link schedule applied to every node (overrides ``link-profiles``), by round or time.
    link_schedules : str
        Per-node link schedules by round, ``"1:75/75/0|6:5/5/0;1:50/50/0"`` (nodes separated by ``;``; overrides
        ``link-trace`` and ``link-profiles``).
    planner : str
        Split-point planner in ``split`` mode: ``fixed`` (``split-point``), ``exact`` (cost-model optimum per node)
        or ``fedadapt`` (k-means groups + a trained PPO policy from ``policy-path``).
    policy_path : str
        Policy file written by ``edgeflower train-agent`` (``planner = fedadapt``).
    planner_groups : int
        Device groups of the FedAdapt agent.
    mobility : str
        Scheduled moves ``"NODE@ROUND:FRACTION->EDGE, ..."`` (node position in id order; see
        :func:`edgeflower.device.mobility.parse_mobility`).
    mobility_mode : str
        ``migrate`` (FedFly: the server-side state moves) or ``restart`` (the baseline: the round restarts).
    dp : str
        ``"off"``, ``"device"`` (DP-SGD with Opacus on the device-side part: the whole model in ``fl``) or
        ``"full"`` (in split modes the edge server trains the tail with DP-SGD too).
    dp_noise_multiplier : float
        DP-SGD noise multiplier; ``0`` (or ``"auto"``) = calibrated from ``dp-target-epsilon`` over the run.
    dp_max_grad_norm : float
        Per-sample clipping bound.
    dp_target_epsilon : float
        Each node's privacy budget over the run (0 = none); a node stops training when the next round would
        exceed it.
    dp_delta : float
        The ``delta`` of ``(epsilon, delta)``-DP (required when ``dp`` is on).
    dp_batchnorm : str
        ``"convert"`` (BatchNorm becomes GroupNorm in a DP run, logged) or ``"refuse"`` (a DP run with BatchNorm
        fails).
    central_dp : str
        ``"off"`` or ``"server-fixed"`` (Flower's ``DifferentialPrivacyServerSideFixedClipping`` around FedAvg).
    central_dp_noise_multiplier, central_dp_clipping_norm : float
        Its noise multiplier and clipping norm.
    dp_accountant : str
        ``"rdp"`` or ``"prv"``: the Opacus accountant that reports ``dp-epsilon``, calibrates ``"auto"`` noise and
        stops a node at ``dp-target-epsilon`` (the other one is logged for comparison).
    central_dp_target_epsilon : float
        Client-level budget of central DP (Flower's ``RdpAccountant``); training stops cleanly before a round
        that would exceed it (0 = no budget, epsilon still reported).
    fallback : str
        Split modes: ``"transient"`` (a node whose edge server is unreachable, killed, too slow or overloaded
        trains locally, logged and counted) or ``"never"`` (it fails instead). Permanent errors always fail it.
    max_message_mb : float
        Size limit of one offload-channel message in MiB on the nodes and the in-process edge servers; ``0`` =
        sized from the model (:func:`message_limit_bytes`).
    max_failed_fraction : float
        The run fails when more than this share of a round's nodes fail (and always when none replies).
    round_timeout : float
        Seconds the ServerApp waits for a round's replies (Flower's ``timeout``). The round's edge-server tokens
        (device and migration) live this long, so a session can be used for the whole round and not after it; at
        most an hour, the longest lifetime an edge server accepts.
    wire_dtype : str
        Split modes: activations and gradients on the wire: ``float32`` (exact), ``bfloat16``, ``float16``, ``int8``
        or ``int8-channel`` (8-bit, a scale per tensor or channel; :mod:`edgeflower.transport.wire`).
    """

    mode: str = "fl"
    model: str = "vgg5"
    norm: str = "batch"
    model_width: float = 1.0
    split_point: int = -1
    microbatches: int = 0
    dataset: str = "fashion-mnist"
    data_root: str = ""
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    num_rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay_round: int = 0
    fraction_train: float = 1.0
    min_nodes: int = 2
    max_batches: int = 0
    eval_samples: int = 0
    seed: int = 0
    run_dir: str = "runs"
    edge_servers: int = 2
    edge_addresses: str = ""
    edge_secret_file: str = ""
    edge_root_cert: str = ""
    fallback_replay_mb: float = 256.0
    device_profiles: str = ""
    link_profiles: str = ""
    link_trace: str = ""
    dp: str = "off"
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_target_epsilon: float = 0.0
    dp_delta: float = 0.0
    dp_batchnorm: str = "convert"
    dp_accountant: str = "rdp"
    central_dp: str = "off"
    central_dp_noise_multiplier: float = 0.01
    central_dp_clipping_norm: float = 5.0
    central_dp_target_epsilon: float = 0.0
    link_schedules: str = ""
    planner: str = "fixed"
    policy_path: str = ""
    planner_groups: int = 3
    mobility: str = ""
    mobility_mode: str = "migrate"
    fallback: str = "transient"
    max_message_mb: float = 0.0
    max_failed_fraction: float = 0.5
    wire_dtype: str = "float32"
    round_timeout: float = 3600.0

    @staticmethod
    def key(field_name: str) -> str:
        """Run-config key of a field."""
        return key_of(field_name)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], strict: bool = True) -> AppConfig:
        """Parse and validate Flower's ``context.run_config``.

        Known keys are type-checked (numbers must be finite). An unknown key is an error naming it (with the
        nearest known key), unless ``strict`` is false (an app of your own that adds keys to the same config).

        Raises
        ------
        ConfigError
            Naming the first invalid key.
        """
        known = {cls.key(f.name) for f in fields(cls)}
        unknown = sorted(k for k in run_config if k not in known)
        if strict and unknown:
            key = unknown[0]
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else "; see the run-config table in README.md"
            others = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise ConfigError(key, f"unknown key{hint}{others}")
        values = {
            f.name: parse_value(f.name, f.default, run_config[cls.key(f.name)])
            for f in fields(cls)
            if cls.key(f.name) in run_config
        }
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the first bad key.

        The topics are checked in this order (the first error wins): choices, numeric ranges, DP-SGD, central
        DP, fallback, split point, device and link profiles, planner, mobility, link schedules, edge servers.
        """
        for check in (
            self._check_choices,
            self._check_ranges,
            self._check_dp,
            self._check_central_dp,
            self._check_fallback,
            self._check_split_point,
            self._check_profiles,
            self._check_planner,
            self._check_mobility,
            self._check_link_schedules,
            self._check_edge_servers,
        ):
            check()

    def _check_choices(self) -> None:
        choice: dict[str, tuple[str, ...]] = {
            "mode": MODES,
            "model": (self.model, *available_models()) if is_reference(self.model) else tuple(available_models()),
            "norm": NORMS,
            "dataset": DATASETS,
            "partitioner": PARTITIONERS,
            "wire_dtype": WIRE_DTYPES,
        }
        for name, options in choice.items():
            if getattr(self, name) not in options:
                raise ConfigError(
                    self.key(name), f"unknown value {getattr(self, name)!r}; expected one of {', '.join(options)}"
                )

    def _check_ranges(self) -> None:
        for name, (ok, message) in RANGES.items():
            if not ok(getattr(self, name)):
                raise ConfigError(self.key(name), f"{message}, got {getattr(self, name)!r}")

    def _check_dp(self) -> None:
        dp_error = dp_config_error(
            self.dp, self.dp_noise_multiplier, self.dp_max_grad_norm, self.dp_target_epsilon, self.dp_delta,
            self.dp_batchnorm, self.norm, self.dp_accountant,
        )  # fmt: skip
        if dp_error is not None:
            raise ConfigError(*dp_error)

    def _check_central_dp(self) -> None:
        if self.central_dp not in CENTRAL_DP:
            raise ConfigError("central-dp", f"unknown value {self.central_dp!r}; expected {' or '.join(CENTRAL_DP)}")
        if not self.central_dp_noise_multiplier >= 0:
            raise ConfigError("central-dp-noise-multiplier", f"must be >= 0, got {self.central_dp_noise_multiplier!r}")
        if not self.central_dp_clipping_norm > 0:
            raise ConfigError("central-dp-clipping-norm", f"must be > 0, got {self.central_dp_clipping_norm!r}")
        central_error = central_dp_config_error(
            self.central_dp, self.central_dp_noise_multiplier, self.central_dp_target_epsilon
        )
        if central_error is not None:
            raise ConfigError(*central_error)

    def _check_fallback(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ConfigError("fallback", f"unknown value {self.fallback!r}; expected one of {', '.join(FALLBACKS)}")

    def _check_split_point(self) -> None:
        blocks = self.build_model().num_blocks
        if not -1 <= self.split_point <= blocks:
            raise ConfigError(
                "split-point",
                f"{self.split_point} is out of range for {self.model}: valid values are 0..{blocks} (or -1 = all)",
            )
        if self.mode == "fl" and self.split_point not in (-1, blocks):
            raise ConfigError("split-point", "splits nothing in mode 'fl': set mode = 'split' or 'pipeline' to offload")
        if self.mode != "pipeline" and self.microbatches != 0:
            raise ConfigError("microbatches", f"{self.microbatches} is used in mode 'pipeline' only, not {self.mode!r}")
        if self.mode != "fl" and self.planner == "fixed" and self.split_point == blocks:
            raise ConfigError(
                "split-point",
                f"{blocks} keeps all {blocks} blocks of {self.model} on the device: nothing is offloaded in mode "
                f"{self.mode!r}; use mode = 'fl' for that, or a split point 0..{blocks - 1}",
            )

    def _check_profiles(self) -> None:
        for key, kind in (("device_profiles", "device"), ("link_profiles", "link")):
            try:
                parse_profiles(getattr(self, key), kind)
            except ValueError as exc:
                raise ConfigError(self.key(key), str(exc)) from None

    def _check_planner(self) -> None:
        from edgeflower.planning import PLANNERS

        if self.planner not in PLANNERS:
            raise ConfigError("planner", f"unknown value {self.planner!r}; expected one of {', '.join(PLANNERS)}")
        if self.planner != "fixed" and self.mode != "split":
            raise ConfigError("planner", f"{self.planner!r} chooses split points in mode 'split' only")
        if self.planner == "fedadapt" and not Path(self.policy_path).is_file():
            raise ConfigError("policy-path", f"{self.policy_path!r} is not a policy file (see edgeflower train-agent)")
        if self.planner_groups < 1:
            raise ConfigError("planner-groups", f"must be >= 1, got {self.planner_groups}")

    def _check_mobility(self) -> None:
        from edgeflower.device.mobility import MOVE_MODES, parse_mobility

        if self.mobility_mode not in MOVE_MODES:
            raise ConfigError(
                "mobility-mode", f"unknown value {self.mobility_mode!r}; expected {' or '.join(MOVE_MODES)}"
            )
        try:
            moves = parse_mobility(self.mobility)
        except ValueError as exc:
            raise ConfigError("mobility", str(exc)) from None
        if moves and self.mode == "fl":
            raise ConfigError("mobility", "moves devices between edge servers: it needs mode 'split' or 'pipeline'")
        edges = len(self.edge_address_list) or self.edge_servers
        if bad := [m for m in moves if m.edge >= edges or m.server_round > self.num_rounds]:
            move = f"{bad[0].node}@{bad[0].server_round}:{bad[0].fraction:g}->{bad[0].edge}"
            raise ConfigError("mobility", f"{move}: edge servers are 0..{edges - 1} and rounds 1..{self.num_rounds}")

    def _check_link_schedules(self) -> None:
        from edgeflower.planning.scenario import parse_link_schedules

        try:
            parse_link_schedules(self.link_schedules)
        except ValueError as exc:
            raise ConfigError("link-schedules", str(exc)) from None
        if self.link_trace:
            try:
                LinkSchedule.load(self.link_trace)
            except ValueError as exc:
                raise ConfigError("link-trace", str(exc)) from None

    def _check_edge_servers(self) -> None:
        if self.edge_addresses:
            for addr in self.edge_address_list:
                host, _, port = addr.rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigError("edge-addresses", f"{addr!r} is not host:port")
            if not self.edge_secret_file:
                raise ConfigError("edge-secret-file", "is required when edge-addresses is set")
            if not Path(self.edge_secret_file).is_file():
                raise ConfigError("edge-secret-file", f"{self.edge_secret_file!r} does not exist")
        if self.edge_root_cert and not self.edge_addresses:
            raise ConfigError("edge-root-cert", "needs edge-addresses (in-process edge servers use loopback)")

    @property
    def edge_address_list(self) -> list[str]:
        """``edge-addresses`` as a list."""
        return [a.strip() for a in self.edge_addresses.split(",") if a.strip()]

    def effective_split_point(self, num_blocks: int) -> int:
        """Blocks on the device: all in ``fl``; ``split-point`` (or half the blocks) in ``split``; in ``pipeline``
        ``split-point`` as given (``-1`` = selected per node by PiPar)."""
        if self.mode == "fl":
            return num_blocks
        if self.mode == "pipeline":
            return self.split_point
        return num_blocks // 2 if self.split_point < 0 else self.split_point

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """One input sample's shape for the configured dataset."""
        return DATASET_SHAPES[self.dataset]

    def build_model(self) -> SplittableModel:
        """The configured zoo model, freshly initialised from the current torch RNG.

        In a DP run (``dp`` not ``off``) a BatchNorm model is built with GroupNorm instead (``dp-batchnorm =
        convert``; the ServerApp logs it once per run, not every process that builds the model); every party builds
        models here (or from the resulting spec), so they all agree.
        """
        options = {"width": self.model_width} if self.model_width != 1.0 else {}
        if self.model == "resnet18" and options:
            options = {"width": max(1, round(64 * self.model_width))}
        norm = self.norm
        if self.dp != "off" and self.norm == "batch":
            norm = dp_norm(self.norm, self.dp_batchnorm)  # the ServerApp says so, once per run (log_conversion)
        if is_reference(self.model):  # the run's own model: this process may build it for its peers
            try:
                trust_reference(self.model)
            except ValueError as exc:
                raise ConfigError("model", str(exc)) from None
        return build_model(self.model, self.in_shape, 10, norm, **options)

    @property
    def dp_settings(self) -> DPSettings:
        """The DP-SGD settings."""
        keys = ("noise_multiplier", "max_grad_norm", "target_epsilon", "delta", "accountant")  # DPSettings' order
        return DPSettings(self.dp, *(getattr(self, f"dp_{key}") for key in keys))

    def max_message_bytes(self, model: SplittableModel) -> int:
        """The offload channel's message size limit for ``model`` (``max-message-mb``, else sized from it)."""
        return message_limit_bytes(model, self.batch_size, self.max_message_mb)

    def lr_at(self, server_round: int) -> float:
        """Learning rate of ``server_round`` (1-based)."""
        if self.lr_decay_round and server_round >= self.lr_decay_round:
            return self.lr * 0.1
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        """The configuration with run-config keys."""
        return {self.key(k): v for k, v in asdict(self).items()}
