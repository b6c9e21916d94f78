"""Security benchmark (issue 15): every attack of the security model against real services, and what a
legitimate device and a legitimate serving client get meanwhile.

Services: an ``edgeflower edge-server`` process and an ``edgeflower infer-node`` process (their memory is measured),
a second inference node and the serving controller in this process; loopback only. The run:

1. a legitimate device trains one split session (VGG5 width 0.25, k = 2) through the edge server in a thread while
   every attack runs; it must end equal to local training of the whole model (``legit_session_max_abs_diff``);
2. token, role, quota, size, non-finite and malformed-frame attacks on the edge server, the node and the controller
   (``attacks_tried`` / ``attacks_rejected``: refused with the status the security model demands);
3. 200 half-open calls (unary methods called as streams that never send) held against each service by separate
   attacker processes (``python -m benchmarks._flood``), re-opened as the servers end them, while legitimate
   ``open_session`` calls and predictions run: ``legit_availability`` is the share of those served within 2 s;
4. memory growth of the edge server and the node after the flooding attacks (``memory_growth_mb``);
5. the node process is frozen (SIGSTOP) until the controller declares it dead, then thawed: ``node_readmitted``;
6. ``model_replaced``: whether the served answers changed after the attacks.

``--quick`` runs the same with fewer and shorter floods.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import grpc
import torch
from torch.nn import functional as F  # noqa: N812

from benchmarks import _attacks as atk
from benchmarks._flood import flood_outcome
from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.edge import EdgeServer
from edgeflower.models.zoo import build_model
from edgeflower.process import ListeningProcess
from edgeflower.serving import Controller, InferenceNode, NodeClient, ServingClient, build_bundle
from edgeflower.serving.controller import ControllerConfig
from edgeflower.training import make_optimizer
from edgeflower.transport import EdgeClient, OptimizerSettings
from edgeflower.transport.auth import TokenIssuer
from edgeflower.transport.codec import encode_frame
from edgeflower.transport.errors import EdgeError
from edgeflower.transport.service import METHOD_OPEN

NAME = "security"
SECRET = os.urandom(32)
OTHER = b"an-attacker-guessed-this-secret-000000"
ISSUER = TokenIssuer(SECRET)
OPTIM = OptimizerSettings(lr=0.05, momentum=0.9, weight_decay=1e-4)
ROOT = Path(__file__).resolve().parents[1]
PD, INV, RE = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
FP = grpc.StatusCode.FAILED_PRECONDITION
EDGE_ID = "edge-0"


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg5", width=0.25)


def state_size(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


# -- the legitimate device ----------------------------------------------------------------------------------------
def legit_session(address: str, model, batches, pause_s: float, out: dict) -> None:
    """Split training at k = 2 through the edge server (one step per batch), pausing between batches."""
    k = 2
    head, tail = model.split(k)
    head.train()
    head_opt = make_optimizer(head.parameters(), OPTIM.lr, OPTIM.momentum, OPTIM.weight_decay)
    try:
        with EdgeClient(address) as client:
            session = client.open_session(ISSUER.issue(1, 1, 1, EDGE_ID), model.spec, k, tail.state_dict(), OPTIM)
            for b, (x, y) in enumerate(batches):
                head_opt.zero_grad(set_to_none=True)
                act = head(x)
                act.backward(session.step(act.detach(), y, batch=b).grad)
                head_opt.step()
                time.sleep(pause_s)
            tail_state, _ = session.close()
        out["state"] = {**head.state_dict(), **tail_state}
    except Exception as exc:  # reported as a figure, not swallowed
        out["error"] = repr(exc)


def local_reference(model, batches) -> dict:
    opt = make_optimizer(model.parameters(), OPTIM.lr, OPTIM.momentum, OPTIM.weight_decay)
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict()


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


# -- attacks ------------------------------------------------------------------------------------------------------
def edge_attacks(address: str, floods: int) -> list[atk.Outcome]:
    out = atk.edge_token_attacks(address, SECRET, EDGE_ID, OTHER)
    # an Open token is single-use: a second, different Open with it is refused
    token = ISSUER.issue(2, 7, 3, EDGE_ID)
    atk.raw_call(address, METHOD_OPEN, atk.open_frame(token, width=0.25))
    out.append(atk.attempt("edge-open-token-reuse", PD, address, METHOD_OPEN, atk.open_frame(token, width=0.25, k=3)))
    # one node holds at most 2 sessions: more fresh tokens of the same node are refused
    for _ in range(2):
        atk.raw_call(address, METHOD_OPEN, atk.open_frame(ISSUER.issue(2, 8, 3, EDGE_ID), width=0.25))
    out.append(
        atk.attempt(
            "edge-per-node-quota", RE, address, METHOD_OPEN, atk.open_frame(ISSUER.issue(2, 8, 3, EDGE_ID), width=0.25)
        )
    )
    # a token of a past round (node 7 trains in round 3)
    out.append(
        atk.attempt(
            "edge-stale-round", FP, address, METHOD_OPEN, atk.open_frame(ISSUER.issue(2, 7, 2, EDGE_ID), width=0.25)
        )
    )
    huge = atk.open_frame(ISSUER.issue(2, 9, 3, EDGE_ID), with_state=False, width=16)
    for i in range(floods):  # each a ~500-byte Open of a 117 M-parameter model
        out.append(atk.attempt(f"edge-huge-spec-{i}", INV, address, METHOD_OPEN, huge))
    padded = encode_frame("open", {"pad": "x" * (4 << 20)})
    for i in range(max(floods // 4, 1)):
        out.append(atk.attempt(f"edge-huge-open-message-{i}", RE, address, METHOD_OPEN, padded))
    with EdgeClient(address) as client:
        model = small_model()
        attacker = ISSUER.issue(2, 10, 3, EDGE_ID)
        session = client.open_session(attacker, model.spec, 2, model.split(2)[1].state_dict(), OPTIM)
        victim_token = ISSUER.issue(2, 11, 3, EDGE_ID)
        victim = client.open_session(victim_token, model.spec, 2, model.split(2)[1].state_dict(), OPTIM)
        out.append(atk.foreign_stream(address, victim.session_id, attacker))
        out.append(atk.nan_step(session.session_id, attacker, address, session.input_shape))
        victim.abort()
    return out


def node_attacks(address: str, ctl: Controller, x: torch.Tensor, floods: int) -> list[atk.Outcome]:
    out: list[atk.Outcome] = []
    zeros = {k: torch.zeros_like(v) for k, v in ctl.bundle.model.segment(0, 3).state_dict().items()}
    version = ctl.route.version

    def node_call(name: str, expected: grpc.StatusCode, token: str, fn) -> None:
        client = NodeClient(address, token)
        try:
            fn(client)
            out.append(atk.Outcome(name, expected, grpc.StatusCode.OK))
        except EdgeError as exc:
            out.append(atk.Outcome(name, expected, exc.code, exc.detail[:160]))
        finally:
            client.close()

    for role in ("client", "device", "migration"):
        token = ISSUER.issue(0, 0, 0, role=role)
        node_call(f"node-deploy-with-{role}-token", PD, token, lambda c: c.deploy("evil", ctl.bundle.spec, 0, 3, zeros))
        node_call(f"node-forward-with-{role}-token", PD, token, lambda c: c.forward(version, "bypass", x))
    node_call("node-ping-with-client-token", PD, ISSUER.issue(0, 0, 0, role="client"), lambda c: c.ping())
    forged = TokenIssuer(OTHER).issue(0, 0, 0, role="controller")
    node_call("node-forged-controller-token", PD, forged, lambda c: c.forward(version, "f", x))
    decade = ISSUER.issue(0, 0, 0, ttl_s=10 * 365 * 86400, role="controller")
    node_call("node-10-year-controller-token", PD, decade, lambda c: c.forward(version, "d", x))
    stolen = ISSUER.issue(0, 0, 0, role="controller")  # even the controller's own token cannot deploy a huge model
    with torch.device("meta"):
        huge_spec = build_model("vgg5", width=16).spec
    for i in range(floods):
        node_call(f"node-huge-spec-{i}", INV, stolen, lambda c: c.deploy("huge", huge_spec, 0, 3, {}))
    padded = encode_frame("deploy", {"pad": "x" * (4 << 20)})
    for i in range(max(floods // 4, 1)):
        out.append(atk.attempt(f"node-huge-deploy-message-{i}", RE, address, atk.DEPLOY, padded))
    node_call("node-nan-input", INV, stolen, lambda c: c.forward(version, "nan", torch.full_like(x, float("nan"))))
    for method in (atk.DEPLOY, atk.FORWARD, atk.PING):
        out.append(atk.attempt(f"node-stride-overflow-{method}", INV, address, method, atk.stride_overflow_frame()))
        out.append(atk.attempt(f"node-deep-json-{method}", INV, address, method, atk.deep_json_frame()))
        out.append(atk.attempt(f"node-pickle-{method}", INV, address, method, atk.pickle_frame()))
    return out


def controller_attacks(address: str, x: torch.Tensor) -> list[atk.Outcome]:
    out: list[atk.Outcome] = []
    for role in ("device", "controller", "migration"):
        with ServingClient(address, ISSUER.issue(0, 1, 0, role=role), deadline_s=2) as c:
            try:
                c.predict(x)
                out.append(atk.Outcome(f"predict-with-{role}-token", PD, grpc.StatusCode.OK))
            except EdgeError as exc:
                out.append(atk.Outcome(f"predict-with-{role}-token", PD, exc.code, exc.detail[:160]))
    with ServingClient(address, ISSUER.issue(0, 1, 0, role="client")) as c:
        for name, bad in (("nan", float("nan")), ("inf", float("inf"))):
            try:
                c.predict(torch.full_like(x, bad))
                out.append(atk.Outcome(f"predict-{name}-input", INV, grpc.StatusCode.OK))
            except EdgeError as exc:
                out.append(atk.Outcome(f"predict-{name}-input", INV, exc.code, exc.detail[:160]))
    out.append(atk.attempt("predict-stride-overflow", INV, address, atk.PREDICT, atk.stride_overflow_frame("predict")))
    out.append(atk.attempt("predict-deep-json", INV, address, atk.PREDICT, atk.deep_json_frame("predict")))
    out.append(atk.attempt("predict-pickle", INV, address, atk.PREDICT, atk.pickle_frame()))
    return out


def plaintext_attack() -> atk.Outcome:
    """An edge server asked to serve plaintext on a non-loopback address without ``insecure`` refuses to start."""
    try:
        EdgeServer("0.0.0.0", 0, secret=SECRET).start().__class__  # noqa: B018
    except ValueError as exc:
        return atk.Outcome("plaintext-non-loopback-edge", PD, PD, str(exc)[:160])
    return atk.Outcome("plaintext-non-loopback-edge", PD, grpc.StatusCode.OK)


# -- half-open floods with legitimate traffic ---------------------------------------------------------------------
class FloodProcess:
    """``python -m benchmarks._flood``: an attacker process holding ``n`` half-open calls against one service."""

    def __init__(self, address: str, method: str, n: int) -> None:
        self.name = method.rsplit("/", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._flood", address, method, str(n)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "holding":
            raise RuntimeError(f"the half-open flood against {address} did not start")

    def stop(self) -> dict[str, int]:
        """Release the calls; how the server ended them, by status."""
        out, _ = self.proc.communicate("", timeout=120)
        return json.loads(out.strip().splitlines()[-1])


def flood_phase(edge_addr: str, node_addr: str, ctl: Controller, x, n: int, hold_s: float) -> tuple[list, dict]:
    """Hold ``n`` half-open calls against each service from separate attacker processes while legitimate
    ``open_session`` calls and predictions run; then how the services ended the half-open calls."""
    targets = {
        "edge": (edge_addr, METHOD_OPEN),
        "node": (node_addr, atk.PING),
        "controller": (ctl.address, atk.PREDICT),
    }
    with ThreadPoolExecutor(len(targets)) as pool:  # the attackers start side by side (each imports gRPC)
        started = {svc: pool.submit(FloodProcess, address, method, n) for svc, (address, method) in targets.items()}
        floods = {svc: future.result() for svc, future in started.items()}
    model = small_model()
    tail = model.split(2)[1].state_dict()
    served = {"edge_open": [0, 0], "predict": [0, 0]}
    latencies: dict[str, list[float]] = {"edge_open": [], "predict": []}
    deadline = time.monotonic() + hold_s
    i = 0

    def open_close(i: int) -> None:
        with EdgeClient(edge_addr) as client:
            client.open_session(ISSUER.issue(3, 100 + i, 1, EDGE_ID), model.spec, 2, tail, OPTIM).close()

    with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client"), deadline_s=10) as sc:
        while time.monotonic() < deadline or i < 5:
            calls = (("edge_open", partial(open_close, i)), ("predict", partial(sc.predict, x, f"legit-{i}")))
            for key, fn in calls:
                t0 = time.monotonic()
                ok = atk.served_within(fn, 2.0)
                latencies[key].append(time.monotonic() - t0)
                served[key][0] += int(ok)
                served[key][1] += 1
            i += 1
    outcomes = [flood_outcome(f"{svc}-half-open-x{n}", flood.stop()) for svc, flood in floods.items()]
    stats = {
        "served": served,
        "median_latency_s": {k: statistics.median(v) for k, v in latencies.items() if v},
        "max_latency_s": {k: max(v) for k, v in latencies.items() if v},
        "ended": {o.name: o.detail for o in outcomes},
    }
    return outcomes, stats


# -- readmission --------------------------------------------------------------------------------------------------
def readmission(node_proc: ListeningProcess, ctl: Controller, x) -> dict:
    t0 = time.monotonic()
    os.kill(node_proc.proc.pid, signal.SIGSTOP)
    try:
        while 0 not in ctl.dead and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        declared_dead = 0 in ctl.dead
    finally:
        os.kill(node_proc.proc.pid, signal.SIGCONT)
    t1 = time.monotonic()
    while 0 in ctl.dead and time.monotonic() - t1 < 90:
        time.sleep(0.1)
    readmitted = declared_dead and 0 not in ctl.dead
    with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as sc:
        answer = sc.predict(x, "after-readmission")
    return {
        "declared_dead": declared_dead,
        "readmitted": readmitted,
        "readmit_s": time.monotonic() - t1,
        "technique_after": answer.technique,
        "route_after": ctl.route.describe(),
    }


def plot(path: Path, figures: dict, stats: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    served = stats["served"]
    names = list(served)
    a.bar(names, [s[0] / max(s[1], 1) for s in served.values()], color=["tab:blue", "tab:green"])
    a.axhline(0.99, color="red", linestyle="--", label="required 0.99")
    a.set_ylim(0, 1.05)
    a.set_title(f"legitimate requests served within 2 s\nunder {figures['half_open_calls']} half-open calls/service")
    a.legend(loc="lower right")
    b.bar(["edge server", "inference node"], [figures["memory_growth_mb_edge"], figures["memory_growth_mb_node"]])
    b.axhline(50, color="red", linestyle="--", label="bound 50 MB")
    b.set_title("memory growth after the flooding attacks (MB)")
    b.legend()
    fig.suptitle(f"{figures['attacks_rejected']} of {figures['attacks_tried']} attacks rejected")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stop_process(proc: ListeningProcess) -> None:
    try:
        proc.terminate(120)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(NAME, argv)
    quick = args.quick
    floods, half_open, hold_s = (2, 20, 6.5) if quick else (20, 200, 15.0)  # holds outlast the 5 s deadline
    tmp = Path(tempfile.mkdtemp(prefix="edgeflower-security-"))
    secret_file = tmp / "secret"
    secret_file.write_bytes(SECRET)
    model = small_model()
    need = state_size(model)
    procs: dict[str, ListeningProcess] = {}

    def spawn(key: str, args_: list[str], ready: str) -> None:
        procs[key] = ListeningProcess(args_, ready, cwd=ROOT, startup_timeout_s=300)

    common = ["--port", "0", "--secret-file", str(secret_file), "--max-model-params", str(need)]
    starters = [
        threading.Thread(
            target=spawn,
            args=("edge", ["edge-server", *common, "--edge-id", EDGE_ID], "edge server listening on "),
        ),
        threading.Thread(target=spawn, args=("node", ["infer-node", *common], "inference node listening on ")),
    ]
    for t in starters:
        t.start()
    test = load_dataset("fashion-mnist", train=False)
    data = test.subset(torch.arange(200))
    bundle = build_bundle(copy.deepcopy(model).eval(), (0, 3, 7), data, data, exit_epochs=1)
    x = test.x[:8].clone()
    batches = [(xb.clone(), yb.clone()) for xb, yb in BatchLoader(test, 32, seed=3, max_batches=4 if quick else 8)]
    for t in starters:
        t.join()
    local_node = InferenceNode(secret=SECRET, max_model_params=need)
    ctl: Controller | None = None
    try:  # from here on, whatever fails, the processes started above are stopped (finally)
        edge_proc, node_proc = procs["edge"], procs["node"]
        local_node.start()
        config = ControllerConfig(heartbeat_s=0.2, heartbeat_timeout_s=1.0, misses=3, readmit_every=2)
        ctl = Controller(bundle, [node_proc.address, local_node.address], SECRET, config=config).start()
        with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as sc:
            before = sc.predict(x, "reference-before").logits
        with EdgeClient(edge_proc.address) as client:  # warm the edge server up (lazy imports, allocator)
            m = small_model()
            client.open_session(ISSUER.issue(9, 999, 1, EDGE_ID), m.spec, 2, m.split(2)[1].state_dict(), OPTIM).close()
        time.sleep(1.0)
        base = {"edge": rss_mb(edge_proc.proc.pid), "node": rss_mb(node_proc.proc.pid)}

        legit: dict = {}
        device = threading.Thread(
            target=legit_session,
            args=(edge_proc.address, copy.deepcopy(model), batches, 0.3 if quick else 1.0, legit),
        )
        device.start()
        outcomes = edge_attacks(edge_proc.address, floods)
        outcomes += node_attacks(node_proc.address, ctl, x, floods)
        outcomes += controller_attacks(ctl.address, x)
        outcomes.append(plaintext_attack())
        flood_outcomes, stats = flood_phase(edge_proc.address, node_proc.address, ctl, x, half_open, hold_s)
        outcomes += flood_outcomes
        device.join(300)
        time.sleep(1.0)
        after = {"edge": rss_mb(edge_proc.proc.pid), "node": rss_mb(node_proc.proc.pid)}
        with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as sc:
            replay = sc.predict(x, "reference-after").logits
        readmit = readmission(node_proc, ctl, x)
    finally:
        if ctl is not None:
            ctl.stop()
        local_node.stop()
        # side by side: each takes seconds to stop gracefully (on a loaded machine a torch process is slow to exit)
        stoppers = [threading.Thread(target=_stop_process, args=(p,)) for p in procs.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    reference = local_reference(copy.deepcopy(model), batches)
    diff = max_abs_diff(legit["state"], reference) if "state" in legit else float("nan")
    served = stats["served"]
    availability = sum(s[0] for s in served.values()) / max(sum(s[1] for s in served.values()), 1)
    growth = {k: after[k] - base[k] for k in base}
    rejected = [o for o in outcomes if o.rejected]
    figures = {
        "attacks_tried": len(outcomes),
        "attacks_rejected": len(rejected),
        "model_replaced": int(not torch.equal(before, replay)),
        "legit_session_max_abs_diff": diff,
        "legit_availability": availability,
        "memory_growth_mb": max(growth.values()),
        "memory_growth_mb_edge": growth["edge"],
        "memory_growth_mb_node": growth["node"],
        "node_readmitted": int(readmit["readmitted"]),
        "half_open_calls": half_open,
    }
    print_table(
        [{"attack": o.name, "expected": o.expected.name, "got": o.got.name, "ok": o.rejected} for o in outcomes],
        "attacks",
    )
    details = {
        "outcomes": [
            {"attack": o.name, "expected": o.expected.name, "got": o.got.name, "detail": o.detail} for o in outcomes
        ],
        "flood": stats,
        "rss_mb_before": base,
        "rss_mb_after": after,
        "readmission": readmit,
        "legit_session_error": legit.get("error"),
        "hold_s": hold_s,
        "note": "loopback; the machine was shared with other agents",
    }
    write_result(NAME, args, figures, details)
    plot(png_path(NAME, args), figures, stats)


if __name__ == "__main__":
    main()
