"""The :class:`Circuit`: wires with dimensions and an ordered list of gates.

A circuit is plain data. It prints, compares, hashes and round-trips
through JSON; everything executable (the compiler's torch functions, the
Qiskit and PennyLane conversions, drawings) is derived from it.

>>> from qpeft.circuit import Circuit, ParameterVector
>>> theta = ParameterVector("theta", 2)
>>> c = Circuit(2).ry(0, theta[0]).ry(1, theta[1]).cz(0, 1)
>>> c.num_parameters, c.dimension, c.is_real
(2, 4, True)
>>> Circuit.from_json(c.to_json()) == c
True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from qpeft.circuit import gates as g
from qpeft.circuit.parameters import (
    Expression,
    ExpressionLike,
    Parameter,
    real_number,
    real_values,
)
from qpeft.errors import DescriptionError, ParameterError, WireError

FORMAT = "qpeft.circuit"
#: The newest description version: 2 adds Givens gates on several level
#: pairs, 3 a ``parameters`` list for an order that is not the order of
#: first appearance (as :meth:`Circuit.inverse` makes). A description is
#: written with the oldest version that holds it, so circuits without such
#: gates or order still load in releases that read version 1.
FORMAT_VERSION = 3
#: The keys of a circuit description (see :meth:`Circuit.to_dict`).
_DESCRIPTION_KEYS = frozenset({"format", "version", "dims", "gates", "parameters", "name"})
#: The largest dimension of one wire.
MAX_WIRE_DIMENSION = 2**31 - 1


def _description_version(gates: Sequence[g.Gate], ordered: bool) -> int:
    def multi_pair(gate: g.Gate) -> bool:
        if isinstance(gate, g.Controlled):
            return multi_pair(gate.base)
        return isinstance(gate, g.Givens) and len(gate.levels) > 2

    if ordered:
        return 3
    return 2 if any(multi_pair(gate) for gate in gates) else 1


class Circuit:
    """Gates acting on wires of given dimensions (2 = qubit, d = qudit).

    ``Circuit(3)`` is three qubits; ``Circuit([3, 2, 2])`` a qutrit and two
    qubits (wire 0 is the most significant digit of the basis index).
    """

    def __init__(self, wires: int | Sequence[int] = 1, *, name: str = "") -> None:
        if g.is_integer(wires):
            if wires < 1:
                raise WireError(f"a circuit needs at least one wire, got {wires}")
            dims = (2,) * int(wires)
        else:
            if isinstance(wires, (str, bytes)) or not isinstance(wires, Iterable):
                raise WireError(
                    f"Circuit takes a number of qubits or a list of wire dimensions, got "
                    f"{wires!r}; e.g. Circuit(3) or Circuit([3, 2, 2])"
                )
            dims = g.integers(wires, "wire dimensions")
            if not dims:
                raise WireError("a circuit needs at least one wire")
        if any(d < 2 for d in dims):
            raise WireError(f"every wire needs dimension >= 2, got {dims}")
        if max(dims) > MAX_WIRE_DIMENSION:
            raise WireError(
                f"a wire's dimension must be at most {MAX_WIRE_DIMENSION} (2³¹ − 1, what an "
                f"index of its levels can hold), got one of about 2^{max(dims).bit_length() - 1}"
            )
        self._dims = dims
        self._gates: list[g.Gate] = []
        #: the parameter order when it is not the order of first appearance
        #: (kept by inverse(), compose(), rename(), bind() and JSON)
        self._order: tuple[str, ...] | None = None
        self.name = name

    @property
    def name(self) -> str:
        """A label for drawings and reprs (not part of equality)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise DescriptionError(f"a circuit's name must be a string, got {value!r:.60}")
        self._name = value

    # -- structure ------------------------------------------------------------
    @property
    def dims(self) -> tuple[int, ...]:
        """The dimension of each wire."""
        return self._dims

    @property
    def num_wires(self) -> int:
        return len(self._dims)

    @property
    def dimension(self) -> int:
        """N, the size of the unitary: the product of the wire dimensions."""
        return math.prod(self._dims)

    @property
    def gates(self) -> tuple[g.Gate, ...]:
        return tuple(self._gates)

    def __len__(self) -> int:
        return len(self._gates)

    def wire_dims(self, wires: Iterable[int]) -> tuple[int, ...]:
        return tuple(self._dims[w] for w in wires)

    @property
    def parameters(self) -> tuple[str, ...]:
        """Free parameter names, in the order a sequence of values is read.

        That is the order of first appearance, unless the circuit came from
        one whose order it keeps: :meth:`inverse` reverses the gates but keeps
        the order, :meth:`compose` puts this circuit's parameters before the
        other's new ones, and :meth:`rename` and :meth:`bind` keep the order
        of the names that remain.

        >>> c = Circuit(1).ry(0, "a").rx(0, "b")
        >>> c.inverse().parameters
        ('a', 'b')
        """
        present = self._appearance()
        if self._order is None:
            return present
        used = set(present)
        kept = [name for name in self._order if name in used]
        known = set(kept)
        return tuple(kept) + tuple(name for name in present if name not in known)

    def _appearance(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for gate in self._gates:
            for expr in gate.params:
                for name in expr.parameters:
                    seen.setdefault(name, None)
        return tuple(seen)

    def reorder(self, names: Sequence[str]) -> Circuit:
        """The same circuit with its parameters read in the order ``names``,
        which must list every parameter once.

        >>> Circuit(1).ry(0, "a").rx(0, "b").reorder(["b", "a"]).parameters
        ('b', 'a')
        """
        present = self._appearance()
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not all(
                isinstance(n, str) for n in names) or sorted(names) != sorted(present):
            raise ParameterError(
                "a parameter order must list every parameter of the circuit once, by name; "
                f"the circuit has {list(present)!r:.200}, got {names!r:.200}"
            )
        return self.copy()._ordered(names)

    def _ordered(self, names: Iterable[str]) -> Circuit:
        """Set the parameter order to ``names`` (deduplicated; names no gate
        uses are dropped) and return the circuit."""
        present = self._appearance()
        used = set(present)
        order = [name for name in dict.fromkeys(names) if name in used]
        listed = set(order)
        order += [name for name in present if name not in listed]
        self._order = None if tuple(order) == present else tuple(order)
        return self

    def __setstate__(self, state: dict) -> None:
        # a circuit pickled before the name became a checked property and the
        # parameter order an attribute
        state = dict(state)
        if "name" in state:
            state["_name"] = state.pop("name")
        state.setdefault("_name", "")
        state.setdefault("_order", None)
        self.__dict__.update(state)

    @property
    def num_parameters(self) -> int:
        return len(self.parameters)

    @property
    def is_real(self) -> bool:
        """True when every gate is real, so the circuit compiles to a real dtype."""
        return all(gate.is_real for gate in self._gates)

    def depth(self) -> int:
        """Number of layers when each gate starts after the last gate on its wires."""
        level = [0] * self.num_wires
        for gate in self._gates:
            if gate.is_identity:
                continue
            top = max(level[w] for w in gate.wires) + 1
            for w in gate.wires:
                level[w] = top
        return max(level, default=0)

    # -- building -------------------------------------------------------------
    def append(self, gate: g.Gate) -> Circuit:
        """Add a gate (checked against the wires) and return the circuit."""
        if not isinstance(gate, g.Gate):
            raise WireError(f"only gates can be appended, got {type(gate).__name__}")
        wires = gate.wires
        for w in wires:
            if not 0 <= w < self.num_wires:
                raise WireError(
                    f"{gate.name} names wire {w} but the circuit has wires 0..{self.num_wires - 1}"
                )
        if len(set(wires)) != len(wires):
            raise WireError(f"{gate.name} names the same wire twice: {wires}")
        expected = g.expected_params(gate)
        if len(gate.params) != expected:
            raise ParameterError(f"{gate.name} takes {expected} angle(s), got {len(gate.params)}")
        gate.check(self.wire_dims(wires))
        self._gates.append(gate)
        return self

    def extend(self, gates: Iterable[g.Gate]) -> Circuit:
        for gate in gates:
            self.append(gate)
        return self

    def ry(self, wire: int, theta: ExpressionLike) -> Circuit:
        return self.append(g.RY(wire, theta))

    def rx(self, wire: int, theta: ExpressionLike) -> Circuit:
        return self.append(g.RX(wire, theta))

    def rz(self, wire: int, theta: ExpressionLike) -> Circuit:
        return self.append(g.RZ(wire, theta))

    def pauli_rotation(self, pauli: str, wires: Sequence[int], theta: ExpressionLike) -> Circuit:
        return self.append(g.pauli_rotation(pauli, wires, theta))

    def givens(self, wire: int, levels: Sequence[int], theta: ExpressionLike) -> Circuit:
        return self.append(g.givens(wire, levels, theta))

    def h(self, wire: int) -> Circuit:
        return self.append(g.H(wire))

    def x(self, wire: int) -> Circuit:
        return self.append(g.X(wire))

    def y(self, wire: int) -> Circuit:
        return self.append(g.Y(wire))

    def z(self, wire: int) -> Circuit:
        return self.append(g.Z(wire))

    def cz(self, a: int, b: int) -> Circuit:
        return self.append(g.CZ(a, b))

    def cx(self, control: int, target: int) -> Circuit:
        return self.append(g.CX(control, target))

    def swap(self, a: int, b: int) -> Circuit:
        return self.append(g.SWAP(a, b))

    def gcz(self, a: int, b: int) -> Circuit:
        """Generalized CZ ``(-1)^(j·k)`` on two wires of any dimensions."""
        return self.append(g.GeneralizedCZ(a, b))

    def unitary(self, matrix, wires: Sequence[int] | int) -> Circuit:
        return self.append(g.unitary(matrix, wires))

    def barrier(self, text: str = "") -> Circuit:
        """Mark a layer boundary (drawn; no effect on the matrix)."""
        return self.append(g.Barrier(tuple(range(self.num_wires)), text))

    def controlled(
        self, gate: g.Gate, controls: Sequence[int] | int, control_values=None
    ) -> Circuit:
        return self.append(g.controlled(gate, controls, control_values))

    # -- transformations ------------------------------------------------------
    def copy(self) -> Circuit:
        out = Circuit(self._dims, name=self.name)
        out._gates = list(self._gates)
        out._order = self._order
        return out

    def compose(self, other: Circuit, wires: Sequence[int] | None = None) -> Circuit:
        """A new circuit: this one followed by ``other`` (on ``wires`` of this one).

        Parameters are identified by name: a name both circuits use becomes
        one shared angle (``a + a`` has the parameters of ``a``). For
        independent angles rename first (:meth:`rename`) or use
        :meth:`repeat`, which suffixes each copy's names.
        The result reads this circuit's parameters first, then the other's
        new ones, each in its own :attr:`parameters` order.

        >>> a = Circuit(1).ry(0, "t")
        >>> (a + a).parameters, a.repeat(2).parameters
        (('t',), ('t_0', 't_1'))
        """
        if not isinstance(other, Circuit):
            raise WireError(
                f"compose takes another Circuit, got {type(other).__name__}; build the gates "
                "into a Circuit of their own first"
            )
        mapping = list(range(other.num_wires)) if wires is None else list(
            g.integers(wires, "compose wires")
        )
        if len(mapping) != other.num_wires:
            raise WireError(
                f"compose needs {other.num_wires} target wires for the other circuit, "
                f"got {len(mapping)}"
            )
        if len(set(mapping)) != len(mapping):
            raise WireError(
                f"compose wires {mapping} name a wire twice; each wire of the other circuit "
                "needs its own wire of this one"
            )
        for own, theirs in enumerate(mapping):
            if not 0 <= theirs < self.num_wires or self._dims[theirs] != other.dims[own]:
                raise WireError(
                    f"wire {own} of the other circuit (dimension {other.dims[own]}) cannot go on "
                    f"wire {theirs} of this one (dims {self._dims})"
                )
        out = self.copy()
        for gate in other.gates:
            out.append(gate.with_wires([mapping[w] for w in gate.wires]))
        return out._ordered(self.parameters + other.parameters)

    def __add__(self, other: Circuit) -> Circuit:
        return self.compose(other)

    def repeat(self, count: int, *, share_parameters: bool = False) -> Circuit:
        """The circuit ``count`` times in a row. Unless ``share_parameters``,
        each repetition ``r`` gets its own copies of the parameters, named
        ``name_r`` (``w[3]`` becomes ``w_r[3]``)."""
        if not g.is_integer(count) or count < 0:
            raise WireError(f"repeat count must be an integer >= 0, got {count!r}")
        out = Circuit(self._dims, name=self.name)
        order: list[str] = []
        for r in range(count):
            block = self if share_parameters else self.rename(
                {p: _suffixed(p, r) for p in self.parameters}
            )
            out._gates.extend(block.gates)
            order.extend(block.parameters)
        return out._ordered(order)

    def inverse(self) -> Circuit:
        """The circuit whose matrix is the adjoint of this one's."""
        out = Circuit(self._dims, name=f"{self.name}†" if self.name else "")
        out._gates = [gate.inverse() for gate in reversed(self._gates)]
        return out._ordered(self.parameters)

    def rename(self, mapping: Mapping[str | Parameter, str | Parameter], *,
               merge: bool = False) -> Circuit:
        """Rename parameters (names not in ``mapping`` stay). Keys and values are
        names or :class:`Parameter` objects; a key the circuit does not have
        raises :class:`~qpeft.errors.ParameterError`.

        Renaming onto a name another parameter keeps, or two names onto one,
        would make independent angles one; that raises
        :class:`~qpeft.errors.ParameterError` unless ``merge=True`` asks for
        the shared parameter on purpose. Swaps and chains are fine.

        >>> c = Circuit(2).ry(0, "a").ry(1, "b")
        >>> c.rename({"a": "b", "b": "a"}).parameters
        ('b', 'a')
        >>> c.rename({"a": "b"}, merge=True).parameters
        ('b',)
        """
        mapping = self._renames(mapping)
        if not merge:
            merged = _merged_names(self.parameters, mapping)
            if merged:
                described = "; ".join(
                    f"{', '.join(olds)} -> {new}" for new, olds in merged.items()
                )
                raise ParameterError(
                    f"rename would merge independent parameters into one ({described}); "
                    "pick new names the circuit does not use, or pass merge=True to share "
                    "one angle on purpose"
                )
        out = Circuit(self._dims, name=self.name)
        out._gates = [
            gate.with_params([p.rename(mapping) for p in gate.params]) if gate.params else gate
            for gate in self._gates
        ]
        return out._ordered(mapping.get(name, name) for name in self.parameters)

    def _renames(self, mapping: object) -> dict[str, str]:
        """``mapping`` as ``{old name: new name}``: keys and values may be names or
        :class:`Parameter` objects; every key must be a parameter of the circuit."""
        if not isinstance(mapping, Mapping):
            raise ParameterError(
                f"rename takes a mapping from old to new names, got {type(mapping).__name__}"
            )
        renames = {}
        for old, new in mapping.items():
            old = old.name if isinstance(old, Parameter) else old
            new = new.name if isinstance(new, Parameter) else new
            renames[old] = Parameter(new).name  # validates the new name
        unknown = [old for old in renames if old not in self.parameters]
        if unknown:
            raise ParameterError(
                f"rename: unknown parameter(s) {', '.join(map(repr, unknown))}; the circuit has "
                f"{', '.join(self.parameters) or 'no parameters'}"
            )
        return renames

    def bind(self, values: Mapping[str, float] | Sequence[float]) -> Circuit:
        """Substitute values for parameters. A mapping (keyed by names or by
        :class:`Parameter` objects) may bind some of them; a sequence must give
        every parameter, in :attr:`parameters` order."""
        bindings = self._bindings(values, partial=isinstance(values, Mapping))
        out = Circuit(self._dims, name=self.name)
        out._gates = [
            gate.with_params([p.bind(bindings) for p in gate.params]) if gate.params else gate
            for gate in self._gates
        ]
        return out._ordered(self.parameters)

    def _bindings(self, values, partial: bool) -> dict[str, float]:
        names = self.parameters
        if isinstance(values, Mapping):
            # keys are names or the Parameter objects the circuit was built with
            values = {k.name if isinstance(k, Parameter) else k: v for k, v in values.items()}
            unknown = [k for k in values if k not in names]
            if unknown:
                raise ParameterError(
                    f"unknown parameter(s) {', '.join(map(str, unknown))}; the circuit has "
                    f"{', '.join(names) or 'no parameters'}"
                )
            bindings = {str(k): real_number(v, f"value of {k}") for k, v in values.items()}
        else:
            flat = real_values(values)
            if flat.shape[0] != len(names):
                raise ParameterError(
                    f"expected {len(names)} values (one per circuit.parameters entry), "
                    f"got {flat.shape[0]}"
                )
            bindings = {n: real_number(v, f"value of {n}") for n, v in zip(names, flat)}
        if not partial:
            missing = [n for n in names if n not in bindings]
            if missing:
                raise ParameterError(f"no value for parameter(s) {', '.join(missing)}")
        return bindings

    # -- reference matrix -----------------------------------------------------
    def matrix(
        self,
        values: Mapping[str, float] | Sequence[float] | torch.Tensor | None = None,
        *,
        backend: str = "numpy",
    ):
        """The full N×N matrix, built the slow, obvious way: each gate is
        expanded to the whole register and multiplied in. Float64 (or
        complex128); the ground truth every fast path is tested against.

        ``values`` are the free parameters (mapping or sequence in
        :attr:`parameters` order); ``backend="torch"`` returns a tensor that
        is differentiable with respect to a tensor ``values``.
        """
        from qpeft.circuit.reference import reference_matrix

        return reference_matrix(self, values, backend=backend)

    # -- data -----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "format": FORMAT,
            "version": _description_version(self._gates, self._order is not None),
            "dims": list(self._dims),
            "gates": [gate.to_json() for gate in self._gates],
        }
        if self._order is not None:
            data["parameters"] = list(self.parameters)
        if self.name:
            data["name"] = self.name
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> Circuit:
        if not isinstance(data, Mapping):
            raise DescriptionError(
                f"a circuit description is a JSON object, got {type(data).__name__}"
            )
        if data.get("format") != FORMAT:
            raise DescriptionError(
                f"not a qpeft circuit description (format {data.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        unknown = sorted(map(str, set(data) - _DESCRIPTION_KEYS))
        if unknown:
            raise DescriptionError(
                f"a circuit description has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(sorted(_DESCRIPTION_KEYS))}"
            )
        version = data.get("version")
        if not g.is_integer(version) or version < 1:
            raise DescriptionError(
                f"circuit description version must be a positive integer, got {version!r}"
            )
        if version > FORMAT_VERSION:
            raise DescriptionError(
                f"circuit description version {version!r} is newer than this qpeft understands "
                f"({FORMAT_VERSION}); upgrade qpeft"
            )
        try:
            dims = g.integers(data["dims"], "dims", DescriptionError)
            name = data.get("name", "")
            if not isinstance(name, str):
                raise DescriptionError(f"'name' must be a string, got {name!r:.60}")
            circuit = cls(dims, name=name)
            gate_list = data["gates"]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DescriptionError):
                raise
            raise DescriptionError(f"malformed circuit description: {exc}") from exc
        if not isinstance(gate_list, list):
            raise DescriptionError("'gates' must be a list of gate descriptions")
        for item in gate_list:
            try:
                gate = g.gate_from_json(item)
            except RecursionError:
                raise DescriptionError(
                    "a gate description is nested too deeply to read; controlled gates nest "
                    "only a few levels in any real circuit"
                ) from None
            circuit.append(gate)
        if "parameters" in data:
            if not isinstance(data["parameters"], list):
                raise DescriptionError("'parameters' must be a list of names")
            try:
                return circuit.reorder(data["parameters"])
            except ParameterError as exc:
                raise DescriptionError(f"'parameters' does not fit the gates: {exc}") from None
        return circuit

    @classmethod
    def from_json(cls, text: str) -> Circuit:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:  # JSONDecodeError, an integer over the digit limit
            raise DescriptionError(f"circuit description is not valid JSON: {exc}") from exc
        except RecursionError:
            raise DescriptionError(
                "circuit description is not valid: its JSON is nested too deeply to read"
            ) from None
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON (name excluded): equal circuits, equal prints."""
        data = self.to_dict()
        data.pop("name", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return (self._dims == other._dims and self._gates == other._gates
                and self.parameters == other.parameters)

    def __hash__(self) -> int:
        return hash((self._dims, tuple(self._gates)))

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (
            f"<Circuit{label} dims={self._dims} dimension={self.dimension} "
            f"gates={len(self._gates)} parameters={self.num_parameters}>"
        )

    def __str__(self) -> str:
        lines = [repr(self)]
        for gate in self._gates:
            wires = ",".join(str(w) for w in gate.wires)
            lines.append(f"  {gate.label:<28} @ {wires}")
        return "\n".join(lines)

    def to_qiskit(self):
        """This circuit as a Qiskit ``QuantumCircuit`` (qubit circuits)."""
        from qpeft.interop.qiskit import to_qiskit

        return to_qiskit(self)

    def to_pennylane(self):
        """A function applying this circuit's gates with PennyLane operations."""
        from qpeft.interop.pennylane import to_pennylane

        return to_pennylane(self)

    def to_qasm(self, version: int = 3) -> str:
        """OpenQASM text of this circuit (through Qiskit)."""
        from qpeft.interop.qasm import to_qasm

        return to_qasm(self, version=version)

    def draw(self, output: str = "text", **options):
        """A diagram: text (``output="text"``) or a matplotlib Figure (``"mpl"``)."""
        from qpeft.draw import draw

        return draw(self, output=output, **options)


def _merged_names(names: Sequence[str], mapping: Mapping[str, str]) -> dict[str, list[str]]:
    """The new names that two or more of ``names`` would end up sharing."""
    sources: dict[str, list[str]] = {}
    for name in names:
        sources.setdefault(mapping.get(name, name), []).append(name)
    return {new: olds for new, olds in sources.items() if len(olds) > 1}


def _suffixed(name: str, r: int) -> str:
    match = re.match(r"^(.*?)(\[[0-9]+\])?$", name)
    assert match is not None
    return f"{match.group(1)}_{r}{match.group(2) or ''}"


def gate_angles(gate: g.Gate, bindings: Mapping[str, float]) -> list[float]:
    """The numeric angles of a gate under full bindings."""
    return [expr.evaluate(bindings) for expr in gate.params]


__all__ = ["Circuit", "Expression", "FORMAT", "FORMAT_VERSION", "gate_angles"]
