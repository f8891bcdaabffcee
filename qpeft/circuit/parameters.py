"""Symbolic parameters: names, vectors of names, and affine expressions.

A gate angle is an :class:`Expression` ``c + Σ a_i · θ_i``: a constant, one
symbol, a symbol shared by several gates, or a scaled and shifted symbol.

>>> theta = Parameter("theta")
>>> e = 2 * theta + 0.5
>>> e.evaluate({"theta": 1.0})
2.5
>>> str(-theta)
'-theta'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from qpeft.errors import ParameterError

#: a name and an optional index without leading zeros (``w[1]``, never ``w[01]``:
#: Qiskit and OpenQASM read both as element 1 of the vector ``w``)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[(0|[1-9][0-9]*)\])?$")


def refuse_non_real(value: object, what: str) -> None:
    """Refuse booleans and complex numbers, which NumPy and torch would turn
    into angles silently (1.0, or the real part only)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        complex_ = value.is_complex() if isinstance(value, torch.Tensor) else np.iscomplexobj(value)
        boolean = value.dtype in (torch.bool, np.bool_)
    else:
        complex_ = isinstance(value, (complex, np.complexfloating))
        boolean = isinstance(value, (bool, np.bool_))
    if not (complex_ or boolean):
        return  # (the message is built only when needed: frames call this every step)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, torch.Tensor) else "array"
        shown = f"a {kind} of {value.dtype}, shape {tuple(value.shape)}"
    else:
        shown = _short(value)
    if complex_:
        raise ParameterError(f"{what}: a complex number ({shown}) is not an angle; "
                             "pass real numbers (.real if the imaginary part is zero)")
    raise ParameterError(f"{what}: a boolean ({shown}) is not an angle (it would "
                         "be read as 0 or 1 radian); pass numbers")


def real_number(value: object, what: str) -> float:
    """``value`` as a finite float: a Python, NumPy or one-element torch real
    number (a tensor that requires grad is read off its graph). Booleans,
    complex numbers and anything else raise :class:`ParameterError`.

    >>> real_number(np.float32(0.5), "angle")
    0.5
    >>> real_number(0.3 + 2j, "angle")
    Traceback (most recent call last):
    ...
    qpeft.errors.ParameterError: angle: a complex number ((0.3+2j)) is not an angle; ...
    """
    refuse_non_real(value, what)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ParameterError(f"{what} is a tensor of {value.numel()} numbers, not one number")
        value = value.detach().item()
    if not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{what} is not a number: {_short(value)}") from None
    return _check_finite(value, what)


def real_values(values: object, what: str = "parameter values") -> np.ndarray:
    """``values`` (a sequence, nested or not, a NumPy array or a tensor) as a flat
    float64 array, with the checks of :func:`real_number` (finiteness aside, which
    the caller checks with its own names). Nested sequences must be rectangular."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise ParameterError(
            f"{what} must be a sequence of numbers, one per circuit.parameters entry, got "
            f"{type(values).__name__}"
        )

    def plain(value: object) -> object:
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        refuse_non_real(value, what)
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().tolist()
        return value.tolist() if isinstance(value, np.ndarray) else value

    try:
        return np.asarray(plain(values), dtype=float).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ParameterError(
            f"{what} must be numbers, one per circuit.parameters entry ({exc})"
        ) from None


def _check_finite(value: float, what: str) -> float:
    try:
        value = float(value)
    except OverflowError:
        raise ParameterError(
            f"{what} {_short(value)} is too large for a float; angles and coefficients must "
            "be finite numbers"
        ) from None
    if not math.isfinite(value):
        raise ParameterError(f"{what} is {value}; angles and coefficients must be finite numbers")
    return value + 0.0  # -0.0 becomes 0.0: equal expressions get equal JSON and fingerprints


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ParameterError(
            f"invalid parameter name {name!r}: use letters, digits and underscores, "
            "starting with a letter, optionally followed by an index without leading zeros "
            "such as 'w[3]'"
        )


class _Algebra:
    """Arithmetic shared by :class:`Parameter` and :class:`Expression`."""

    def _expr(self) -> Expression:  # pragma: no cover - overridden
        raise NotImplementedError

    def __add__(self, other: ExpressionLike) -> Expression:
        a, b = self._expr(), as_expression(other)
        terms = dict(a.terms)
        for name, coeff in b.terms:
            terms[name] = terms.get(name, 0.0) + coeff
        return Expression.make(terms, a.constant + b.constant)

    __radd__ = __add__

    def __neg__(self) -> Expression:
        return self * -1.0

    def __sub__(self, other: ExpressionLike) -> Expression:
        return self + (-as_expression(other))

    def __rsub__(self, other: ExpressionLike) -> Expression:
        return as_expression(other) + (-self._expr())

    def __mul__(self, factor: float) -> Expression:
        if isinstance(factor, (bool, np.bool_)) or not isinstance(
            factor, (int, float, np.integer, np.floating)
        ):
            raise ParameterError(
                f"an angle can only be scaled by a number, not {type(factor).__name__}: "
                "expressions stay affine (a*theta + b)"
            )
        factor = _check_finite(factor, "scale factor")
        e = self._expr()
        return Expression.make({n: c * factor for n, c in e.terms}, e.constant * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Expression:
        if isinstance(divisor, (bool, np.bool_)) or not isinstance(
            divisor, (int, float, np.integer, np.floating)
        ):
            raise ParameterError(
                f"an angle can only be divided by a number, not {type(divisor).__name__}: "
                "expressions stay affine (a*theta + b)"
            )
        if divisor == 0:
            raise ParameterError("division of a parameter by zero")
        return self * (1.0 / divisor)

    def __rtruediv__(self, other: object) -> Expression:
        raise ParameterError(
            f"cannot divide {type(other).__name__} by an angle: expressions stay affine "
            "(a*theta + b)"
        )


@dataclass(frozen=True, eq=True, order=True)
class Parameter(_Algebra):
    """A named free angle. ``Parameter("theta")`` or ``Parameter("w[3]")``."""

    name: str

    def __post_init__(self) -> None:
        _check_name(self.name)

    def _expr(self) -> Expression:
        return Expression(((self.name, 1.0),), 0.0)

    def __str__(self) -> str:
        return self.name


class ParameterVector:
    """``n`` parameters named ``name[0] … name[n-1]``.

    >>> w = ParameterVector("w", 3)
    >>> [p.name for p in w]
    ['w[0]', 'w[1]', 'w[2]']
    """

    def __init__(self, name: str, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ParameterError(f"a parameter vector needs a length >= 0, got {length!r}")
        Parameter(name)  # validates the base name
        self.name = name
        self._items = tuple(Parameter(f"{name}[{i}]") for i in range(int(length)))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # noqa: ANN001 - int or slice
        return self._items[index]

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"ParameterVector({self.name!r}, {len(self)})"


@dataclass(frozen=True, eq=True)
class Expression(_Algebra):
    """An affine angle ``constant + Σ coefficient · parameter``.

    However it is built, ``terms`` is stored as ``(name, float)`` pairs sorted
    by name, without zero coefficients, and ``-0.0`` as ``0.0``, so equal
    expressions compare and hash equal and survive JSON. A NaN or infinite
    coefficient or constant, an invalid name or a name given twice raises
    :class:`ParameterError`.

    >>> Expression((("b", 1), ("a", 2.0)), -0.0) == Expression.make({"a": 2, "b": 1})
    True
    >>> Expression((), float("nan"))
    Traceback (most recent call last):
    ...
    qpeft.errors.ParameterError: constant is nan; angles and coefficients must be finite numbers
    """

    terms: tuple[tuple[str, float], ...]
    constant: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", _checked_terms(self.terms))
        object.__setattr__(self, "constant", _finite_number(self.constant, "constant"))

    @staticmethod
    def make(terms: Mapping[str, float], constant: float = 0.0) -> Expression:
        """The expression ``constant + Σ terms[name] · name``."""
        return Expression(tuple(terms.items()), constant)

    def _expr(self) -> Expression:
        return self

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.terms)

    @property
    def is_constant(self) -> bool:
        return not self.terms

    def evaluate(self, values: Mapping[str, float]) -> float:
        missing = [n for n in self.parameters if n not in values]
        if missing:
            raise ParameterError(
                f"parameter(s) {', '.join(missing)} have no value; bind them or pass values for "
                "every name in circuit.parameters"
            )
        total = self.constant
        for name, coeff in self.terms:
            total += coeff * _check_finite(values[name], f"value of {name}")
        return total

    def bind(self, values: Mapping[str, float]) -> Expression:
        """Substitute the given names by numbers; others stay symbolic."""
        constant = self.constant
        terms: dict[str, float] = {}
        for name, coeff in self.terms:
            if name in values:
                constant += coeff * _check_finite(values[name], f"value of {name}")
            else:
                terms[name] = coeff
        return Expression.make(terms, constant)

    def rename(self, mapping: Mapping[str, str]) -> Expression:
        terms: dict[str, float] = {}
        for name, coeff in self.terms:
            new = mapping.get(name, name)
            terms[new] = terms.get(new, 0.0) + coeff
        return Expression.make(terms, self.constant)

    def __str__(self) -> str:
        parts: list[str] = []
        for name, coeff in self.terms:
            if coeff == 1.0:
                text = name
            elif coeff == -1.0:
                text = f"-{name}"
            else:
                text = f"{coeff:g}*{name}"
            if parts and not text.startswith("-"):
                text = "+" + text
            parts.append(text)
        if self.constant != 0.0 or not parts:
            c = f"{self.constant:.6g}"
            parts.append(("+" + c) if parts and self.constant > 0 else c)
        return "".join(parts)

    # JSON form: a number, a bare name, or {"terms": [[name, coeff], ...], "constant": c}
    def to_json(self) -> float | str | dict:
        if self.is_constant:
            return self.constant
        if len(self.terms) == 1 and self.terms[0][1] == 1.0 and self.constant == 0.0:
            return self.terms[0][0]
        return {"terms": [[n, c] for n, c in self.terms], "constant": self.constant}

    @staticmethod
    def from_json(data: object) -> Expression:
        from qpeft.errors import DescriptionError

        try:
            if isinstance(data, bool):
                raise TypeError("a boolean is not an angle")
            if isinstance(data, (int, float)):
                return as_expression(data)
            if isinstance(data, str):
                return Parameter(data)._expr()
            if isinstance(data, dict):
                terms = {str(n): _json_number(c) for n, c in data["terms"]}
                if len(terms) != len(data["terms"]):
                    raise ValueError("a parameter is named in two terms")
                for n in terms:
                    Parameter(n)
                return Expression.make(terms, _json_number(data.get("constant", 0.0)))
            raise TypeError(f"unexpected {type(data).__name__}")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DescriptionError(
                f"malformed angle {_short(data)} ({exc}); an angle is a number, a parameter "
                'name, or {"terms": [[name, coefficient], ...], "constant": number}'
            ) from exc


def _checked_terms(terms: object) -> tuple[tuple[str, float], ...]:
    """``terms`` as sorted ``(name, coefficient)`` pairs without zeros."""
    if isinstance(terms, tuple) and not terms:  # a constant
        return ()
    if isinstance(terms, (str, bytes, Mapping)) or not hasattr(terms, "__iter__"):
        raise ParameterError(
            f"the terms of an expression are (name, coefficient) pairs, got {_short(terms)}; "
            "use Expression.make({name: coefficient}, constant) to build one from a mapping"
        )
    kept: dict[str, float] = {}
    for term in terms:
        if not isinstance(term, (tuple, list)) or len(term) != 2:
            raise ParameterError(
                f"a term of an expression is a (name, coefficient) pair, got {_short(term)}"
            )
        name, coeff = term
        _check_name(name)
        if name in kept:
            raise ParameterError(
                f"parameter {name} appears in two terms of an expression; give each name once "
                "(add the coefficients)"
            )
        kept[name] = _finite_number(coeff, f"coefficient of {name}")
    return tuple(sorted((n, c) for n, c in kept.items() if c != 0.0))


def _finite_number(value: object, what: str) -> float:
    """``value`` (a real number, not a boolean) as a finite float, ``-0.0`` as ``0.0``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ParameterError(f"{what} must be a real number, got {_short(value)}")
    return _check_finite(value, what)


def _json_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a coefficient must be a number, got {_short(value)}")
    return _check_finite(value, "coefficient")


def _short(value: object, limit: int = 120) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


ExpressionLike = Union[Expression, Parameter, float, int, str]  # noqa: UP007 - runtime alias


def as_expression(value: ExpressionLike) -> Expression:
    """Turn a number, a :class:`Parameter`, a name or an :class:`Expression`
    into an :class:`Expression`."""
    if isinstance(value, Expression):
        return value
    if isinstance(value, Parameter):
        return value._expr()
    if isinstance(value, str):
        return Parameter(value)._expr()
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError("a boolean is not an angle; pass a number or a Parameter")
    if isinstance(value, (int, float)):
        return Expression((), _check_finite(value, "angle"))
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return Expression((), real_number(value, "angle"))  # numpy / torch scalars
    try:  # other numbers (Fraction, Decimal)
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(
            f"cannot use {type(value).__name__} as an angle; pass a number, a Parameter, "
            "a parameter name or an affine expression"
        ) from None
    return Expression((), _check_finite(number, "angle"))
