"""Benchmarks: ``qpeft bench unitary`` times the circuit compiler against its
peers (:mod:`qpeft.bench.unitary`)."""
