"""Describe circuits as data: wires with dimensions, parameters, gates."""

from qpeft.circuit.circuit import FORMAT, FORMAT_VERSION, Circuit
from qpeft.circuit.gates import (
    CX,
    CZ,
    RX,
    RY,
    RZ,
    SWAP,
    Barrier,
    Controlled,
    FixedGate,
    Gate,
    GeneralizedCZ,
    Givens,
    H,
    PauliRotation,
    SignDiagonal,
    StandardGate,
    Unitary,
    X,
    Y,
    Z,
    barrier_of,
    controlled,
    gate_from_json,
    givens,
    pauli_rotation,
    unitary,
)
from qpeft.circuit.parameters import Expression, Parameter, ParameterVector, as_expression

__all__ = [
    "CX", "CZ", "FORMAT", "FORMAT_VERSION", "H", "RX", "RY", "RZ", "SWAP", "X", "Y", "Z",
    "Barrier", "Circuit", "Controlled", "Expression", "FixedGate", "Gate", "GeneralizedCZ",
    "Givens", "Parameter", "ParameterVector", "PauliRotation", "SignDiagonal", "StandardGate",
    "Unitary", "as_expression", "barrier_of", "controlled", "gate_from_json", "givens",
    "pauli_rotation", "unitary",
]
