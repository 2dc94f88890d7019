"""The check of an update's tensors against the model's names and shapes.

One check for every process that holds an update before the owner of the model sees it
(an ingest worker, a site gateway): neither knows the device's open assignment, which is
the owner's check, but both must refuse a tensor the model does not have before they pass
or sum it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ftte.errors import Rejected, RejectReason
from ftte.wire.messages import Update

Shapes = Mapping[str, tuple[int, ...]]


def check_model_shapes(update: Update, shapes: Shapes, buffer_shapes: Shapes) -> None:
    """Refuse a tensor the model does not have or of another shape than the model's.

    Which of them the device was assigned is the owner's check (it knows the open
    assignment); together the two are the single process's check against the slice.
    """
    for tensors, model, what in (
        (update.delta, shapes, "tensor"),
        (update.buffers, buffer_shapes, "buffer"),
    ):
        for name, value in tensors.items():
            expected = model.get(name)
            if expected is None:
                raise _refused(update, RejectReason.WRONG_SLICE, f"no model {what} {name!r}")
            if value.shape != expected:
                detail = f"{what} {name!r}: {value.shape} != {expected}"
                raise _refused(update, RejectReason.BAD_SHAPE, detail)


def _refused(update: Update, reason: RejectReason, detail: str) -> Rejected:
    return Rejected(
        reason,
        detail,
        device_id=update.device_id,
        assignment_id=update.assignment_id,
        update_id=update.update_id,
    )
