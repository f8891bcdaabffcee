"""OpenQASM out and in, through Qiskit: :func:`to_qasm` and :func:`from_qasm`.

Export lowers the circuit with ``qiskit.transpile(optimization_level=0,
qubits_initially_zero=False)`` (the whole unitary, not only its action on |0…0⟩)
to standard gates every reader of that version knows: those of OpenQASM 3's
``stdgates.inc`` (:data:`QASM_GATES`), or for OpenQASM 2 those of the
original ``qelib1.inc`` (:data:`QASM2_GATES`; Qiskit's copy of that file
adds ``p``, ``swap``, ``crx``, ``cry``, ``cswap`` and more, which other
readers lack). Multi-qubit Pauli rotations, sign diagonals and fixed
unitaries come out as standard gates. A global phase, which OpenQASM 2
cannot state and Qiskit's OpenQASM 3 exporter drops, is written as
``p(φ) q[0]; x q[0]; p(φ) q[0]; x q[0];`` (that product is ``e^{iφ}·I``;
``u1`` in place of ``p`` in OpenQASM 2). Angles are written exactly (never
rounded to a multiple of pi), and integral numbers of 19 digits or more as
float literals, which Qiskit's OpenQASM 3 reader takes back. The round trip
keeps the matrix, not the gate list.

OpenQASM 3 keeps symbolic angles (``input float[64] …;``). A parameter name
that is not an OpenQASM identifier is written with ``_`` for each other
character (``theta[3]`` as ``theta_3_``), one that is a keyword or a
built-in name (``true``, ``input``, ``pi``, a gate name) with a ``_``
appended, each with a numeric suffix where that name is taken. A comment
line after the header,
``// qpeft parameters: {"a": "a", "theta_3_": "theta[3]"}``, lists every
input with its qpeft name in the circuit's parameter order, so that
:func:`from_qasm` restores the names and the order exactly (the lowering
may reorder gates on different wires, and with them the order of first
appearance). A file without that line (written by Qiskit
itself) gets Qiskit's escapes undone instead: ``_theta_3_`` becomes
``theta[3]`` where that name is free.
Reading OpenQASM 3 needs the optional package ``qiskit-qasm3-import``;
OpenQASM 2 (``version=2``) needs nothing extra but only holds numbers.

>>> from qpeft.circuit import Circuit
>>> print(to_qasm(Circuit(2).ry(0, 0.5).cz(0, 1), version=2))
OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
ry(0.5) q[0];
cz q[0],q[1];
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

from qpeft.circuit import Circuit
from qpeft.circuit.gates import is_integer
from qpeft.errors import InteropError, QpeftError
from qpeft.interop.common import require_qubits
from qpeft.interop.qiskit import from_qiskit, to_qiskit

#: the gates an exported OpenQASM 3 program uses (all in ``stdgates.inc``)
QASM_GATES = ("rx", "ry", "rz", "h", "x", "y", "z", "cx", "cz", "swap", "p",
              "crx", "cry", "crz", "cy", "ch", "ccx", "cswap")
#: the gates an exported OpenQASM 2 program uses (all in the original
#: ``qelib1.inc`` of the OpenQASM 2 paper, arXiv:1707.03429)
QASM2_GATES = ("rx", "ry", "rz", "h", "x", "y", "z", "cx", "cz", "u1",
               "crz", "cy", "ch", "ccx")
#: the versions :func:`to_qasm` writes
QASM_VERSIONS = (2, 3)
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_HEADER = re.compile(r"\s*OPENQASM\s+([0-9]+)(?:\.[0-9]+)?\s*;")
_INCLUDE = re.compile(r'\binclude\s+"([^"]*)"')
#: the only files a program may include: the standard gate libraries, which the
#: readers know without opening a file
STANDARD_INCLUDES = {2: "qelib1.inc", 3: "stdgates.inc"}
_ESCAPED_ELEMENT = re.compile(r"^_([A-Za-z_][A-Za-z0-9_]*)_([0-9]+)_$")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: an integer literal of 19 digits or more: Qiskit writes an integral coefficient
#: or constant of a symbolic angle (1e20) with all its digits, and its OpenQASM 3
#: importer cannot read one beyond 64-bit integers back; written as a float instead
_BIG_INTEGER = re.compile(r"(?<![\w.])[0-9]{19,}(?![\w.])")
#: OpenQASM 3 keywords, literals and built-in names a parameter cannot take
#: (the specification's reserved words; Qiskit's exporter renames only some)
RESERVED = frozenset("""
OPENQASM include defcalgrammar def cal defcal gate extern box let break continue if else end
return for while in switch case default nop input output const readonly mutable qreg qubit
creg bool bit int uint float angle complex array void duration stretch gphase inv pow ctrl
negctrl dim durationof delay reset measure barrier true false im pi tau euler U CX sizeof pragma
arccos arcsin arctan ceiling cos exp floor log mod popcount rotl rotr sin sqrt tan real imag
""".split())
#: the comment line that carries the qpeft names of renamed parameters
NAMES_COMMENT = "// qpeft parameters: "
_INSTALL = (
    "reading OpenQASM 3 needs the package qiskit-qasm3-import: "
    "pip install qiskit-qasm3-import (or pip install 'qiskit[qasm3-import]'); "
    "OpenQASM 2 (to_qasm(circuit, version=2)) needs nothing extra"
)


def _lowered(circuit: Circuit, gates: tuple[str, ...]):
    """The circuit as a Qiskit circuit of ``gates`` only, its global phase
    written as gates (with ``p``, or ``u1`` where ``p`` is not among them)."""
    from qiskit import transpile
    from qiskit.circuit.library import PhaseGate, U1Gate

    # qubits_initially_zero=False: the lowering must keep the whole unitary, so a
    # multi-controlled gate may not borrow a wire that is idle up to it as a |0>
    # scratch qubit (exact for the state from |0…0>, wrong for the matrix)
    qc = transpile(to_qiskit(circuit), basis_gates=list(gates), optimization_level=0,
                   qubits_initially_zero=False)
    phase = qc.global_phase
    numeric = not getattr(phase, "parameters", None)
    if not numeric or abs(math.remainder(float(phase), 2 * math.pi)) > 1e-14:
        qc.global_phase = 0.0
        phase_gate = PhaseGate if "p" in gates else U1Gate
        for _ in range(2):
            qc.append(phase_gate(phase), [0])
            qc.x(0)
    return qc


def to_qasm(circuit: Circuit, version: int = 3) -> str:
    """The circuit as an OpenQASM program (qubit circuits only).

    ``version=3`` (default) keeps free parameters as ``input float[64]``
    declarations; ``version=2`` needs every parameter bound
    (``circuit.bind(values)``) and writes only gates of the original
    ``qelib1.inc``, so any OpenQASM 2 reader takes it. Any other
    ``version`` raises :class:`InteropError` before the circuit is touched.

    >>> from qpeft.ansatz import pauli
    >>> text = to_qasm(pauli(qubits=2, layers=1))
    >>> text.splitlines()[0], text.count("ry(")
    ('OPENQASM 3.0;', 4)
    """
    if not is_integer(version) or version not in QASM_VERSIONS:
        raise InteropError(
            f"unknown OpenQASM version {version!r}; use 2 or 3, the versions to_qasm writes"
        )
    require_qubits(circuit, "to_qasm")
    if version == 2 and circuit.parameters:
        raise InteropError(
            f"OpenQASM 2 holds no free parameters, and this circuit has "
            f"{circuit.num_parameters}; bind them first (to_qasm(circuit.bind(values), "
            "version=2)) or write OpenQASM 3"
        )
    if version == 3:
        from qiskit import qasm3

        names = _identifiers(circuit.parameters)
        for _ in range(len(names) + 1):
            renamed = {new: old for old, new in names.items() if new != old}
            # disable_constants: every angle exactly as its float, never rounded to a
            # multiple of pi (or to 0) by Qiskit's pi_check
            text = qasm3.dumps(_lowered(circuit.rename(names) if renamed else circuit,
                                        QASM_GATES), disable_constants=True)
            declared = set(re.findall(r"^input float\[64\] (\S+);$", text, re.M))
            # Qiskit renames inputs that clash with a keyword or a gate name (pi, gate,
            # h, …): pick another identifier for those and write the program again
            clashing = [old for old, new in names.items() if new not in declared]
            if not clashing:
                break
            taken = set(names.values()) | declared
            for old in clashing:
                names[old] = _free(f"{names[old]}_", taken)
        else:  # pragma: no cover - every pass renames at least one clashing input
            raise InteropError("could not give every parameter an OpenQASM 3 input name")
        text = _BIG_INTEGER.sub(_as_float, text)
        if names:
            header, _, rest = text.partition("\n")
            recorded = {new: old for old, new in names.items()}
            text = f"{header}\n{NAMES_COMMENT}{json.dumps(recorded)}\n{rest}"
        return text
    from qiskit import qasm2

    return qasm2.dumps(_lowered(circuit, QASM2_GATES))


def _as_float(match: re.Match) -> str:
    """An integer literal as the float literal of the same value (``1e+20``)."""
    return repr(float(match.group(0)))


def _identifiers(names: tuple[str, ...]) -> dict[str, str]:
    """Each parameter name as an OpenQASM identifier: names that are one stay,
    the others get ``_`` for each other character and, where that is taken, the
    smallest free suffix ``_1``, ``_2``, …"""
    def usable(name: str) -> bool:
        return bool(_IDENTIFIER.fullmatch(name)) and name not in RESERVED

    taken = set(filter(usable, names)) | RESERVED
    out = {}
    for name in names:
        if usable(name):
            out[name] = name
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)
        if not _IDENTIFIER.fullmatch(base):
            base = f"_{base}"
        out[name] = _free(f"{base}_" if base in RESERVED else base, taken)
    return out


def _free(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, … : the first one not in ``taken``
    (which it joins)."""
    chosen, suffix = base, 1
    while chosen in taken:
        chosen, suffix = f"{base}_{suffix}", suffix + 1
    taken.add(chosen)
    return chosen


def qasm3_import_available() -> bool:
    """True when ``qiskit-qasm3-import`` (needed to read OpenQASM 3) is installed."""
    import importlib.util

    return importlib.util.find_spec("qiskit_qasm3_import") is not None


def from_qasm(text: str) -> Circuit:
    """A qpeft circuit from an OpenQASM 2 or 3 program (read by its header).

    The program may include only its version's standard gate library
    (:data:`STANDARD_INCLUDES`): it never makes this function open a file.

    Parameter names come back from the ``// qpeft parameters:`` line that
    :func:`to_qasm` writes; in a file without it, names Qiskit escaped on
    export (``_theta_3_``) get their vector names back (``theta[3]``) where
    those are free. Raises :class:`InteropError` with the install command when
    OpenQASM 3 support is missing.

    >>> from qpeft.circuit import Circuit
    >>> circuit = Circuit(2).h(0).cx(0, 1)
    >>> from_qasm(to_qasm(circuit, version=2)) == circuit
    True
    """
    if not isinstance(text, str):
        raise InteropError(f"from_qasm takes the program text, got {type(text).__name__}")
    code = _COMMENTS.sub(" ", text)
    header = _HEADER.match(code)
    if header is None:
        raise InteropError("the program does not start with an 'OPENQASM <version>;' header "
                           "(comments may come before it); is this an OpenQASM program?")
    version = int(header.group(1))
    if version not in QASM_VERSIONS:
        raise InteropError(f"unknown OpenQASM version {version}; qpeft reads 2 and 3")
    for name in _INCLUDE.findall(code):
        if name != STANDARD_INCLUDES[version]:
            raise InteropError(
                f"the program includes {name!r}; from_qasm reads no other file than the "
                f"standard {STANDARD_INCLUDES[version]!r}: paste the included definitions "
                "into the program"
            )
    if version == 2:
        from qiskit import qasm2

        try:
            qc = qasm2.loads(text, include_path=(),
                             custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
        except qasm2.QASM2ParseError as exc:
            raise InteropError(f"invalid OpenQASM 2 program: {exc}") from exc
        return from_qiskit(qc)
    if not qasm3_import_available():
        raise InteropError(_INSTALL)
    from openqasm3.parser import QASM3ParsingError
    from qiskit import qasm3
    from qiskit.circuit.exceptions import CircuitError

    try:
        # the parser reports syntax errors on stderr as well as raising them
        with contextlib.redirect_stderr(io.StringIO()):
            qc = qasm3.loads(text)
    except (qasm3.QASM3ImporterError, QASM3ParsingError) as exc:
        raise InteropError(f"invalid OpenQASM 3 program: {_described(exc)}") from exc
    except RecursionError:
        raise InteropError("the OpenQASM 3 program nests too deeply to read (parentheses, "
                           "signs or blocks); write it with less nesting") from None
    except (ArithmeticError, AttributeError, CircuitError, IndexError, KeyError, TypeError,
            ValueError) as exc:
        # faults the importer does not check itself (a qubit index out of range, a
        # gate given too few qubits, a loop over qubits, a division by zero, a
        # constant used as a gate) surface from its evaluator or Qiskit's circuit builder
        raise InteropError(f"invalid OpenQASM 3 program: {_described(exc, with_type=True)}; "
                           "check the gate calls, angles and qubit indices") from exc
    circuit = from_qiskit(qc)
    recorded = re.search("^" + re.escape(NAMES_COMMENT) + r"(.*)$", text, re.M)
    if recorded is not None:
        return _restore_names(circuit, recorded.group(1))
    taken = set(circuit.parameters)
    renames = {}
    for name in circuit.parameters:
        match = _ESCAPED_ELEMENT.match(name)
        if match:
            wanted = f"{match.group(1)}[{match.group(2)}]"
            if wanted not in taken:
                renames[name] = wanted
                taken.add(wanted)
    return circuit.rename(renames) if renames else circuit


def _described(exc: Exception, with_type: bool = False) -> str:
    """The message of ``exc`` (after its type name with ``with_type``), or its
    type name alone where the message is empty."""
    text = str(exc).strip()
    if not text:
        return f"{type(exc).__name__} (no message)"
    return f"{type(exc).__name__}: {text}" if with_type else text


def _restore_names(circuit: Circuit, recorded: str) -> Circuit:
    """The parameter names of the ``// qpeft parameters:`` line, exactly."""
    try:
        names = json.loads(recorded)
    except ValueError:
        names = None
    if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise InteropError(
            f"the line '{NAMES_COMMENT}…' must hold a JSON object of identifier → name "
            f"strings, got {recorded[:80]!r}; remove the line to keep the file's own names"
        )
    unknown = sorted(set(names) - set(circuit.parameters))
    if unknown:
        raise InteropError(
            f"the line '{NAMES_COMMENT}…' names input(s) {', '.join(unknown)} that the "
            "program does not declare (was an input renamed by hand?); fix or remove the line"
        )
    renames = {old: new for old, new in names.items() if old in circuit.parameters}
    try:
        circuit = circuit.rename(renames)
        if set(names) == set(renames) and len(names) == len(circuit.parameters):
            # every input listed: the line's order is the circuit's parameter order
            circuit = circuit.reorder(list(names.values()))
        return circuit
    except QpeftError as exc:
        raise InteropError(f"the names on the '{NAMES_COMMENT}…' line do not fit the "
                           f"program's inputs ({exc}); remove the line to keep the file's "
                           "own names") from None
