"""Benchmark the circuit compiler against its peers (``qpeft bench unitary``).

What is timed, for each dimension N, is one **forward and backward** pass
that produces the first K columns of an N×N orthogonal matrix from a
parameter vector (the work an adapter does twice per layer and step):

* ``compiled`` – :func:`qpeft.compile` as a user calls it (``method="auto"``:
  ``"mps"`` where the circuit allows it, else ``"columns"``); every ratio is
  taken to it;
* ``columns`` – ``method="columns"``, the gate-by-gate schedule;
* ``mps`` – ``method="mps"``, the matrix product contraction (qubit registers
  whose two-wire gates are constant diagonals on neighbouring wires);
* ``tensornet`` – the same circuit contracted by opt_einsum;
* ``dense`` – the whole N×N unitary, then sliced (small N only);
* ``naive`` – a plain torch simulation, gate by gate: each gate's matrix is
  built from its angle and applied with ``torch.tensordot`` on its axes, no
  fusion, no batching of matrices (:class:`NaiveSimulator`);
* ``qiskit`` – ``qiskit.quantum_info.Operator`` of the bound circuit
  (forward only: Qiskit has no gradients), qubit registers only;
* ``pennylane`` – ``qml.matrix`` with the torch interface, forward and
  backward, qubit registers only;
* ``cayley``, ``exponential``, ``householder``, ``givens``, ``taylor`` –
  the alternative maps onto N×K orthonormal frames (``qpeft.compiler.mappings``);
* ``cayley-full``, ``exponential-full`` – the first K columns of a whole N×N
  orthogonal matrix built from N(N−1)/2 generator entries (:class:`FullMapping`),
  the setting of the paper's Fig. 6; timed once per size, like Qiskit.

With ``torch_compile`` (``--torch-compile``) every torch method is wrapped
in ``torch.compile`` and compiled before it is timed (dynamo's caches are
reset for each size).

The circuit is :func:`qpeft.ansatz.pauli` for powers of two and
:func:`qpeft.ansatz.for_dimension` (qudit register) otherwise. Fast methods
are timed interleaved, ``repeats`` rounds of every method in turn, and the
median is reported, so that load from other processes hits all of them
alike. Qiskit and PennyLane take seconds to minutes; they run once per
size and are skipped where an extrapolation from the smaller sizes says a
run would take longer than ``slow_limit`` seconds.

Three further measurements: **stacked** frames, ``stacked`` frames of each N in
one call for ``compiled`` and the alternative mappings (angle vectors stacked
on a leading axis, the way the adapters call them); the **batched** evaluation
of the 72 frames that adapting every linear layer of a 6-layer, 384-wide BERT
needs (one call per distinct dimension against 72 separate calls); and the
**memory** held by autograd with and without ``recompute_backward``.

>>> report = run_benchmark(BenchmarkConfig.quick())
>>> sorted(report["targets"][0])
['measured', 'name', 'status', 'threshold']
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from qpeft.ansatz import for_dimension, pauli
from qpeft.bench.cli import max_threads, synchronize
from qpeft.circuit import Circuit
from qpeft.circuit.gates import COMPLEX_OF, FixedGate
from qpeft.cli import DefaultsHelpFormatter
from qpeft.compiler import compile_circuit
from qpeft.compiler.mps import unsupported_reason
from qpeft.compiler.recompute import autograd_saved_bytes
from qpeft.draw import image_path
from qpeft.errors import ConfigError, InteropError

FAST_METHODS = ("compiled", "columns", "mps", "tensornet", "dense", "naive")
#: Every ratio and target is taken to this row: qpeft.compile with its defaults.
BASE = "compiled"
MAPPINGS = ("cayley", "exponential", "householder", "givens", "taylor")
SLOW_METHODS = ("qiskit", "pennylane")
FULL_MAPPINGS = ("cayley-full", "exponential-full")
#: The methods timed on stacked frames: qpeft.compile (and its two engines) and the maps.
STACKED_METHODS = ("compiled", "columns", "mps", *MAPPINGS)
ALL_METHODS = FAST_METHODS + SLOW_METHODS + MAPPINGS + FULL_MAPPINGS

#: Default dimensions: the powers of two 2^8 … 2^14 and three transformer widths.
DEFAULT_SIZES = (256, 384, 512, 768, 1024, 2048, 3072, 4096, 8192, 16384)
#: The largest N timed: at 2^24 one float32 frame of K = 4 columns is 256 MiB, and the
#: alternative mappings hold several of them (the batched case is separate).
MAX_SIZE = 2**24
#: The most numbers in the stacked frames of one call (stacked · N · K).
MAX_STACKED = 2**28
#: The dense unitary is timed up to this N (it holds N×N numbers per saved state).
DENSE_LIMIT = 1024


# ---------------------------------------------------------------------------
# peers


class NaiveSimulator:
    """A gate-by-gate torch simulation of a circuit's first K columns.

    The honest baseline: every gate's constant parts are prepared once, but
    each call builds every gate's matrix from its angle and contracts it
    into the ``(d_0, …, d_{n-1}, K)`` state with ``torch.tensordot`` on the
    gate's axes; no fusion, no batching. Differentiable.

    >>> circuit = pauli(3, 1)
    >>> values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    >>> U = NaiveSimulator(circuit, 2, torch.float64)(values)
    >>> bool(torch.allclose(U, torch.as_tensor(circuit.matrix(values))[:, :2]))
    True
    """

    def __init__(self, circuit: Circuit, columns: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.dims = circuit.dims
        work = dtype if circuit.is_real else COMPLEX_OF[dtype]
        index = {name: i for i, name in enumerate(circuit.parameters)}
        self.gates: list[tuple] = []
        for gate in circuit.gates:
            if gate.is_identity:
                continue
            local = circuit.wire_dims(gate.wires)
            if gate.params and gate.params[0].is_constant:  # a bound angle: a fixed matrix
                self.gates.append(("fixed", gate.wires, local,
                                   _tensor(gate.matrix(local, torch.tensor(
                                       [gate.params[0].constant], dtype=torch.float64)).numpy(),
                                       dtype, work, device)))
            elif gate.params:
                generator = gate.generator(local)
                projector = generator @ generator
                parts = [np.eye(len(generator)) - projector, projector, -1j * generator]
                expr = gate.params[0]
                terms = [(index[name], coeff) for name, coeff in expr.terms]
                tensors = [_tensor(p, dtype, work, device) for p in parts]
                self.gates.append(("rotation", gate.wires, local, tensors, terms, expr.constant))
            else:
                constant = (gate.constant_matrix(local) if isinstance(gate, FixedGate)
                            else gate.matrix(local).numpy())
                self.gates.append(("fixed", gate.wires, local,
                                   _tensor(constant, dtype, work, device)))
        initial = torch.zeros(circuit.dimension, columns, dtype=work, device=device)
        initial[torch.arange(columns), torch.arange(columns)] = 1
        self.initial = initial

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """values (P,) -> (N, K)."""
        state = self.initial.reshape(*self.dims, -1)
        for gate in self.gates:
            wires, local = gate[1], gate[2]
            if gate[0] == "rotation":
                fixed, projector, step = gate[3]
                theta = gate[5] + sum(coeff * values[i] for i, coeff in gate[4])
                matrix = fixed + torch.cos(theta / 2) * projector + torch.sin(theta / 2) * step
            else:
                matrix = gate[3]
            count = len(wires)
            matrix = matrix.reshape(*local, *local).to(state.dtype)
            state = torch.tensordot(matrix, state, dims=(list(range(count, 2 * count)),
                                                         list(wires)))
            state = torch.movedim(state, list(range(count)), list(wires))
        return state.reshape(-1, state.shape[-1])


class FullMapping:
    """The first K columns of a whole N×N orthogonal matrix: the Cayley
    transform ``(I + A)⁻¹ (I − A)`` or the exponential ``exp(A)`` of a
    skew-symmetric A whose N(N−1)/2 upper entries are the parameters. This is
    how the maps compare in the paper's Fig. 6; O(N³) work and N×N memory,
    where the thin maps of ``qpeft.compiler.mappings`` stay O(N·K²).

    >>> frame = FullMapping("cayley", 6, 2, torch.float64)
    >>> U = frame(torch.randn(frame.num_parameters, dtype=torch.float64))
    >>> bool(torch.allclose(U.T @ U, torch.eye(2, dtype=torch.float64)))
    True
    """

    def __init__(self, kind: str, dimension: int, columns: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if kind not in ("cayley", "exponential"):
            raise ConfigError(f"FullMapping builds 'cayley' or 'exponential', not {kind!r}")
        self.kind, self.dimension, self.columns = kind, dimension, columns
        self.upper = tuple(torch.triu_indices(dimension, dimension, 1, device=device))
        self.eye = torch.eye(dimension, dtype=dtype, device=device)
        self.num_parameters = dimension * (dimension - 1) // 2

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """values (N(N−1)/2,) -> (N, K)."""
        upper = torch.zeros_like(self.eye).index_put(self.upper, values)
        generator = upper - upper.T
        if self.kind == "cayley":
            return torch.linalg.solve(self.eye + generator,
                                      (self.eye - generator)[:, : self.columns])
        return torch.linalg.matrix_exp(generator)[:, : self.columns]


def _tensor(array, dtype, work, device) -> torch.Tensor:
    array = np.asarray(array)
    if np.iscomplexobj(array) and np.abs(array.imag).max(initial=0.0) > 0:
        return torch.as_tensor(array, dtype=work, device=device)
    return torch.as_tensor(np.real(array), dtype=dtype, device=device)


def _angle_values(circuit: Circuit, values) -> list:
    """The numeric angle of every parameterized gate (floats or tensors)."""
    index = {name: i for i, name in enumerate(circuit.parameters)}
    out = []
    for gate in circuit.gates:
        if gate.params:
            expr = gate.params[0]
            out.append(expr.constant + sum(c * values[index[n]] for n, c in expr.terms))
    return out


def _require_qubits(circuit: Circuit, who: str) -> None:
    if set(circuit.dims) != {2}:
        raise InteropError(f"{who} takes qubit registers only; this circuit has dims "
                           f"{circuit.dims}")


def qiskit_circuit(circuit: Circuit, values: Sequence[float]):
    """The bound circuit as a Qiskit ``QuantumCircuit`` whose ``Operator``
    equals ``circuit.matrix(values)`` (qpeft wire w is Qiskit qubit n−1−w,
    so the little-endian order of Qiskit gives the same matrix).

    >>> from qiskit.quantum_info import Operator
    >>> circuit = Circuit(2).ry(0, "a").cz(0, 1).rx(1, "b").cx(1, 0)
    >>> qc = qiskit_circuit(circuit, [0.3, -0.7])
    >>> bool(np.allclose(Operator(qc).data, circuit.matrix([0.3, -0.7])))
    True
    """
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import UnitaryGate

    _require_qubits(circuit, "the Qiskit benchmark helper")
    n = circuit.num_wires
    qc = QuantumCircuit(n)
    angles = iter(_angle_values(circuit, [float(v) for v in values]))
    native = {"RY": qc.ry, "RX": qc.rx, "RZ": qc.rz}
    fixed = {"CZ": qc.cz, "CX": qc.cx, "SWAP": qc.swap, "H": qc.h, "X": qc.x, "Y": qc.y,
             "Z": qc.z}
    for gate in circuit.gates:
        if gate.is_identity:
            continue
        qubits = [n - 1 - w for w in gate.wires]
        if gate.params:
            angle = next(angles)
            if gate.name in native:
                native[gate.name](angle, qubits[0])
                continue
            matrix = gate.matrix(circuit.wire_dims(gate.wires),
                                 torch.tensor([angle], dtype=torch.float64)).numpy()
        elif gate.name in fixed:
            fixed[gate.name](*qubits)
            continue
        else:
            matrix = gate.matrix(circuit.wire_dims(gate.wires)).numpy()
        qc.append(UnitaryGate(matrix), qubits[::-1])
    return qc


def pennylane_function(circuit: Circuit) -> Callable[[torch.Tensor], torch.Tensor]:
    """``values -> circuit matrix`` through PennyLane's ``qml.matrix`` (torch
    interface, differentiable); wire order ``range(n)``, wire 0 most significant.

    >>> circuit = Circuit(2).ry(0, "a").cz(0, 1).ry(1, "b")
    >>> matrix = pennylane_function(circuit)(torch.tensor([0.3, -0.7], dtype=torch.float64))
    >>> bool(np.allclose(matrix.numpy(), circuit.matrix([0.3, -0.7])))
    True
    """
    import pennylane as qml

    _require_qubits(circuit, "the PennyLane benchmark helper")
    native = {"RY": qml.RY, "RX": qml.RX, "RZ": qml.RZ}
    fixed = {"CZ": qml.CZ, "CX": qml.CNOT, "SWAP": qml.SWAP, "H": qml.Hadamard,
             "X": qml.PauliX, "Y": qml.PauliY, "Z": qml.PauliZ}

    def qfunc(values: torch.Tensor) -> None:
        angles = iter(_angle_values(circuit, values))
        for gate in circuit.gates:
            if gate.is_identity:
                continue
            wires = list(gate.wires)
            if gate.params:
                angle = next(angles)
                if gate.name in native:
                    native[gate.name](angle, wires=wires[0])
                else:
                    local = circuit.wire_dims(gate.wires)
                    qml.QubitUnitary(gate.matrix(local, torch.as_tensor(angle).reshape(1)),
                                     wires=wires)
            elif gate.name in fixed:
                fixed[gate.name](wires=wires)
            else:
                qml.QubitUnitary(gate.matrix(circuit.wire_dims(gate.wires)), wires=wires)

    return qml.matrix(qfunc, wire_order=range(circuit.num_wires))


def load_mappings():
    """The module of the alternative Stiefel maps (``mapping(name, N, K, dtype=…)``)."""
    return importlib.import_module("qpeft.compiler.mappings")


# ---------------------------------------------------------------------------
# timing


def benchmark_circuit(dimension: int, layers: int, construction: str = "qudit") -> Circuit:
    """The Pauli ansatz for a power of two, ``for_dimension(N, layers,
    method=construction)`` otherwise."""
    if dimension >= 2 and dimension & (dimension - 1) == 0:
        return pauli(dimension.bit_length() - 1, layers)
    return for_dimension(dimension, layers, method=construction)


def _calibrate(fn: Callable[[], object], target: float = 0.01) -> int:
    """Calls per sample so that one sample lasts about ``target`` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(1000, int(target / once)))


def _sample(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def time_interleaved(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin.

    >>> times = time_interleaved({"a": lambda: sum(range(100))}, repeats=3)
    >>> times["a"] > 0
    True
    """
    numbers = {name: _calibrate(fn) for name, fn in functions.items()}
    samples: dict[str, list[float]] = {name: [] for name in functions}
    order = list(functions)
    shuffle = random.Random(0).shuffle  # a new order each round: no method always follows
    for _ in range(repeats):                 # the same one (that cost the first ~5–9 %)
        shuffle(order)
        for name in order:
            samples[name].append(_sample(functions[name], numbers[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def forward_backward(module: Callable[[torch.Tensor], torch.Tensor],
                     values: torch.Tensor) -> Callable[[], object]:
    """A closure running ``module(values)`` and the gradient of a weighted sum;
    on a GPU it waits for the device, so that a timing covers the work."""
    values = values.detach().requires_grad_(True)
    weight = None

    def run() -> object:
        nonlocal weight
        out = module(values)
        if out.is_complex():
            out = torch.view_as_real(out)
        if weight is None:
            weight = torch.randn_like(out.detach())
        gradient = torch.autograd.grad((out * weight).sum(), values)
        synchronize(values.device)
        return gradient

    return run


@dataclass
class BenchmarkConfig:
    """What ``qpeft bench unitary`` measures (see the module docstring)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    columns: int = 4
    layers: int = 2
    repeats: int = 7
    dtype: str = "float32"
    methods: tuple[str, ...] = ALL_METHODS
    slow_limit: float = 60.0
    batched: bool = True
    stacked: int = 32  # frames per call in the stacked comparison; 0 leaves it out
    bert_layers: int = 6
    memory_qubits: int = 14
    memory_columns: int = 64
    threads: int = 1
    construction: str = "qudit"
    torch_compile: bool = False
    device: str = "cpu"

    @classmethod
    def quick(cls) -> BenchmarkConfig:
        """A subset that runs in seconds (used by the tests)."""
        return cls(sizes=(64, 96), columns=2, layers=1, repeats=3, slow_limit=5.0,
                   stacked=3, bert_layers=1, memory_qubits=8, memory_columns=8)

    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

    def torch_device(self) -> torch.device:
        """The device of every torch method (:func:`qpeft.train.loop.resolve_device`)."""
        from qpeft.train.loop import resolve_device

        return resolve_device(self.device)

    def validate(self) -> None:
        """Raise :class:`~qpeft.errors.ConfigError` for a setting that cannot be measured.

        >>> BenchmarkConfig(threads=0).validate()
        Traceback (most recent call last):
        ...
        qpeft.errors.ConfigError: --threads 0 must lie in 1 … ...
        """
        unknown = sorted(set(self.methods) - set(ALL_METHODS))
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(ALL_METHODS)}")
        if not self.methods:
            raise ConfigError(f"--methods names no method; give a comma-separated subset of "
                              f"{','.join(ALL_METHODS)}")
        if not self.sizes or min(self.sizes) < 2 or max(self.sizes) > MAX_SIZE:
            raise ConfigError(f"--sizes takes dimensions 2 <= N <= 2^24 = {MAX_SIZE} only, got "
                              f"{list(self.sizes)}")
        if len(set(self.sizes)) < len(self.sizes):
            raise ConfigError(f"--sizes names a dimension twice: {list(self.sizes)}")
        if self.columns < 1 or any(self.columns > n for n in self.sizes):
            raise ConfigError(f"--columns {self.columns} must lie in 1 … N for every size "
                              f"{list(self.sizes)}")
        narrowest = min(bert_frames(layers=self.bert_layers))
        if self.batched and self.columns > narrowest:
            raise ConfigError(f"--columns {self.columns} is more than the {narrowest} rows of the "
                              f"batched BERT case's frames; pass --no-batched to measure it")
        if self.stacked < 0:
            raise ConfigError(f"--stacked {self.stacked} must be a number of frames >= 0 (0 "
                              "leaves the stacked comparison out)")
        numbers = self.stacked * max(self.sizes) * self.columns
        if numbers > MAX_STACKED and set(self.methods) & set(STACKED_METHODS):
            raise ConfigError(f"--stacked {self.stacked} frames of {max(self.sizes)} × "
                              f"{self.columns} are {numbers} numbers in one call, more than "
                              f"{MAX_STACKED} (2^28: 1 GiB of float32, and the mappings hold "
                              "several such tensors); pass fewer frames, smaller --sizes, or "
                              "--stacked 0 to leave the stacked comparison out")
        if self.layers < 0 or self.repeats < 1:
            raise ConfigError(f"--layers must be >= 0 and --repeats >= 1, got --layers "
                              f"{self.layers} --repeats {self.repeats}")
        limit = max_threads()
        if not 1 <= self.threads <= limit:
            raise ConfigError(f"--threads {self.threads} must lie in 1 … {limit} (the CPUs of "
                              f"this machine); 1, the default, gives the steadiest timings")
        self.torch_device()
        if not (self.slow_limit > 0 and math.isfinite(self.slow_limit)):
            raise ConfigError(f"--slow-limit {self.slow_limit} must be a positive finite number of "
                              f"seconds; leave Qiskit and PennyLane out with --methods instead")



@dataclass
class Measurement:
    method: str
    dimension: int
    seconds: float | None
    status: str = "ok"  # ok | skipped | n/a
    note: str = ""


@dataclass
class _SlowTracker:
    """Extrapolates the run time of a slow peer from its last two sizes."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def predict(self, dimension: int) -> float | None:
        if not self.points:
            return None
        (n1, t1) = self.points[-1]
        exponent = 2.5
        if len(self.points) >= 2:
            n0, t0 = self.points[-2]
            if t0 > 0 and n1 > n0:
                exponent = max(1.0, math.log(t1 / t0) / math.log(n1 / n0))
        return t1 * (dimension / n1) ** exponent


def _fast_functions(circuit: Circuit, config: BenchmarkConfig,
                    stacked: int | None = None) -> dict[str, Callable]:
    """The timed closures of the fast methods for ``circuit``; with ``stacked``, those of
    :data:`STACKED_METHODS`, each called on that many frames at once."""
    dtype, device = config.torch_dtype(), config.torch_device()
    dimension, k = circuit.dimension, config.columns
    lead = () if stacked is None else (stacked,)
    values = 0.5 * torch.randn(*lead, circuit.num_parameters, dtype=dtype).to(device)
    modules: dict[str, tuple[Callable, torch.Tensor]] = {}
    wanted = set(config.methods) & set(FAST_METHODS + MAPPINGS if stacked is None
                                       else STACKED_METHODS)
    if BASE in wanted:
        modules[BASE] = compile_circuit(circuit, k, dtype=dtype, device=device), values
    for method in ("columns", "mps", "tensornet", "dense"):
        if method in wanted and _fits(method, circuit, k):
            modules[method] = compile_circuit(circuit, k, method=method, dtype=dtype,
                                              device=device), values
    if "naive" in wanted:
        modules["naive"] = NaiveSimulator(circuit, k, dtype, device), values
    mappings = [m for m in MAPPINGS if m in wanted]
    if mappings:
        module = load_mappings()
        for name in mappings:
            frame = module.mapping(name, dimension, k, dtype=dtype, device=device)
            modules[name] = frame, (0.1 * torch.randn(*lead, frame.num_parameters,
                                                   dtype=dtype)).to(device)
    if config.torch_compile:
        # one cache per size: dynamo compiles a code object (e.g. the forward shared by every
        # compiled circuit) for a limited number of modules, then silently runs it eagerly
        torch.compiler.reset()
    functions = {}
    for name, (module, arguments) in modules.items():
        if config.torch_compile:
            functions[name] = forward_backward(torch.compile(module), arguments)
            _compile_now(name, functions[name])
        else:
            functions[name] = forward_backward(module, arguments)
    return functions


def _fits(method: str, circuit: Circuit, columns: int) -> bool:
    """Whether ``method`` is timed on this circuit (see :func:`_unfit_note`)."""
    return _unfit_note(method, circuit, columns) is None


def _unfit_note(method: str, circuit: Circuit, columns: int) -> str | None:
    """Why a compiled method is left out at this size, or None."""
    if method == "dense" and circuit.dimension > DENSE_LIMIT:
        return f"N×N unitary above N = {DENSE_LIMIT}"
    if method == "mps":
        reason = unsupported_reason(circuit, list(range(columns)))
        return None if reason is None else reason.split("; use method=")[0]
    return None


def _compile_now(name: str, function: Callable[[], object]) -> None:
    """Run once, so that compilation is not timed; a failure says what to do."""
    try:
        function()
    except Exception as error:  # torch raises many types here (BackendCompilerFailed, …)
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(
            f"--torch-compile: torch.compile of {name} failed ({type(error).__name__}: "
            f"{first_line}); on CPU the inductor backend needs a C++ compiler (gcc or clang) "
            f"on PATH; leave {name} out with --methods, or run without --torch-compile"
        ) from error


def _slow_measurement(method: str, circuit: Circuit, config: BenchmarkConfig,
                      tracker: _SlowTracker) -> Measurement:
    dimension = circuit.dimension
    if method in SLOW_METHODS and set(circuit.dims) != {2}:
        return Measurement(method, dimension, None, "n/a",
                           f"N not a power of two needs a qudit register; {method} takes "
                           "qubits only")
    predicted = tracker.predict(dimension)
    if predicted is not None and predicted > config.slow_limit:
        return Measurement(method, dimension, None, "skipped",
                           f"estimated {predicted:.3g} s > {config.slow_limit:g} s limit")
    values = 0.5 * np.random.default_rng(0).standard_normal(circuit.num_parameters)
    if method in FULL_MAPPINGS:
        frame = FullMapping(method.removesuffix("-full"), dimension, config.columns,
                            config.torch_dtype(), config.torch_device())
        generator = torch.Generator().manual_seed(0)
        run = forward_backward(torch.compile(frame) if config.torch_compile else frame,
                               (0.1 * torch.randn(frame.num_parameters, generator=generator,
                                                  dtype=config.torch_dtype())
                                ).to(config.torch_device()))
        if config.torch_compile:
            _compile_now(method, run)  # compiled (and run once) like every torch method
        elif predicted is None or predicted < 1.0:
            run()  # a short run would mostly time torch's first call
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        note = "forward and backward of the whole N×N matrix; 1 run" + (
            " (torch.compile)" if config.torch_compile else "")
    elif method == "qiskit":
        from qiskit.quantum_info import Operator

        start = time.perf_counter()
        Operator(qiskit_circuit(circuit, values))
        seconds = time.perf_counter() - start
        note = "forward only (Qiskit has no gradients); 1 run"
    else:
        function = pennylane_function(circuit)
        leaf = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        start = time.perf_counter()
        matrix = function(leaf)
        torch.autograd.grad(matrix[:, : config.columns].real.sum(), leaf)
        seconds = time.perf_counter() - start
        note = "forward and backward; 1 run"
    tracker.points.append((dimension, seconds))
    return Measurement(method, dimension, seconds, "ok", note)


def bert_frames(hidden: int = 384, intermediate: int = 1536, layers: int = 6) -> dict[int, int]:
    """Frames (U or V) per dimension when every linear layer of a BERT is adapted.

    Per layer: q, k, v, o are hidden×hidden (2 frames of size hidden each),
    the intermediate dense is intermediate×hidden and the output dense
    hidden×intermediate (one frame of each size each).

    >>> bert_frames()
    {384: 60, 1536: 12}
    >>> sum(bert_frames().values())
    72
    """
    return {hidden: layers * (4 * 2 + 2), intermediate: layers * 2}


#: The batched target is defined for the 72 frames of the default 6-layer BERT.
BATCHED_TARGET_FRAMES = sum(bert_frames().values())


def measure_batched(config: BenchmarkConfig) -> dict:
    """One call per distinct dimension (angles stacked) against one call per frame."""
    dtype, device = config.torch_dtype(), config.torch_device()
    frames = bert_frames(layers=config.bert_layers)
    modules, values = {}, {}
    for dimension, count in frames.items():
        circuit = benchmark_circuit(dimension, config.layers, config.construction)
        modules[dimension] = compile_circuit(circuit, config.columns, dtype=dtype, device=device)
        values[dimension] = (0.5 * torch.randn(count, circuit.num_parameters, dtype=dtype)
                             ).to(device).requires_grad_(True)

    def gradient(loss: torch.Tensor) -> object:
        out = torch.autograd.grad(loss, list(values.values()))
        synchronize(device)
        return out

    def batched() -> object:
        return gradient(sum(modules[d](values[d]).sum() for d in frames))

    def separate() -> object:
        return gradient(sum(modules[d](values[d][i]).sum() for d in frames
                            for i in range(frames[d])))

    times = time_interleaved({"batched": batched, "separate": separate}, config.repeats)
    return {
        "frames": {str(d): c for d, c in frames.items()},
        "total_frames": sum(frames.values()),
        "batched_seconds": times["batched"],
        "separate_seconds": times["separate"],
        "ratio": times["separate"] / times["batched"],
    }


def measure_memory(config: BenchmarkConfig) -> dict:
    """Autograd-held bytes and backward time, standard path against recompute."""
    dtype, device = config.torch_dtype(), config.torch_device()
    circuit = pauli(config.memory_qubits, config.layers)
    out: dict = {"dimension": circuit.dimension, "columns": config.memory_columns,
                 "layers": config.layers}
    values = 0.5 * torch.randn(circuit.num_parameters, dtype=dtype).to(device)
    modules = {}
    for recompute in (False, True):
        name = "recompute" if recompute else "standard"
        module = compile_circuit(circuit, config.memory_columns, method="columns", dtype=dtype,
                                 device=device, recompute_backward=recompute)
        modules[name] = module
        leaf = values.clone().requires_grad_(True)
        held, result = autograd_saved_bytes(module, leaf, exclude=list(module.buffers()))
        out[f"{name}_saved_bytes"] = held
        out["output_bytes"] = result.numel() * result.element_size()
        del result
    times = time_interleaved({name: forward_backward(m, values) for name, m in modules.items()},
                             max(3, config.repeats // 2))
    out["standard_seconds"] = times["standard"]
    out["recompute_seconds"] = times["recompute"]
    out["saved_ratio"] = out["standard_saved_bytes"] / max(out["recompute_saved_bytes"], 1)
    return out


# ---------------------------------------------------------------------------
# the whole benchmark


def run_benchmark(config: BenchmarkConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run everything ``config`` asks for; returns a JSON-ready report."""
    config.validate()
    note = progress or (lambda message: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, note)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: BenchmarkConfig, note: Callable[[str], None]) -> dict:
    torch.manual_seed(0)
    measurements: list[Measurement] = []
    trackers = {method: _SlowTracker() for method in SLOW_METHODS + FULL_MAPPINGS}
    stacked: list[Measurement] = []
    for dimension in sorted(config.sizes):
        circuit = benchmark_circuit(dimension, config.layers, config.construction)
        note(f"N = {dimension}: fast methods")
        times = time_interleaved(_fast_functions(circuit, config), config.repeats)
        measurements += [Measurement(m, dimension, t, note=_method_note(m, circuit, config))
                         for m, t in times.items()]
        if config.stacked and set(config.methods) & set(STACKED_METHODS):
            note(f"N = {dimension}: {config.stacked} stacked frames")
            times = time_interleaved(_fast_functions(circuit, config, config.stacked),
                                     config.repeats)
            stacked += [Measurement(m, dimension, t) for m, t in times.items()]
            reason = _unfit_note("mps", circuit, config.columns)
            if "mps" in config.methods and reason:
                stacked.append(Measurement("mps", dimension, None, "skipped", reason))
        for method in ("mps", "dense"):
            reason = _unfit_note(method, circuit, config.columns)
            if method in config.methods and reason:
                measurements.append(Measurement(method, dimension, None, "skipped", reason))
        for method in SLOW_METHODS + FULL_MAPPINGS:
            if method in config.methods:
                note(f"N = {dimension}: {method}")
                measurements.append(_slow_measurement(method, circuit, config,
                                                      trackers[method]))
    report: dict = {
        "config": {**asdict(config), "device": str(config.torch_device()),
                   "torch": torch.__version__,
                   "gpu": (torch.cuda.get_device_name(config.torch_device())
                           if config.torch_device().type == "cuda" else None),
                   "quantity": "seconds per forward+backward (median); qiskit: forward only"},
        "measurements": [asdict(m) for m in measurements],
    }
    report["ratios"] = _ratios(measurements)
    if stacked:
        report["stacked"] = {"frames": config.stacked,
                             "measurements": [asdict(m) for m in stacked],
                             "ratios": _ratios(stacked)}
    if config.batched:
        note("batched against separate calls")
        report["batched"] = measure_batched(config)
    note("memory of the recompute backward")
    report["memory"] = measure_memory(config)
    report["targets"] = _targets(report, config)
    return report


def _method_note(method: str, circuit: Circuit, config: BenchmarkConfig) -> str:
    """For the base row: the method qpeft.compile picks for this circuit."""
    if method != BASE:
        return ""
    picked = compile_circuit(circuit, config.columns, dtype=config.torch_dtype()).method
    return f"method {picked!r}"


def _ratios(measurements: list[Measurement]) -> dict[str, dict[str, float]]:
    """peer time / compiled time, per dimension and peer."""
    by_size: dict[int, dict[str, float]] = {}
    for m in measurements:
        if m.seconds is not None:
            by_size.setdefault(m.dimension, {})[m.method] = m.seconds
    out: dict[str, dict[str, float]] = {}
    for dimension, times in by_size.items():
        base = times.get(BASE)
        if base:
            out[str(dimension)] = {m: t / base for m, t in times.items() if m != BASE}
    return out


def _targets(report: dict, config: BenchmarkConfig) -> list[dict]:
    ratios = report["ratios"]
    at = "4096"
    where = f"N = 4096, K = {config.columns}, L = {config.layers}"

    def target(name: str, threshold: float, measured: float | None) -> dict:
        status = "not measured" if measured is None else (
            "PASS" if measured >= threshold else "FAIL")
        return {"name": name, "threshold": threshold, "measured": measured, "status": status}

    out = [
        target(f"compiled columns vs naive torch simulation ({where})", 3.0,
               ratios.get(at, {}).get("naive")),
        target(f"compiled columns vs Qiskit Operator ({where})", 5000.0,
               ratios.get(at, {}).get("qiskit")),
    ]
    # judged only on every mapping at every N >= 1024 asked for (a subset would claim "every")
    large = [(int(n), m, r) for n, peers in ratios.items() if int(n) >= 1024
             for m, r in peers.items() if m in MAPPINGS]
    asked = [n for n in config.sizes if n >= 1024]
    complete = bool(asked) and len(large) == len(asked) * len(MAPPINGS)
    worst = min((r for _, _, r in large), default=None) if complete else None
    out.append(target("compiled columns faster than every alternative mapping for N >= 1024 "
                      "(smallest ratio)", 1.0, worst))
    full = [r for n, peers in ratios.items() if int(n) >= 1024
            for m, r in peers.items() if m in FULL_MAPPINGS]
    if not set(FULL_MAPPINGS) <= set(config.methods):
        full = []  # both, or not measured
    out.append(target("compiled columns faster than the mappings that form the whole N x N "
                      "matrix, N >= 1024 (the paper's Fig. 6 setting; smallest ratio)", 1.0,
                      min(full, default=None)))
    batched = report.get("batched")
    at_setting = batched is not None and batched["total_frames"] == BATCHED_TARGET_FRAMES
    out.append(target(f"batched vs separate calls ({BATCHED_TARGET_FRAMES} BERT frames)", 5.0,
                      batched["ratio"] if at_setting else None))
    return out


# ---------------------------------------------------------------------------
# output


def _format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def render(report: dict, console=None) -> None:
    """Print the report as rich tables: times, ratios, the extra cases, the targets."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    config = report["config"]
    measured = report["measurements"]
    methods = [m for m in ALL_METHODS if any(x["method"] == m for x in measured)]
    sizes = sorted({x["dimension"] for x in measured})
    cells = {(x["method"], x["dimension"]): x for x in measured}
    times = Table(title=f"seconds per forward+backward (median of {config['repeats']} "
                  f"interleaved rounds), K = {config['columns']}, L = {config['layers']}, "
                  f"{config['dtype']}, {config['threads']} torch thread(s)"
                  + (f", torch methods on {config['gpu'] or config['device']}"
                     if config.get("device", "cpu") != "cpu" else "")
                  + (", torch methods under torch.compile" if config.get("torch_compile")
                     else ""))
    ratios = Table(title=f"ratio: method time / {BASE} time (> 1: {BASE} is faster)")
    for table in (times, ratios):
        table.add_column("N", justify="right")
    for method in methods:
        times.add_column(method, justify="right")
        if method != BASE:
            ratios.add_column(method, justify="right")
    notes: dict[str, str | dict[str, list[int]]] = {}
    for dimension in sizes:
        time_row, ratio_row = [str(dimension)], [str(dimension)]
        peers = report["ratios"].get(str(dimension), {})
        for method in methods:
            cell = cells.get((method, dimension))
            if cell is None:
                text = ""
            elif cell["seconds"] is None:
                text = cell["status"]
                key = f"{method} {cell['status']}"
                if method == "mps":  # outside the method at some sizes, not from one on
                    notes.setdefault(key, {}).setdefault(cell["note"], []).append(dimension)
                elif key not in notes:  # the first (smallest) N says why
                    where = f" from N = {dimension}" if cell["status"] == "skipped" else ""
                    notes[key] = f"{cell['note']}{where}"
            else:
                text = _format_seconds(cell["seconds"])
                if cell["note"]:
                    notes.setdefault(method, {}).setdefault(cell["note"], []).append(dimension)
            time_row.append(text)
            if method != BASE:
                ratio_row.append(f"{peers[method]:.3g}" if method in peers else text)
        times.add_row(*time_row)
        ratios.add_row(*ratio_row)
    console.print(times)
    if BASE in methods:
        console.print(ratios)
    else:
        console.print(f"  no ratio table: ratios are to {BASE}, which --methods leaves out")
    for key, text in notes.items():
        if isinstance(text, dict):  # notes with their sizes (a timed method's: if they differ)
            text = next(iter(text)) if len(text) == 1 and key in methods else "; ".join(
                f"{note} (N = {', '.join(map(str, sizes))})" for note, sizes in text.items())
        console.print(f"  {key}: {text}")
    if report.get("stacked"):
        console.print(_stacked_table(report["stacked"], Table))
        summary = stacked_summary(report["stacked"])
        if summary:
            console.print(f"  {summary}")
    batched = report.get("batched")
    if batched:
        console.print(
            f"\nbatched: {batched['total_frames']} frames {batched['frames']} (dimension: "
            f"count) — one call per dimension {_format_seconds(batched['batched_seconds'])}, "
            f"{batched['total_frames']} separate calls "
            f"{_format_seconds(batched['separate_seconds'])} (×{batched['ratio']:.3g})"
        )
    memory = report.get("memory")
    if memory:
        console.print(
            f"memory: N = {memory['dimension']}, K = {memory['columns']}, L = "
            f"{memory['layers']} — autograd holds {_format_bytes(memory['standard_saved_bytes'])} "
            f"(standard) against {_format_bytes(memory['recompute_saved_bytes'])} "
            f"(recompute_backward; the output alone is {_format_bytes(memory['output_bytes'])}); "
            f"forward+backward {_format_seconds(memory['standard_seconds'])} against "
            f"{_format_seconds(memory['recompute_seconds'])}"
        )
    targets = Table(title="targets")
    for column in ("target", "threshold", "measured", "status"):
        targets.add_column(column)
    for t in report["targets"]:
        value = "—" if t["measured"] is None else f"×{t['measured']:.3g}"
        style = {"PASS": "green", "FAIL": "red"}.get(t["status"], "yellow")
        targets.add_row(t["name"], f"≥ ×{t['threshold']:g}", value,
                        f"[{style}]{t['status']}[/{style}]")
    console.print(targets)


def _stacked_table(stacked: dict, table_class):
    """Seconds per forward+backward of the stacked frames, each with its ratio to compiled."""
    cells = {(m["method"], m["dimension"]): m for m in stacked["measurements"]}
    methods = [m for m in STACKED_METHODS if any(key[0] == m for key in cells)]
    table = table_class(title=f"{stacked['frames']} stacked frames per call: seconds per "
                              f"forward+backward (ratio: method time / {BASE} time)")
    table.add_column("N", justify="right")
    for method in methods:
        table.add_column(method, justify="right")
    for dimension in sorted({key[1] for key in cells}):
        ratios = stacked["ratios"].get(str(dimension), {})
        row = [str(dimension)]
        for method in methods:
            cell = cells.get((method, dimension))
            text = ("" if cell is None else cell["status"] if cell["seconds"] is None
                    else _format_seconds(cell["seconds"]))
            if method in ratios:
                text += f" ×{ratios[method]:.3g}"
            row.append(text)
        table.add_row(*row)
    return table


def stacked_summary(stacked: dict) -> str | None:
    """Where the stacked compiled frames are faster than every alternative mapping.

    >>> ratios = {"256": {"householder": 0.5}, "1024": {"householder": 1.3, "cayley": 1.1}}
    >>> print(stacked_summary({"frames": 8, "ratios": ratios}))  # doctest: +NORMALIZE_WHITESPACE
    stacked frames: compiled faster than cayley, householder (the mappings measured) from
    N = 1024 (smallest ratio ×1.1, cayley at N = 1024)
    """
    by_size = {int(n): {m: r for m, r in peers.items() if m in MAPPINGS}
               for n, peers in stacked["ratios"].items()}
    by_size = {n: peers for n, peers in by_size.items() if peers}
    if not by_size:
        return None
    compared = sorted(set().union(*by_size.values()), key=MAPPINGS.index)
    every = ("every alternative mapping" if len(compared) == len(MAPPINGS)
             else ", ".join(compared) + " (the mappings measured)")
    sizes = sorted(by_size)
    ahead = [n for i, n in enumerate(sizes)
             if all(min(by_size[m].values()) > 1 for m in sizes[i:])]
    if not ahead:
        return f"stacked frames: {BASE} is not faster than {every} at the largest N measured"
    start = ahead[0]
    ratio, method, where = min((r, m, n) for n in sizes if n >= start
                               for m, r in by_size[n].items())
    return (f"stacked frames: {BASE} faster than {every} from N = {start} "
            f"(smallest ratio ×{ratio:.3g}, {method} at N = {where})")


def plot(report: dict, filename: str | os.PathLike) -> Path:
    """Time against N on log axes, one line per method (Fig. 6 of the paper, with peers),
    written atomically (:func:`qpeft.draw.save`); returns the path written."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    from qpeft.draw import save

    figure = Figure(figsize=(8.5, 4.5))
    axes = figure.add_subplot()
    # qpeft.compile's default in black, the others in matplotlib's ten cycle colours and four more
    colours = iter([f"C{i}" for i in range(10)] + ["darkred", "navy", "darkgoldenrod", "teal"])
    for method in ALL_METHODS:
        points = sorted((x["dimension"], x["seconds"]) for x in report["measurements"]
                        if x["method"] == method and x["seconds"] is not None)
        colour = "black" if method == BASE else next(colours)
        if points:
            sizes, seconds = zip(*points)
            style = ("-o" if method in FAST_METHODS else "--s" if method in SLOW_METHODS
                     else ":^" if method in MAPPINGS else "-.v")
            axes.plot(sizes, seconds, style, label=method, markersize=4, color=colour)
    axes.set_xscale("log", base=2)
    measured = sorted({x["dimension"] for x in report["measurements"]})
    axes.set_xticks(measured, [str(n) for n in measured], fontsize=7)  # every N measured
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_yscale("log")
    axes.set_xlabel("N (rows of U)")
    axes.set_ylabel("seconds per forward+backward")
    config = report["config"]
    axes.set_title(f"N×{config['columns']} orthonormal frame, L = {config['layers']}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return save(figure, filename)


# ---------------------------------------------------------------------------
# command line


def _sizes(text: str) -> tuple[int, ...]:
    """The dimensions of ``--sizes``, each once, in the order given."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes comma-separated integers such as 256,384,4096, got {text!r}"
        ) from None
    return tuple(dict.fromkeys(sizes))


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}"
        )
    return methods


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unitary`` under ``qpeft bench``."""
    full, quick = BenchmarkConfig(), BenchmarkConfig.quick()
    parser = subparsers.add_parser(
        "unitary",
        help="time the compiler against Qiskit, PennyLane, a naive simulator and the "
             "alternative mappings",
        description="Time one forward+backward pass producing U = Q(θ)[:, :K] with the "
                    "compiler, a naive torch simulation, Qiskit, PennyLane and the alternative "
                    "mappings; print ratios and PASS/FAIL for the performance targets. "
                    "--quick changes only defaults (those named '… with --quick' below); "
                    "an option given explicitly wins.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="comma-separated dimensions N >= 2, a repeated one counted once "
                             "(default: 2^8 … 2^14, 384, 768, 3072; "
                             f"{','.join(map(str, quick.sizes))} with --quick)")
    parser.add_argument("--columns", type=int, default=None,
                        help=f"K, columns of U, 1 … N (default {full.columns}; "
                             f"{quick.columns} with --quick)")
    parser.add_argument("--layers", type=int, default=None,
                        help=f"ansatz layers L (default {full.layers}; {quick.layers} with "
                             "--quick)")
    parser.add_argument("--construction", choices=("qudit", "shannon"), default="qudit",
                        help="for_dimension method for N that are not powers of two")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds per method; the median is reported (default "
                             f"{full.repeats}; {quick.repeats} with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of every torch method")
    parser.add_argument("--device", default="cpu",
                        help="device of the torch methods: cpu, cuda, cuda:N or auto (CUDA "
                             "when present); Qiskit and PennyLane always run on the CPU")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every torch method, 1 … the CPUs of this "
                             "machine (default 1: on a machine shared with other jobs, "
                             "multi-threaded BLAS calls wait for a scheduler slice and the "
                             "timings become meaningless)")
    parser.add_argument("--methods", type=_methods, default=ALL_METHODS,
                        help=f"comma-separated subset of {','.join(ALL_METHODS)} (default: "
                             "all)")
    parser.add_argument("--slow-limit", type=float, default=None,
                        help="skip Qiskit, PennyLane and the full mappings where one run is "
                             "estimated to take longer "
                             f"(seconds > 0, default {full.slow_limit:g}; {quick.slow_limit:g} "
                             "with --quick)")
    parser.add_argument("--stacked", type=int, default=None,
                        help="frames per call in the stacked comparison of compiled and the "
                             f"alternative mappings; 0 leaves it out (default {full.stacked}; "
                             f"{quick.stacked} with --quick)")
    parser.add_argument("--no-batched", action="store_true",
                        help="skip the batched-against-separate BERT case")
    parser.add_argument("--torch-compile", action="store_true",
                        help="time the torch methods (compiler, naive simulation, mappings) "
                             "wrapped in torch.compile; compilation (10-20 s per method and "
                             "size) runs before timing and is not counted")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON on standard output (nothing else)")
    parser.add_argument("--plot", metavar="FILE",
                        help="save time against N (log axes) to FILE, a .png, .svg or .pdf "
                             "in a folder that exists (checked before the run)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny subset that runs in seconds: smaller defaults for the "
                             "options that name them, a 12-frame batched case (its target is "
                             "then not measured) and a small memory case")
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The configuration the options ask for: ``--quick`` starts from
    :meth:`BenchmarkConfig.quick`, and every option given explicitly wins."""
    config = BenchmarkConfig.quick() if args.quick else BenchmarkConfig()
    values = {"dtype": args.dtype, "methods": args.methods, "batched": not args.no_batched,
              "threads": args.threads, "construction": args.construction,
              "torch_compile": args.torch_compile, "device": args.device}
    for name in ("sizes", "columns", "layers", "repeats", "slow_limit", "stacked"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    config = replace(config, **values)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    """``qpeft bench unitary``."""
    from rich.console import Console

    from qpeft.bench.cli import measure_and_print

    config = config_from_args(args)
    plot_file = None if args.plot is None else image_path(args.plot, example="unitary.png")
    report = measure_and_print(run_benchmark, config, render, args.json)
    if plot_file is not None:
        written = plot(report, plot_file)
        if not args.json:
            Console().print(f"plot written to {written}")
    return 0
