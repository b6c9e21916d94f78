"""``edgeflower predict``: a small client of the serving controller (``edgeflower serve``).

Sends a batch (test images of a dataset, or a ``.npy`` array of your own) to the controller's predict service with a
client token (``--token-file``, from ``edgeflower client-token``; or one made from ``--secret-file``), and prints
one line per sample (predicted class, and the true label for
dataset images), the technique of the route that answered and the round trip; ``--status`` prints the controller's
status (route, live nodes, pending requests, failover events) instead.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

__all__ = ["register"]


def _batch(args: argparse.Namespace):  # -> (tensor, labels or None); torch imported lazily
    import numpy as np
    import torch

    if args.input is not None:
        array = np.load(args.input, allow_pickle=False)
        if array.ndim != 4:
            raise ValueError(f"--input {args.input}: expected an array [batch, C, H, W], got shape {array.shape}")
        return torch.from_numpy(array.astype(np.float32)), None
    from edgeflower.data import load_dataset

    test = load_dataset(args.dataset, train=False, root=args.data_root or None)
    start = args.offset
    if not 0 <= start < len(test.y):
        raise ValueError(f"--offset {start} is outside the test set (0..{len(test.y) - 1})")
    return test.x[start : start + args.samples], test.y[start : start + args.samples]


def _run(args: argparse.Namespace) -> int:
    from edgeflower.serving import ServingClient
    from edgeflower.transport.auth import ROLE_CLIENT, TokenIssuer, load_secret

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if bool(args.secret_file) == bool(args.token_file):
        raise ValueError("give exactly one of --token-file (a client token) and --secret-file (the shared secret)")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    else:
        token = TokenIssuer(load_secret(args.secret_file)).issue(0, args.client_id, 0, ttl_s=600, role=ROLE_CLIENT)
    root_cert = Path(args.root_cert).read_bytes() if args.root_cert else None
    with ServingClient(args.controller.split(","), token, deadline_s=args.deadline, root_cert=root_cert) as client:
        if args.status:
            print(json.dumps(client.status(), indent=2, default=str))
            return 0
        x, labels = _batch(args)
        request_id = args.request_id or f"cli-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        answer = client.predict(x, request_id=request_id)
        ms = (time.perf_counter() - t0) * 1000
    predicted = answer.logits.argmax(1).tolist()
    for i, cls in enumerate(predicted):
        truth = f"  label {int(labels[i])}" if labels is not None else ""
        print(f"sample {args.offset + i if labels is not None else i}: class {cls}{truth}")
    correct = ""
    if labels is not None:
        right = sum(int(p == int(t)) for p, t in zip(predicted, labels, strict=True))
        correct = f", {right}/{len(predicted)} correct"
    print(
        f"request {answer.request_id}: {len(predicted)} sample(s) in {ms:.1f} ms, route technique {answer.technique}"
        + correct
        + (" (answered from the journal)" if answer.replayed else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``predict`` subcommand."""
    p = sub.add_parser(
        "predict",
        help="send test images (or your own batch) to a serving controller and print the answers",
        description=(
            "Classify a batch through a running `edgeflower serve` controller: test images of --dataset (default) or "
            "an array from --input; or print the controller's status with --status."
        ),
    )
    p.add_argument("--controller", required=True, help="controller address HOST:PORT (comma-separated: fallbacks)")
    p.add_argument("--token-file", default="", help="a client token (`edgeflower client-token`): clients use this")
    p.add_argument("--secret-file", default="", help="the shared secret (its holder may act in any role)")
    p.add_argument("--samples", type=int, default=4, help="test images to send")
    p.add_argument("--offset", type=int, default=0, help="index of the first test image")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset of the test images")
    p.add_argument("--data-root", default="", help="dataset directory (empty: the default location)")
    p.add_argument("--input", type=Path, default=None, help="a .npy float array [batch, C, H, W] to send instead")
    p.add_argument("--request-id", default="", help="request id (a retry with the same id is answered once)")
    p.add_argument("--client-id", type=int, default=0, help="integer naming this client in the controller's log")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds to keep retrying before giving up")
    p.add_argument("--root-cert", default="", help="PEM root certificate when the controller serves TLS")
    p.add_argument("--status", action="store_true", help="print the controller's status instead of predicting")
    p.set_defaults(func=_run)
