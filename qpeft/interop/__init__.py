"""Interop: Qiskit, PennyLane and OpenQASM in and out; verification.

Every conversion reads the circuit description only. Qiskit and PennyLane
are imported when a function that needs them is first called.

>>> from qpeft.interop import to_qiskit
>>> from qpeft.circuit import Circuit
>>> to_qiskit(Circuit(2).h(0).cx(0, 1)).count_ops()["cx"]
1
"""

from __future__ import annotations

import importlib

_LAZY = {
    "to_qiskit": "qpeft.interop.qiskit",
    "from_qiskit": "qpeft.interop.qiskit",
    "to_pennylane": "qpeft.interop.pennylane",
    "from_pennylane": "qpeft.interop.pennylane",
    "to_qasm": "qpeft.interop.qasm",
    "from_qasm": "qpeft.interop.qasm",
    "verify": "qpeft.interop.verify",
    "VerificationReport": "qpeft.interop.verify",
    "ReferenceResult": "qpeft.interop.verify",
    "embed_in_qubits": "qpeft.interop.verify",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qpeft.interop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
