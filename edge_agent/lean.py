"""The lean runtime: slice training in numpy (im2col + BLAS matmul), without torch.

It trains the layers of ``ftte.tasks.layers`` (Conv1d, Conv2d, ReLU, MaxPool1d/2d, Flatten,
Linear, BatchNorm1d/2d) with the semantics of the torch reference
(``edge_agent.trainer.train_slice``): the loss is the model spec's objective
(``ftte.tasks.objectives``); only the assigned tensors train; the frozen prefix (every layer
before the first trainable one) runs forward a sample at a time and keeps nothing; the rest
keeps what its backward needs; backward stops at the first trainable layer; each batch's
gradient is the mean over the batch, accumulated over ``micro_batch`` chunks; the gradient
norm over the slice is clipped to ``clip_norm``; SGD with momentum as ``torch.optim.SGD``, or
Adam as ``torch.optim.Adam`` (its single-tensor rule, the one torch runs on CPU);
epochs, batch order and the ``steps`` cap as ``edge_agent.runtime.epoch_batches``. Training
works on copies of the slice's tensors, so the model keeps the global values it was
assigned. Batch norms from the first trainable layer on normalise with each chunk's
statistics and move copies of their running statistics as torch does (momentum, unbiased
variance), returned with the delta; those of the frozen prefix, and every one at
prediction, use the running statistics.

What a layer keeps for backward is chosen for memory: a convolution keeps its padded input
and rebuilds its im2col matrix in backward (the matrix is kernel-size times larger), a ReLU
keeps its output where the next layer keeps that as its input anyway and a boolean mask
elsewhere, a max-pool the index of each window's maximum.

The reported peak is accounted from the arrays themselves, as the torch runtime accounts
its tensors: weights, the slice's working copy, gradients and optimizer state, then at every layer
the chunk's input, what is kept for backward so far and the layer's transient (its input,
output and scratch such as the im2col matrix). ``tracemalloc`` would measure it, but
starting and stopping it for every training grew the agent's resident set by about 7 KiB
per assignment (7.8 MiB over 1,000 in ``ftte bench device --flat 1000``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_agent.lean_optim import LeanAdam, LeanSGD, make_optimizer
from edge_agent.runtime import TrainResult, epoch_batches
from ftte.memory import FLOAT_BYTES
from ftte.tasks.base import Dataset, ModelSpec
from ftte.tasks.layers import (
    LEAN_LAYERS,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool1d,
    MaxPool2d,
    ReLU,
    layer_name,
)
from ftte.wire.messages import Evaluation, TrainConfig

Array = np.ndarray[Any, Any]


class UnsupportedModel(ValueError):
    """The model has a layer the lean runtime cannot train."""


class _Meter:
    """The peak bytes of the arrays training holds: static state + held + a transient.

    Arrays are counted by the buffer they view, once however many views of it are held or
    seen (a flattened input, the ReLU output the next layer keeps as its input): memory is
    the buffers, as torch's allocator counts storages, which the memory model is profiled on.
    """

    def __init__(self, static: int) -> None:
        self.static = static
        self.held = 0  # bytes of the chunk's input and what is kept for backward so far
        self._held: dict[int, tuple[Array, int]] = {}  # buffer id -> (buffer, holders)
        self.peak = static

    def hold(self, array: Array | None) -> None:
        """``array`` is kept until ``release`` (or ``drop_all``)."""
        if array is None:
            return
        root = _buffer(array)
        _, holders = self._held.get(id(root), (root, 0))
        if not holders:
            self.held += root.nbytes
        self._held[id(root)] = (root, holders + 1)

    def release(self, array: Array | None) -> None:
        """One holder of ``array`` lets it go; its buffer is freed with the last."""
        if array is None:
            return
        root = _buffer(array)
        _, holders = self._held[id(root)]
        if holders == 1:
            del self._held[id(root)]
            self.held -= root.nbytes
        else:
            self._held[id(root)] = (root, holders - 1)

    def drop_all(self) -> None:
        """Nothing is held any more (a new chunk)."""
        self._held.clear()
        self.held = 0

    def see(self, *transient: Array | None) -> None:
        """Arrays live beside the held ones right now (a layer's input, output, scratch)."""
        live = {
            id(root): root.nbytes
            for root in (_buffer(a) for a in transient if a is not None)
            if id(root) not in self._held
        }
        self.peak = max(self.peak, self.static + self.held + sum(live.values()))


def _buffer(array: Array) -> Array:
    """The array that owns the memory ``array`` views (``array`` itself if it owns it)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _kept(cache: Any) -> Array | None:
    """The array a layer keeps for backward, if any (a shape costs nothing)."""
    if isinstance(cache, np.ndarray):
        return cache
    if isinstance(cache, tuple) and cache and isinstance(cache[0], np.ndarray):
        return cache[0]
    return None


@dataclass
class _Grads:
    """What a layer's backward must produce: which parameter gradients and the input's."""

    weight: bool
    bias: bool
    input: bool


# Samples per im2col matrix, and per pass of the frozen prefix. The matrix is kernel-size
# times the input, so with whole batches the lean runtime's accounted peak was up to 1.75x
# the memory model's (which is profiled on torch's direct convolutions; digits, a head
# slice at micro-batch 8); with 4 samples, 1.75x still on digits' frozen prefix; with one,
# at most 1.0x on the shipped models (docs/architecture.md), for twice the CPU of
# whole-batch matrices (digits, whole model: 0.21 s against 0.11 s per assignment).
IM2COL_SAMPLES = 1
LEAN_FROZEN_CHUNK = 1


def _keeps_its_input(layers: tuple[Layer, ...], i: int) -> bool:
    """Whether layer ``i`` (past any flatten, a view) keeps its input as is for backward."""
    while i < len(layers) and isinstance(layers[i], Flatten):
        i += 1
    layer = layers[i] if i < len(layers) else None
    return isinstance(layer, Linear) or (isinstance(layer, Conv1d | Conv2d) and not layer.padding)


def _add_weight_grad(
    grad: Array, dout: Array, x: Array, first: bool, dx: Array | None, meter: _Meter
) -> None:
    """Add a linear layer's weight gradient ``dout.T @ x`` to ``grad`` with no transient of
    the weight's size (the memory model, profiled on torch, has none): the batch's first
    chunk writes it in place, a later chunk adds it in blocks of output rows no larger
    than ``dout``."""
    if first:
        np.matmul(dout.T, x, out=grad)
        return
    rows = max(1, dout.nbytes // (x.shape[1] * x.itemsize))
    for start in range(0, grad.shape[0], rows):
        block = dout[:, start : start + rows].T @ x
        meter.see(dout, block, dx)
        grad[start : start + rows] += block


class _Conv:
    """Convolution over 1 or 2 spatial dimensions as matmuls on im2col matrices."""

    def __init__(self, layer: Conv1d | Conv2d) -> None:
        self.dims = 1 if isinstance(layer, Conv1d) else 2
        self.kernel = (layer.kernel_size,) * self.dims
        self.padding = layer.padding

    def _cols(self, xp: Array) -> tuple[Array, tuple[int, ...]]:
        """The im2col matrix (one row per output position) and the output's spatial shape."""
        spatial = tuple(range(2, 2 + self.dims))
        windows = sliding_window_view(xp, self.kernel, axis=spatial)  # (N, C, *out, *kernel)
        out_shape = windows.shape[2 : 2 + self.dims]
        rows = np.moveaxis(windows, 1, 1 + self.dims)  # (N, *out, C, *kernel)
        return rows.reshape(xp.shape[0] * math.prod(out_shape), -1), out_shape

    def _pad(self, x: Array) -> Array:
        if not self.padding:
            return x
        return np.pad(x, [(0, 0), (0, 0)] + [(self.padding, self.padding)] * self.dims)

    def forward(self, x: Array, w: Array, b: Array, meter: _Meter) -> tuple[Array, Array]:
        """Output and the padded input (what backward needs)."""
        xp = self._pad(x)
        weights = w.reshape(w.shape[0], -1).T
        out: Array | None = None
        for start in range(0, len(x), IM2COL_SAMPLES):
            cols, out_shape = self._cols(xp[start : start + IM2COL_SAMPLES])
            rows = cols @ weights
            rows += b
            if out is None:
                out = np.empty((len(x), w.shape[0], *out_shape), dtype=rows.dtype)
            n = min(IM2COL_SAMPLES, len(x) - start)
            out[start : start + n] = np.moveaxis(rows.reshape(n, *out_shape, w.shape[0]), -1, 1)
            meter.see(x, xp if xp is not x else None, cols, rows, out)
        assert out is not None  # a chunk holds at least one sample
        return out, xp

    def backward(
        self, dout: Array, xp: Array, w: Array, need: _Grads, meter: _Meter
    ) -> tuple[Array | None, Array | None, Array | None]:
        """Gradients of the weight, the bias and the (unpadded) input, as ``need`` asks."""
        channels_out = w.shape[0]
        weights = w.reshape(channels_out, -1)
        d = self.dims
        out_shape = dout.shape[2:]
        dw = np.zeros_like(w) if need.weight else None
        db = dout.sum(axis=(0, *range(2, 2 + d))) if need.bias else None
        dxp = np.zeros_like(xp) if need.input else None
        for start in range(0, len(dout), IM2COL_SAMPLES):
            part = dout[start : start + IM2COL_SAMPLES]
            dmat = np.moveaxis(part, 1, -1).reshape(-1, channels_out)
            if dw is not None:
                cols, _ = self._cols(xp[start : start + IM2COL_SAMPLES])
                dw += (dmat.T @ cols).reshape(w.shape)
                meter.see(dout, dmat, cols, dw, dxp)
                del cols
            if dxp is not None:
                dcols = (dmat @ weights).reshape(len(part), *out_shape, xp.shape[1], *self.kernel)
                # Kernel axes first, then (N, C, *out): one transpose, not one per offset.
                by_offset = dcols.transpose(*range(d + 2, 2 * d + 2), 0, d + 1, *range(1, d + 1))
                target = dxp[start : start + len(part)]
                # col2im: each kernel offset adds its share to a shifted window of the input.
                for offset in np.ndindex(*self.kernel):
                    window = tuple(slice(o, o + n) for o, n in zip(offset, out_shape, strict=True))
                    target[(slice(None), slice(None), *window)] += by_offset[offset]
                meter.see(dout, dmat, dcols, dxp)
        dx = None
        if dxp is not None:
            p = self.padding
            dx = dxp[(slice(None), slice(None), *[slice(p, -p)] * d)] if p else dxp
        return dw, db, dx


class _MaxPool:
    """Max pooling over non-overlapping windows; a trailing remainder is dropped (floor)."""

    def __init__(self, layer: MaxPool1d | MaxPool2d) -> None:
        self.dims = 1 if isinstance(layer, MaxPool1d) else 2
        self.k = layer.kernel_size

    def _windows(self, x: Array) -> Array:
        """(N, C, *out, k**dims): each window's values in row-major order (torch's tie order)."""
        k = self.k
        n, c = x.shape[:2]
        out = [s // k for s in x.shape[2:]]
        x = x[(slice(None), slice(None), *[slice(0, o * k) for o in out])]
        if self.dims == 1:
            return x.reshape(n, c, out[0], k)
        return (
            x.reshape(n, c, out[0], k, out[1], k)
            .transpose(0, 1, 2, 4, 3, 5)
            .reshape(n, c, out[0], out[1], k * k)
        )

    def forward(self, x: Array) -> tuple[Array, tuple[Array, tuple[int, ...]]]:
        """Output and (index of each window's maximum, input shape)."""
        windows = self._windows(x)
        index = windows.argmax(axis=-1)[..., None]
        out = np.take_along_axis(windows, index, axis=-1)[..., 0]
        return out, (index.astype(np.uint8 if self.k**self.dims < 256 else np.int64), x.shape)

    def backward(self, dout: Array, cache: tuple[Array, tuple[int, ...]]) -> Array:
        """The gradient goes to each window's maximum."""
        index, shape = cache
        k = self.k
        dwin = np.zeros((*dout.shape, k**self.dims), dtype=dout.dtype)
        np.put_along_axis(dwin, index.astype(np.intp), dout[..., None], axis=-1)
        n, c = shape[:2]
        out = dout.shape[2:]
        dx_used: Array
        if self.dims == 1:
            dx_used = dwin.reshape(n, c, out[0] * k)
        else:
            dx_used = (
                dwin.reshape(n, c, out[0], out[1], k, k)
                .transpose(0, 1, 2, 4, 3, 5)
                .reshape(n, c, out[0] * k, out[1] * k)
            )
        if dx_used.shape == shape:
            return dx_used
        dx = np.zeros(shape, dtype=dout.dtype)
        dx[tuple(slice(0, s) for s in dx_used.shape)] = dx_used
        return dx


class _BatchNorm:
    """Batch normalisation over every axis but the channels' (axis 1), as torch's."""

    def __init__(self, layer: BatchNorm1d | BatchNorm2d) -> None:
        self.eps = layer.eps
        self.momentum = layer.momentum

    @staticmethod
    def _per_channel(v: Array, x: Array) -> Array:
        return v.reshape(1, -1, *([1] * (x.ndim - 2)))

    def forward_eval(self, x: Array, w: Array, b: Array, mean: Array, var: Array) -> Array:
        """Normalised with the running statistics (inference, and the frozen prefix)."""
        scale = w / np.sqrt(var + np.float32(self.eps))
        out = x * self._per_channel(scale, x)
        out += self._per_channel(b - mean * scale, x)
        return out

    def forward_train(
        self, x: Array, w: Array, b: Array, mean: Array, var: Array
    ) -> tuple[Array, tuple[Array, Array, Array]]:
        """Normalised with the batch's statistics; moves ``mean`` and ``var`` in place.

        Returns the output and (input, batch mean, 1/std): backward rebuilds the normalised
        input from them, as torch keeps them.
        """
        count = x.size // x.shape[1]
        if count < 2:
            raise ValueError(
                f"batch norm needs more than one value per channel to train, got input {x.shape}"
            )
        batch_mean = x.mean(axis=(0, *range(2, x.ndim)))
        out = x - self._per_channel(batch_mean, x)
        flat = out.reshape(x.shape[0], x.shape[1], -1)
        batch_var = np.einsum("ncl,ncl->c", flat, flat) / np.float32(count)  # no squared copy
        invstd = (1.0 / np.sqrt(batch_var + np.float32(self.eps))).astype(np.float32)
        out *= self._per_channel(invstd * w, x)
        out += self._per_channel(b, x)
        m = np.float32(self.momentum)
        mean *= 1 - m
        mean += m * batch_mean
        var *= 1 - m
        var += m * batch_var * np.float32(count / (count - 1))  # torch keeps the unbiased one
        return out, (x, batch_mean, invstd)

    def backward(
        self, dout: Array, cache: tuple[Array, Array, Array], w: Array, need: _Grads
    ) -> tuple[Array | None, Array | None, Array | None]:
        """Gradients of the weight, the bias and the input, as ``need`` asks."""
        x, batch_mean, invstd = cache
        axes = (0, *range(2, x.ndim))
        xhat = x - self._per_channel(batch_mean, x)
        xhat *= self._per_channel(invstd, x)
        dw = (dout * xhat).sum(axis=axes) if need.weight else None
        db = dout.sum(axis=axes) if need.bias else None
        dx = None
        if need.input:
            # d(input) = w/std · (dout − mean(dout) − x̂ · mean(dout · x̂)), means per channel
            xhat *= self._per_channel((dout * xhat).mean(axis=axes), x)
            dx = dout - self._per_channel(dout.mean(axis=axes), x)
            dx -= xhat
            dx *= self._per_channel(w * invstd, x)
        return dw, db, dx


def _check_supported(spec: ModelSpec) -> None:
    for i, layer in enumerate(spec.layers):
        if not isinstance(layer, LEAN_LAYERS):
            supported = ", ".join(t.__name__ for t in LEAN_LAYERS)
            raise UnsupportedModel(
                f"model {spec.name!r}: layer {i} ({layer_name(layer)}) is not supported by the "
                f'lean runtime (it trains {supported}); set [agent] runtime = "torch" in '
                "agent.toml and install ftte[torch] on the device"
            )


class LeanModel:
    """The device's model as numpy arrays (the ``lean`` runtime)."""

    def __init__(self, spec: ModelSpec) -> None:
        _check_supported(spec)
        self.layers: tuple[Layer, ...] = spec.layers
        self.objective = spec.objective
        self._shapes = spec.parameter_shapes()
        self._spec = spec
        # Zeros: the first assignment carries every tensor (the device's version is unknown).
        self.params: dict[str, Array] = {
            n: np.zeros(s, dtype=np.float32) for n, s in self._shapes.items()
        }
        # Torch's initial statistics (mean 0, variance 1) until the global ones arrive.
        self.buffers: dict[str, Array] = {
            n: (np.ones if n.endswith("running_var") else np.zeros)(s, dtype=np.float32)
            for n, s in spec.buffer_shapes().items()
        }
        self._ops: list[_Conv | _MaxPool | _BatchNorm | None] = []
        for layer in self.layers:
            if isinstance(layer, Conv1d | Conv2d):
                self._ops.append(_Conv(layer))
            elif isinstance(layer, MaxPool1d | MaxPool2d):
                self._ops.append(_MaxPool(layer))
            elif isinstance(layer, BatchNorm1d | BatchNorm2d):
                self._ops.append(_BatchNorm(layer))
            else:
                self._ops.append(None)
        # ReLUs whose output the next layer keeps as its input anyway (see _forward).
        self._relu_shares = {
            i
            for i, layer in enumerate(self.layers)
            if isinstance(layer, ReLU) and _keeps_its_input(self.layers, i + 1)
        }

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape."""
        return dict(self._shapes)

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every buffer's name and shape (batch norms' running statistics)."""
        return {n: b.shape for n, b in self.buffers.items()}

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Set the named parameters and buffers to ``values``."""
        for name, value in values.items():
            target = self.buffers if name in self.buffers else self.params
            target[name] = np.array(value, dtype=np.float32)

    def train(
        self, trainable: Collection[str], data: Dataset, config: TrainConfig, seed: int
    ) -> TrainResult:
        """Train only ``trainable`` on ``data``; return the delta and the accounted peak."""
        unknown = set(trainable) - self.params.keys()
        if unknown or not trainable:
            raise ValueError(f"slice must name parameters of the model; unknown: {sorted(unknown)}")
        if len(data) == 0:
            raise ValueError("no local training data")
        weights = sum(p.nbytes for p in self.params.values())
        weights += sum(b.nbytes for b in self.buffers.values())
        slice_numel = sum(self.params[n].size for n in trainable)
        stats = {n: self.buffers[n].copy() for n in self._spec.updated_buffers(trainable)}
        # The working copy (the torch runtime's snapshot), gradients and optimizer state,
        # and the working copy of the running statistics training moves.
        per_value = FLOAT_BYTES * (2 + config.optimizer_slots)
        meter = _Meter(weights + slice_numel * per_value + sum(b.nbytes for b in stats.values()))
        delta, loss, processed = self._train(list(trainable), data, config, seed, meter, stats)
        return TrainResult(
            delta=delta,
            num_samples=len(data),
            loss=loss,
            peak_mem_bytes=meter.peak,
            samples_processed=processed,
            buffers=stats,
        )

    def logits(self, x: Array) -> Array:
        """The loaded model's outputs for samples ``x`` (a few samples at a time)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._frozen_forward(x, len(self.layers), _Meter(0))

    def evaluate(self, data: Dataset) -> Evaluation:
        """The objective's metrics of the loaded model on ``data``."""
        return Evaluation(len(data), self.objective.metrics(self.logits(data.x), data))

    def _train(
        self,
        trainable: list[str],
        data: Dataset,
        config: TrainConfig,
        seed: int,
        meter: _Meter,
        stats: dict[str, Array],
    ) -> tuple[dict[str, Array], float, int]:
        first = min(int(name.split(".", 1)[0]) for name in trainable)
        work = {n: self.params[n].copy() for n in trainable}
        optimizer = make_optimizer(config)
        epoch_loss = 0.0
        targets = self.objective.targets(data)
        processed = 0
        for batches in epoch_batches(len(data), config, seed):
            total, count = 0.0, 0
            for batch in batches:
                grads = {n: np.zeros_like(v) for n, v in work.items()}
                fresh = set(grads)  # gradients no chunk of this batch has added to yet
                step = config.micro_batch or len(batch)
                for chunk_start in range(0, len(batch), step):
                    chunk = batch[chunk_start : chunk_start + step]
                    x = data.x[chunk]
                    meter.drop_all()
                    meter.hold(x)
                    h = self._frozen_forward(x, first, meter)
                    meter.drop_all()
                    meter.hold(x)
                    meter.hold(h)
                    total += self._accumulate(
                        h, targets[chunk], first, work, grads, fresh, len(batch), meter, stats
                    )
                self._step(work, grads, optimizer, config)
                count += len(batch)
            epoch_loss = total / count
            processed += count
        return {n: work[n] - self.params[n] for n in trainable}, epoch_loss, processed

    def _value(self, name: str, work: Mapping[str, Array]) -> Array:
        return work[name] if name in work else self.params[name]

    def _frozen_forward(self, x: Array, first: int, meter: _Meter) -> Array:
        """The frozen prefix, a few samples at a time: it keeps nothing for backward."""
        if first == 0:
            return x
        parts = []
        for i in range(0, len(x), LEAN_FROZEN_CHUNK):
            h = x[i : i + LEAN_FROZEN_CHUNK]
            for position in range(first):
                h, _ = self._forward(position, h, self.params, meter)
            parts.append(h)
            meter.hold(h)
        out = np.concatenate(parts)
        meter.see(out)
        return out

    def _forward(
        self,
        i: int,
        h: Array,
        values: Mapping[str, Array],
        meter: _Meter,
        stats: dict[str, Array] | None = None,
    ) -> tuple[Array, Any]:
        """Layer ``i`` on ``h``: its output and what its backward needs. With ``stats`` (the
        running statistics training moves), batch norms are in training mode."""
        layer, op = self.layers[i], self._ops[i]
        if isinstance(op, _Conv):
            weight, bias = self._value(f"{i}.weight", values), self._value(f"{i}.bias", values)
            return op.forward(h, weight, bias, meter)
        out: Array
        cache: Any
        if isinstance(op, _BatchNorm):
            weight, bias = self._value(f"{i}.weight", values), self._value(f"{i}.bias", values)
            mean, var = f"{i}.running_mean", f"{i}.running_var"
            if stats is None:
                out = op.forward_eval(h, weight, bias, self.buffers[mean], self.buffers[var])
                cache = None
            else:
                out, cache = op.forward_train(h, weight, bias, stats[mean], stats[var])
        elif isinstance(op, _MaxPool):
            out, cache = op.forward(h)
        elif isinstance(layer, ReLU):
            # Before a layer that keeps its input (a linear layer), the ReLU keeps its output,
            # the same buffer (torch's ReLU saves its result too); elsewhere (before a
            # max-pool, which keeps only the argmax) a mask, a quarter of the output's bytes.
            mask = h > 0
            out = h * mask
            cache = out if i in self._relu_shares else mask
        elif isinstance(layer, Flatten):
            out, cache = h.reshape(h.shape[0], -1), h.shape
        elif isinstance(layer, Linear):
            out = h @ self._value(f"{i}.weight", values).T
            out += self._value(f"{i}.bias", values)
            cache = h
        else:
            raise AssertionError(f"unsupported layer {layer!r} passed _check_supported")
        meter.see(h, out)
        return out, cache

    def _accumulate(
        self,
        x: Array,
        y: Array,
        first: int,
        work: Mapping[str, Array],
        grads: dict[str, Array],
        fresh: set[str],
        batch_len: int,
        meter: _Meter,
        stats: dict[str, Array],
    ) -> float:
        """Forward and backward of one chunk (targets ``y``) from layer ``first``; adds to
        ``grads`` the gradient of the chunk's summed loss over ``batch_len``; returns the
        summed loss."""
        caches = []
        h = x
        for i in range(first, len(self.layers)):
            h, cache = self._forward(i, h, work, meter, stats)
            caches.append(cache)
            meter.hold(_kept(cache))
        loss, grad = self.objective.loss_sum(h, y)
        grad /= batch_len
        for i in reversed(range(first, len(self.layers))):
            cache = caches.pop()
            grad = self._backward(i, grad, cache, work, grads, fresh, i > first, meter)
            meter.release(_kept(cache))
        return loss

    def _backward(
        self,
        i: int,
        dout: Array,
        cache: Any,
        work: Mapping[str, Array],
        grads: dict[str, Array],
        fresh: set[str],
        need_input: bool,
        meter: _Meter,
    ) -> Array:
        layer, op = self.layers[i], self._ops[i]
        weight, bias = f"{i}.weight", f"{i}.bias"
        need = _Grads(weight in grads, bias in grads, need_input)
        if isinstance(op, _Conv):
            dw, db, dx = op.backward(dout, cache, self._value(weight, work), need, meter)
        elif isinstance(op, _BatchNorm):
            dw, db, dx = op.backward(dout, cache, self._value(weight, work), need)
            meter.see(dout, cache[0], dx)
        elif isinstance(op, _MaxPool):
            dx = op.backward(dout, cache) if need_input else dout
            meter.see(dout, dx)
            return dx
        elif isinstance(layer, ReLU):
            return dout * (cache if cache.dtype == np.bool_ else cache > 0)
        elif isinstance(layer, Flatten):
            return dout.reshape(cache)
        else:  # Linear
            dx = dout @ self._value(weight, work) if need_input else None
            dw = db = None
            if need.weight:
                _add_weight_grad(grads[weight], dout, cache, weight in fresh, dx, meter)
                fresh.discard(weight)
            if need.bias and bias in fresh:
                np.sum(dout, axis=0, out=grads[bias])
                fresh.discard(bias)
            elif need.bias:
                db = dout.sum(axis=0)
            meter.see(dout, db, dx)
        if dw is not None:
            grads[weight] += dw
        if db is not None:
            grads[bias] += db
        return dx if dx is not None else dout

    @staticmethod
    def _step(
        work: dict[str, Array],
        grads: dict[str, Array],
        optimizer: LeanSGD | LeanAdam,
        config: TrainConfig,
    ) -> None:
        """Clip the slice's gradient norm, then one step of ``optimizer``."""
        if config.clip_norm > 0:
            norm = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))
            scale = config.clip_norm / (norm + 1e-6)  # torch's clip_grad_norm_ epsilon
            if scale < 1.0:
                for g in grads.values():
                    g *= np.float32(scale)
        optimizer.step(work, grads)
