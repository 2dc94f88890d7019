"""Diagnostic: the pump autoencoder under synchronous whole-model federated averaging.

No simulator, no slices, no stragglers, no staleness: each round every one of the 5 pumps
trains the whole model from the global one on its own training windows (the lean runtime,
the job's optimizer made fresh as in an assignment), the deltas are averaged by sample
count (``--int8``: each quantized as the ftte preset sends it) and applied with
``--server-lr``; ``--pooled`` trains one "device" on every pump's windows instead (central
training with the optimizer's state reset every assignment), ``--iid`` five devices on a
random split of the pooled windows. Prints the pooled held-out MSE every ``--every``
rounds and, at the end, each pump's. Used to find why the simulated autoencoder stays
above the central model, and what helps (docs/benchmarks.md, objectives); the candidate
remedies measured:

- ``--steps N``: the ``[train] steps`` cap, N local steps per assignment;
- ``--lr-decay T``: the local lr divided by 1 + round / T (local SGD's bias vanishes as
  the lr does);
- ``--prox MU``: FedProx's proximal term (Li et al., arXiv:1812.06127), MU (w − w_global)
  added to every local gradient;
- ``--server-adam LR``: FedAdam (Reddi et al., arXiv:2003.00295), the averaged delta as
  the pseudo-gradient of a server Adam (betas 0.9/0.99, tau 1e-3) with this lr.

    python examples/pump/drift_check.py --optimizer adam --lr 0.003 --rounds 80
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent.lean import LeanModel

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Run the rounds and print the held-out MSE every 10."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--pooled", action="store_true")
    parser.add_argument("--iid", action="store_true")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--lr-decay", type=float, default=0.0)
    parser.add_argument("--prox", type=float, default=0.0)
    parser.add_argument("--server-adam", type=float, default=0.0)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp()) / "logs"
    sys.path.insert(0, str(HERE))
    sys.argv = ["make_logs.py", "--out", str(logs), "--seed", "0", "--devices", "5"]
    import make_logs

    make_logs.main()
    os.environ["PUMP_LOGS"] = str(logs)
    import pump_task

    from ftte.tasks.base import Dataset, hold_out
    from ftte.training import Optimizer
    from ftte.wire.messages import TrainConfig

    task = pump_task.task(5, 0, 0.5)
    splits = [hold_out(d, 0.2) for d in task.devices]
    held = _pool([s[1] for s in splits])
    parts = [s[0] for s in splits]
    if args.pooled:
        parts = [_pool(parts)]
    if args.iid:
        pooled = _pool(parts)
        split = np.array_split(np.random.default_rng(1).permutation(len(pooled)), len(parts))
        parts = [Dataset(pooled.x[i], pooled.y[i]) for i in split]
    torch.manual_seed(0)
    start = task.model.make_model()
    values = {n: p.detach().numpy().copy() for n, p in start.named_parameters()}
    model = _Proximal(task.model, args.prox)
    first = {n: np.zeros_like(v) for n, v in values.items()}  # the server Adam's moments
    second = {n: np.zeros_like(v) for n, v in values.items()}
    for r in range(args.rounds):
        config = TrainConfig(
            epochs=args.epochs,
            lr=args.lr / (1 + r / args.lr_decay) if args.lr_decay else args.lr,
            optimizer=Optimizer(args.optimizer),
            momentum=args.momentum,
            steps=args.steps,
        )
        deltas = []
        for i, part in enumerate(parts):
            model.load(values)
            delta = model.train(tuple(values), part, config, seed=r * 10 + i).delta
            if args.int8:
                delta = {n: _int8(d) for n, d in delta.items()}
            deltas.append((len(part), delta))
        total = sum(n for n, _ in deltas)
        for name in values:
            step = sum(n * d[name] for n, d in deltas) / total
            if args.server_adam:
                first[name] = 0.9 * first[name] + 0.1 * step
                second[name] = 0.99 * second[name] + 0.01 * step * step
                step = args.server_adam * first[name] / (np.sqrt(second[name]) + 1e-3)
            values[name] = values[name] + np.float32(args.server_lr) * step
        if (r + 1) % args.every == 0:
            model.load(values)
            print(r + 1, model.evaluate(held).metrics["mse"], flush=True)
    model.load(values)
    print("each pump:", [round(model.evaluate(s[1]).metrics["mse"], 5) for s in splits])


class _Proximal(LeanModel):
    """The lean runtime with FedProx's term: ``mu`` (w − w_global) added to each gradient."""

    def __init__(self, spec: Any, mu: float) -> None:
        super().__init__(spec)
        self.mu = np.float32(mu)

    def _step(self, work: Any, grads: Any, optimizer: Any, config: Any) -> None:
        if self.mu:
            for name, g in grads.items():
                g += self.mu * (work[name] - self.params[name])
        LeanModel._step(work, grads, optimizer, config)


def _pool(parts: list[Any]) -> Any:
    from ftte.tasks.base import Dataset

    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _int8(delta: np.ndarray) -> np.ndarray:
    """The delta as the int8 wire encoding carries it (the codec's quantizer)."""
    from ftte.wire.codec import encode_tensor
    from ftte.wire.messages import DeltaEncoding

    wire = encode_tensor(delta, DeltaEncoding.INT8)
    q = np.frombuffer(wire["data"], np.int8).reshape(wire["shape"])
    return (q * np.float32(wire["scale"])).astype(np.float32)


if __name__ == "__main__":
    main()
