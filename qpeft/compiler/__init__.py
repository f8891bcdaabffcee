"""The compiler: a circuit description in, a fast torch function out.

>>> import torch, qpeft
>>> circuit = qpeft.ansatz.pauli(qubits=6, layers=2)
>>> frame = qpeft.compile(circuit, columns=4, dtype=torch.float64)
>>> U = frame(torch.randn(circuit.num_parameters))
>>> U.shape
torch.Size([64, 4])
>>> bool(torch.allclose(U.T @ U, torch.eye(4, dtype=torch.float64)))
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import torch
from torch import nn

from qpeft.circuit import Circuit
from qpeft.circuit.gates import is_integer
from qpeft.circuit.parameters import refuse_non_real
from qpeft.compiler.blocks import autocast_off, plain_operations, reduced_precision_matmuls
from qpeft.compiler.engine import ColumnsEngine
from qpeft.compiler.plan import Plan, make_plan
from qpeft.errors import CompileError, ParameterError

METHODS = ("auto", "columns", "dense", "mps", "tensornet")
DTYPES = (torch.float32, torch.float64)


class CompiledCircuit(nn.Module):
    """A circuit compiled to a torch function: values ``(..., P)`` in
    ``circuit.parameters`` order → columns ``(..., N, K)`` (or the full
    ``(..., N, N)`` unitary when ``columns=None``).

    ``.to(device)`` moves it; ``.double()``, ``.float()`` and ``.to(dtype)``
    build it again in float64 or float32, and other dtypes raise
    :class:`~qpeft.errors.CompileError`."""

    def __init__(
        self,
        circuit: Circuit,
        columns: int | Sequence[int] | None = None,
        method: str = "auto",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        max_block: int = 16,
        recompute_backward: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(circuit, Circuit):
            raise CompileError(
                f"qpeft.compile needs a Circuit, got {type(circuit).__name__}; build one with "
                "qpeft.ansatz (e.g. qpeft.ansatz.pauli) or qpeft.load_ansatz"
            )
        if method not in METHODS:
            raise CompileError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if dtype not in DTYPES:
            raise CompileError(
                f"dtype must be torch.float32 or torch.float64, got {dtype}; complex circuits "
                "are computed in the matching complex dtype automatically, and a frame can be "
                "cast afterwards (U.half())"
            )
        if not isinstance(recompute_backward, bool):
            raise CompileError(
                f"recompute_backward must be True or False, got {recompute_backward!r}"
            )
        if not isinstance(check_values, bool):
            raise CompileError(f"check_values must be True or False, got {check_values!r}")
        if is_integer(max_block):
            max_block = int(max_block)  # a NumPy integer, as columns accepts
        device = _resolve_device(device)
        self.circuit = circuit.copy()  # a snapshot: appending to the caller's changes nothing
        self.dimension = circuit.dimension
        self.num_parameters = circuit.num_parameters
        self.parameters_names = circuit.parameters
        self.columns = _resolve_columns(columns, circuit.dimension)
        if recompute_backward and method in ("tensornet", "mps"):
            raise CompileError(
                "recompute_backward=True needs the step-by-step schedule of method='columns' "
                f"(or 'dense'); use one of those, or recompute_backward=False with {method!r}"
            )
        self.method = (_automatic_method(circuit, self.columns, recompute_backward)
                       if method == "auto" else method)
        self.recompute_backward = recompute_backward
        self.check_values = check_values
        # an angle is constant + Σ coefficient · value: |constant| + Σ |coefficient| · max|v|
        # bounds it, so these two bound what a value may be before an angle overflows
        expressions = [expr for gate in circuit.gates for expr in gate.params]
        self._largest_coefficient = max((sum(abs(c) for _, c in e.terms) for e in expressions),
                                        default=1.0)
        self._largest_constant = max((abs(e.constant) for e in expressions), default=0.0)
        self.plan: Plan = make_plan(circuit, max_block=max_block)
        self.engine = self._build_engine(dtype)
        if device is not None:
            self.to(device)

    def _build_engine(self, dtype: torch.dtype) -> nn.Module:
        if self.method == "mps":
            from qpeft.compiler.mps import MatrixProductNetwork

            return MatrixProductNetwork(self.circuit, self.columns, dtype)
        if self.method == "tensornet":
            from qpeft.compiler.tensornet import TensorNetwork

            return TensorNetwork(self.plan, self.columns, dtype)
        engine_columns = list(range(self.dimension)) if self.method == "dense" else self.columns
        return ColumnsEngine(self.plan, engine_columns, dtype)

    def _apply(self, fn, recurse: bool = True):
        # The engine computes in the dtype it was built with (kept as attributes, not
        # only in buffers), so converting its buffers would break it: a cast such as
        # .double() or .to(torch.float64) builds the engine again in the new dtype.
        # Anything else (a move, .to() with the current dtype, share_memory) keeps the
        # dtype of every buffer: torch's casts would also make the complex gate
        # matrices real and the index buffers floating point.
        self.__dict__.pop("_float64_twin", None)
        current = self.engine.real_dtype
        source = self.engine.builder.offset.device
        target = cast_probe(fn, current, source)
        if source.type == "meta" and target.device.type != "meta":
            # built under torch.device("meta"), then to_empty(): the buffers (gather indices,
            # gate constants) hold no values, and none is in the state dict; build them again
            self.engine = self._build_engine(current).to(target.device)
            return self
        if target.dtype == current:
            def keep_dtype(tensor: torch.Tensor) -> torch.Tensor:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "casting complex to real": undone below
                    out = fn(tensor)
                return out if out.dtype == tensor.dtype else tensor.to(out.device)

            return super()._apply(keep_dtype, recurse)
        if target.dtype not in DTYPES:
            raise CompileError(
                f"a compiled circuit computes in torch.float32 or torch.float64 and cannot be "
                f"cast to {target.dtype}; compile with dtype=torch.float32 (or float64) and "
                f"cast the frame it returns, U.to({target.dtype})"
            )
        self.engine = self._build_engine(target.dtype).to(target.device)
        return self

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values ``(..., P)`` (``circuit.parameters`` order) -> ``(..., N, K)``.

        Any leading batch shape is evaluated in one call; values are cast to
        the compiled dtype. Raises :class:`~qpeft.errors.ParameterError` for
        values that are not numbers, a wrong last axis, complex or bool values, NaN or
        infinity, or values that overflow the compiled dtype (unless compiled
        with ``check_values=False``).
        """
        if not isinstance(values, torch.Tensor):
            try:
                # through NumPy: a list of Python floats stays float64 (torch.as_tensor would
                # round it to float32), and a reversed array (negative strides) is copied
                array = np.asarray(values)
                if array.dtype == object:
                    raise TypeError("not numbers")
                values = torch.from_numpy(np.ascontiguousarray(array))
            except (TypeError, ValueError, RuntimeError):
                raise ParameterError(
                    f"parameter values must be a tensor of real numbers, got "
                    f"{type(values).__name__} {values!r:.60}; pass a torch.Tensor (or a list or "
                    f"NumPy array of numbers) of shape (..., {self.num_parameters})"
                ) from None
        if values.dim() == 0 or values.shape[-1] != self.num_parameters:
            raise ParameterError(
                f"expected parameter values of shape (..., {self.num_parameters}) in "
                f"circuit.parameters order, got {tuple(values.shape)}; pass one angle per "
                "circuit parameter in the last axis"
            )
        refuse_non_real(values, "parameter values")
        expected = self.engine.builder.offset.device
        if values.device != expected:
            raise ParameterError(
                f"the compiled circuit lives on {expected} but the values are on "
                f"{values.device}; move one of them with .to(...)"
            )
        lead = values.shape[:-1]
        engine = self.engine  # every engine maps (..., P) to (..., N, K)
        cast = values if values.dtype == engine.real_dtype else values.to(engine.real_dtype)
        if self.check_values and not plain_operations() and cast.device.type != "meta":
            self._check_finite(values, cast)  # (meta tensors hold no values to check)
        if math.prod(lead) == 0:
            # Nothing to evaluate. The zeros are built from the values, as the mappings'
            # frames are, so a backward pass gives a (..., P) zero gradient.
            empty = cast.new_zeros(*lead, self.dimension, self.num_columns,
                                   dtype=engine.work_dtype)
            return empty + cast.sum()
        if self._reduced_precision(cast):
            # TF32 products would leave a float32 frame orthonormal only to about 2e-3:
            # the work runs in float64 (still launch-bound on a GPU) and the frame is cast back
            engine, cast = self._float64_engine(cast.device), cast.double()
        with autocast_off(cast.device):  # the frame in the compiled dtype, as the mappings do
            if self.recompute_backward:
                from qpeft.compiler.recompute import recomputed_forward

                out = recomputed_forward(engine, cast)
            else:
                out = engine(cast)
        if self.method == "dense":
            out = out[..., self.columns]
        if out.dtype != self.engine.work_dtype:  # (the float64 twin's frame, cast back)
            out = out.to(self.engine.work_dtype)
        if cast.requires_grad and not out.requires_grad:  # a circuit without gates
            from qpeft.compiler.mappings import on_graph

            out = on_graph(out, cast)
        return out

    def _check_finite(self, given: torch.Tensor, flat: torch.Tensor) -> None:
        """Raise for NaN or infinite values, or for values that may make an angle
        (constant + Σ coefficient · value) overflow the compiled dtype; one
        read-back from the device."""
        largest_allowed = torch.finfo(flat.dtype).max
        if self._largest_constant > largest_allowed:
            raise ParameterError(
                f"a constant angle of the circuit ({self._largest_constant:.3g}) overflows the "
                f"compiled dtype {flat.dtype}; compile with dtype=torch.float64"
            )
        if flat.numel() == 0:
            return
        # one read-back, in Python floats (NaN fails the comparison)
        largest = float(flat.detach().abs().amax())
        if largest * self._largest_coefficient + self._largest_constant <= largest_allowed:
            return
        if torch.isfinite(given).all():
            scale = ("" if self._largest_coefficient <= 1.0 else
                     f", times coefficients summing to up to {self._largest_coefficient:.3g}")
            if self._largest_constant:
                scale += f", plus a constant up to {self._largest_constant:.3g}"
            raise ParameterError(
                f"parameter values overflow the compiled dtype {flat.dtype} (largest "
                f"magnitude {given.abs().max().item():.3g}{scale}); compile with "
                "dtype=torch.float64 or pass smaller values"
            )
        raise ParameterError(
            "parameter values contain NaN or infinity; check the optimiser step (learning "
            "rate, gradient clipping) or the values loaded from disk"
        )

    def _reduced_precision(self, flat: torch.Tensor) -> bool:
        """Whether this call's float32 products would run in TF32 on a GPU."""
        return (flat.device.type == "cuda" and flat.dtype == torch.float32
                and not plain_operations() and reduced_precision_matmuls())

    def _float64_engine(self, device: torch.device) -> nn.Module:
        """The circuit's engine in float64 on ``device``, built on first use and
        kept outside the module's state (not a submodule, not pickled, dropped
        by every move or cast)."""
        twin = self.__dict__.get("_float64_twin")
        if twin is None or twin.builder.offset.device != device:
            twin = self._build_engine(torch.float64).to(device)
            self.__dict__["_float64_twin"] = twin
        return twin

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.pop("_float64_twin", None)
        return state

    def cost(self) -> dict[str, int]:
        """The cost model of one forward pass for one circuit.

        ``columns``/``dense``: ``multiply_adds`` of the state updates,
        ``state_numbers`` (N·K), ``block_products`` and ``reorders`` (see
        :meth:`ColumnsEngine.cost`). ``mps``: ``multiply_adds``,
        ``state_numbers``, the ``bond`` dimension χ and the ``segments`` T of
        the qubit wires (see :meth:`MatrixProductNetwork.cost`). ``tensornet``:
        opt_einsum's ``contraction_flops`` and ``largest_intermediate`` for B = 1.

        >>> import torch, qpeft
        >>> frame = qpeft.compile(qpeft.ansatz.pauli(10, 2), columns=4)
        >>> frame.cost()["state_numbers"], frame.cost()["bond"]
        (4096, 4)
        """
        return self.engine.cost()

    def extra_repr(self) -> str:
        return (
            f"dimension={self.dimension}, columns={self.num_columns}, "
            f"parameters={self.num_parameters}, method={self.method!r}"
        )


def _automatic_method(circuit: Circuit, columns: list[int], recompute_backward: bool) -> str:
    """``"mps"`` where the circuit and columns allow it and its tables are small (the Pauli
    brickwork up to L = 3; see :mod:`qpeft.compiler.mps`), else ``"columns"``."""
    from qpeft.compiler.mps import preferred

    if recompute_backward or not preferred(circuit, columns):
        return "columns"
    return "mps"


def _resolve_columns(columns, dimension: int) -> list[int]:
    if columns is None:
        return list(range(dimension))
    if is_integer(columns):
        count = int(columns)
        if not 1 <= count <= dimension:
            raise CompileError(
                f"columns={count} is out of range for a {dimension}×{dimension} unitary; "
                f"use 1 <= K <= {dimension}"
            )
        return list(range(count))
    if isinstance(columns, (np.ndarray, torch.Tensor)):
        ordered = columns.ndim == 1
    else:
        ordered = isinstance(columns, Sequence) and not isinstance(columns, (str, bytes))
    if not ordered:
        hint = (" (a set has no order: pass sorted(columns) or a list in the order wanted)"
                if isinstance(columns, AbstractSet) else "")
        raise CompileError(
            f"columns must be None, a count K or an ordered sequence of column indices (a "
            f"list, tuple, range, NumPy array or 1-d integer tensor), got "
            f"{type(columns).__name__} {columns!r}{hint}"
        )
    wrong = [c for c in columns if not is_integer(c)]
    if wrong:
        raise CompileError(
            f"column indices must be integers, got {wrong[0]!r} ({type(wrong[0]).__name__}) "
            f"in {columns!r}; pass whole numbers such as [0, 3] (floats and bools are not "
            "read as indices)"
        )
    chosen = [int(c) for c in columns]
    if not chosen or any(not 0 <= c < dimension for c in chosen):
        raise CompileError(f"column indices must lie in 0..{dimension - 1}, got {chosen}")
    if len(set(chosen)) != len(chosen):
        raise CompileError(f"column indices must be distinct, got {chosen}")
    return chosen


def _resolve_device(device: object) -> torch.device | None:
    """``device`` as a torch.device that exists here, or None to stay on the CPU."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError):
        raise CompileError(
            f"device={device!r} is not a torch device; pass 'cpu', 'cuda', 'cuda:1' or a "
            "torch.device"
        ) from None
    try:
        torch.empty(0, device=device)
    except _UNAVAILABLE as error:
        raise CompileError(
            f"device {device} is not available here ({str(error).splitlines()[0]}); "
            "compile on device='cpu', or check torch.cuda.is_available()"
        ) from None
    return device


_UNAVAILABLE = (AssertionError, RuntimeError, NotImplementedError)  # what torch raises there


def cast_probe(fn, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """What a move or cast ``fn`` (of :meth:`torch.nn.Module._apply`) makes of a
    tensor of ``dtype`` on ``device``; a device that is not available (``.to("cuda")``
    without CUDA) raises :class:`CompileError`, not torch's ``AssertionError``."""
    try:
        return fn(torch.empty(0, dtype=dtype, device=device))
    except _UNAVAILABLE as error:
        raise CompileError(
            f"cannot move or cast the module: {str(error).splitlines()[0]}; keep it where it "
            "is (check torch.cuda.is_available() before .to('cuda'))"
        ) from None


def compile_circuit(
    circuit: Circuit,
    columns: int | Sequence[int] | None = None,
    *,
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    max_block: int = 16,
    recompute_backward: bool = False,
    check_values: bool = True,
) -> CompiledCircuit:
    """Compile ``circuit`` into a torch module (see :class:`CompiledCircuit`).

    ``columns``: None (the whole unitary), K (the first K columns) or a list
    of column indices. ``method``: ``"auto"`` (the default) is ``"mps"`` where
    the circuit and columns allow it and its tables are small, else
    ``"columns"`` (``frame.method`` says which); ``"mps"`` contracts the
    columns as a matrix product state (one-wire gates and constant diagonal
    gates on neighbouring wires; :mod:`qpeft.compiler.mps`); ``"columns"``
    simulates only the chosen columns, block by block (never N×N); ``"dense"``
    builds the whole unitary and slices it; ``"tensornet"`` contracts the
    circuit as a tensor network along a path planned once by opt_einsum.
    ``recompute_backward=True``
    stores no intermediate states: the backward pass rebuilds them by
    applying each step's inverse (every step is orthogonal/unitary).
    ``check_values=False`` skips the check for NaN and infinite values, which
    reads one flag back from the device on every call (a host sync on a GPU).
    See docs/compiler.md for the plan, the cost model and the options.

    >>> import torch
    >>> from qpeft.ansatz import for_dimension
    >>> frame = compile_circuit(for_dimension(768, layers=2), [0, 5], dtype=torch.float64)
    >>> frame(torch.zeros(3, frame.num_parameters)).shape
    torch.Size([3, 768, 2])
    """
    return CompiledCircuit(circuit, columns, method, dtype, device, max_block, recompute_backward,
                           check_values)


__all__ = ["CompiledCircuit", "METHODS", "compile_circuit"]
