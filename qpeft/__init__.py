"""qpeft: Quantum-PEFT — describe circuits, compile them to fast PyTorch
functions, and use them as ultra parameter-efficient adapters.

    describe (qpeft.circuit, qpeft.ansatz) -> compile (qpeft.compile)
    -> use (qpeft.adapters, qpeft.interop, qpeft.draw)

>>> import qpeft
>>> qpeft.ansatz.pauli(qubits=10, layers=2).num_parameters
46
"""

from __future__ import annotations

import importlib

from qpeft import ansatz
from qpeft._version import __version__
from qpeft.ansatz import load_ansatz
from qpeft.circuit import (
    Circuit,
    Expression,
    Gate,
    GeneralizedCZ,
    Parameter,
    ParameterVector,
    SignDiagonal,
)
from qpeft.errors import QpeftError

# Names defined in heavier modules, imported on first use.
_LAZY = {
    "CompiledCircuit": "qpeft.compiler",
    "mapping": "qpeft.compiler.mappings",
    "verify": "qpeft.interop.verify",
    "from_qiskit": "qpeft.interop.qiskit",
    "from_pennylane": "qpeft.interop.pennylane",
    "from_qasm": "qpeft.interop.qasm",
    "QPeftConfig": "qpeft.adapters",
    "QPeftModel": "qpeft.adapters",
    "get_qpeft_model": "qpeft.adapters",
    # the public verb: qpeft.compile is qpeft.compiler.compile_circuit (signature and help)
    "compile": "qpeft.compiler",
}
_RENAMED = {"compile": "compile_circuit"}


def __dir__() -> list[str]:
    # the lazy names too, so that dir() and help() show qpeft.compile and the others
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qpeft' has no attribute {name!r}")


__all__ = [
    "Circuit", "Expression", "Gate", "GeneralizedCZ", "Parameter", "ParameterVector",
    "QpeftError", "SignDiagonal", "__version__", "ansatz", "load_ansatz", *_LAZY,
]
