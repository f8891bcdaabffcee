"""Standard ansätze and the catalog loader."""

from qpeft.ansatz.builders import (
    brickwork,
    check_counts,
    entangling_pairs,
    for_dimension,
    hardware_efficient,
    pauli,
    pauli_parameter_count,
    real_amplitudes,
)
from qpeft.ansatz.catalog import ansatz_options, catalog_names, load_ansatz

__all__ = [
    "ansatz_options", "brickwork", "catalog_names", "check_counts", "entangling_pairs",
    "for_dimension", "hardware_efficient", "load_ansatz", "pauli", "pauli_parameter_count",
    "real_amplitudes",
]
