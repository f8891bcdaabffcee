"""A backward pass that stores no intermediate states.

The standard path keeps the input of every block product for the backward
pass: one ``(B, N, K)`` state per block, O(blocks · B · N · K) memory
(L · log N states for the layered ansätze). Every step of the schedule is
unitary, so the state before a step can be recovered from the state after
it by applying the step's inverse: the conjugate transpose of the block
matrix, the inverse permutation of a reorder or a gather, the same ±1
signs. :func:`recomputed_forward` uses this:

* forward: build the block matrices and run the schedule; keep only the
  block matrices (``blocks · B · D²`` numbers) and the output;
* backward: walk the schedule in reverse, carrying the state and its
  gradient back one step at a time (each undone by the same inverse), and
  accumulate the gradient of every block matrix, ``grad_after ·
  state_beforeᴴ``; autograd then takes these through the (cheap)
  matrix-building code to the angles and the parameter values.

The price is one more application of each step in the backward pass.
Recovered states carry a few ulps of rounding per step: float64 gradients
agree with the standard path to about 1e-13, float32 ones to about 1e-5.

>>> import torch
>>> from qpeft.ansatz import pauli
>>> from qpeft.compiler.engine import ColumnsEngine
>>> from qpeft.compiler.plan import make_plan
>>> engine = ColumnsEngine(make_plan(pauli(5, 2)), columns=[0, 1, 2], dtype=torch.float64)
>>> values = torch.randn(2, 21, dtype=torch.float64, requires_grad=True)
>>> (recomputed_forward(engine, values) ** 3).sum().backward()
>>> low_memory = values.grad.clone(); values.grad = None
>>> (engine(values) ** 3).sum().backward()
>>> bool(torch.allclose(low_memory, values.grad, atol=1e-12))
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from qpeft.compiler.engine import ColumnsEngine


def recomputed_forward(engine: ColumnsEngine, values: torch.Tensor) -> torch.Tensor:
    """``engine(values)`` with the memory-saving backward described above.

    ``values``: ``(..., P)`` in the engine's real dtype. Returns ``(..., N, K)``.
    """
    return engine(values, keep_states=False)


def autograd_saved_bytes(
    function: Callable[..., torch.Tensor],
    *arguments: torch.Tensor,
    exclude: Iterable[torch.Tensor] = (),
) -> tuple[int, torch.Tensor]:
    """Bytes that autograd keeps for the backward pass of ``function(*arguments)``.

    Counts every distinct storage saved for backward once (views of one
    state share a storage); storages of ``exclude`` (module buffers, which
    exist anyway) are not counted. Returns the byte count and the output.

    >>> import torch
    >>> from qpeft.ansatz import pauli
    >>> from qpeft.compiler import compile_circuit
    >>> held = {}
    >>> for recompute in (False, True):
    ...     frame = compile_circuit(pauli(10, 2), 32, method="columns",
    ...                            recompute_backward=recompute)
    ...     values = torch.zeros(frame.num_parameters, requires_grad=True)
    ...     held[recompute], U = autograd_saved_bytes(frame, values, exclude=frame.buffers())
    >>> U.numel() * U.element_size()          # the output: N·K float32 numbers
    131072
    >>> held[True] < held[False] / 4
    True
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = function(*arguments)
    for tensor in _held_by_nodes(output):
        pack(tensor)
    return sum(storages.values()), output


def _held_by_nodes(output: object) -> Iterator[torch.Tensor]:
    """Tensors that the autograd nodes behind ``output`` hold besides their saved
    tensors: the workspaces of the matrix product method
    (:class:`qpeft.compiler.mps.NetworkFunction`)."""
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    stack = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor)]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        workspace = getattr(getattr(node, "lease", None), "workspace", None)
        if workspace is not None:  # (lent: none once the backward has run)
            yield from workspace.tensors()
        stack.extend(parent for parent, _ in node.next_functions)


__all__ = ["autograd_saved_bytes", "recomputed_forward"]
