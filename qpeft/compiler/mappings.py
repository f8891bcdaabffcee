"""Alternative maps from a real parameter vector to an N×K orthonormal frame.

These maps are the baselines the circuit compiler is compared with: each one
turns ``P`` real numbers into an ``N×K`` real matrix ``U`` with ``UᵀU = I``
(a point on the Stiefel manifold), with the call shape of a compiled circuit:
``forward(values)`` maps ``(..., P)`` to ``(..., N, K)``.

All five maps use ``P = N·K − K(K+1)/2`` parameters (the dimension of the
Stiefel manifold), share one parameter layout and send zero parameters to
``E_K``, the first K columns of the identity.

Parameter layout: the values are split into K consecutive blocks, block ``k``
(``k = 0 … K−1``) holding ``N − 1 − k`` numbers that belong to column ``k``;
block ``k`` starts at ``k·N − k(k+1)/2``.

- ``"exponential"``, ``"cayley"``, ``"taylor"``: block ``k`` is column ``k`` of
  a skew-symmetric generator ``A`` below the diagonal (``A[k+1:, k]``); the
  entries above the diagonal of the first K columns follow from ``Aᵀ = −A``,
  and ``A`` has no other nonzero entries. Then ``U = f(A)[:, :K]`` with
  ``f = exp``, the Cayley transform ``(I − A)⁻¹(I + A)``, or a truncated
  Taylor series of ``exp``.
- ``"householder"``: block ``k`` is ``v_k[k+1:]`` for a reflection vector
  ``v_k = e_k + (0, …, 0, block k)``, and ``U = −H_0 H_1 ⋯ H_{K−1} E_K``.
- ``"givens"``: block ``k`` holds the angles of the ``N − 1 − k`` rotations
  that load column ``k``, arranged as a binary tree so that the rotations of
  one tree level act on disjoint row pairs and run as one vectorised update.

No map ever builds an ``N×N`` matrix: every forward pass costs ``O(N·K²)``
work (Taylor: per series term; Givens: in ``O(K·log N)`` sequential steps).
The ``N×N`` constructions are kept in :func:`dense_reference` for tests.

Example:
    >>> import torch
    >>> from qpeft.compiler.mappings import mapping
    >>> frame = mapping("cayley", dimension=8, columns=2, dtype=torch.float64)
    >>> frame.num_parameters
    13
    >>> U = frame(0.1 * torch.randn(5, 13, dtype=torch.float64))
    >>> U.shape
    torch.Size([5, 8, 2])
    >>> bool(torch.allclose(U.mT @ U, torch.eye(2, dtype=torch.float64)))
    True
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from qpeft.compiler import _resolve_device, cast_probe
from qpeft.compiler.blocks import plain_operations
from qpeft.errors import CompileError, ParameterError

__all__ = [
    "MAPPINGS",
    "CayleyMapping",
    "ExponentialMapping",
    "GivensMapping",
    "HouseholderMapping",
    "StiefelMapping",
    "TaylorDeviation",
    "TaylorMapping",
    "dense_reference",
    "generator_matrix",
    "mapping",
    "parameter_count",
    "taylor_deviation",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def parameter_count(dimension: int, columns: int) -> int:
    """Number of parameters of every mapping here: ``N·K − K(K+1)/2``.

    This is the dimension of the Stiefel manifold of ``N×K`` orthonormal
    frames, so no map carries a redundant parameter.

    Example:
        >>> parameter_count(4096, 4)
        16374
    """
    _check_shape(dimension, columns)
    return dimension * columns - columns * (columns + 1) // 2


def _check_shape(dimension: object, columns: object) -> None:
    for name, value in (("dimension", dimension), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CompileError(
                f"{name} must be an int, got {value!r} of type {type(value).__name__}; "
                f"pass a positive whole number"
            )
    if dimension < 1:
        raise CompileError(f"dimension must be at least 1, got {dimension}")
    if columns < 1:
        raise CompileError(
            f"columns must be at least 1, got {columns}; a frame needs one column or more"
        )
    if columns > dimension:
        raise CompileError(
            f"columns ({columns}) exceeds dimension ({dimension}): an {dimension}-row frame "
            f"has at most {dimension} orthonormal columns; lower the rank K or use a wider layer"
        )


def _column_offsets(dimension: int, columns: int) -> np.ndarray:
    """Start of each column's parameter block: ``k·N − k(k+1)/2``."""
    k = np.arange(columns + 1)
    return k * dimension - k * (k + 1) // 2


def _lower_trapezoid_index(dimension: int, columns: int) -> torch.Tensor:
    """Flat gather index that places the parameters below the diagonal of an N×K matrix.

    The index addresses ``[0, values…]`` (the values behind one zero): position
    ``(i, k)`` with ``i > k`` reads value ``offset_k + i − k − 1`` and every
    other position reads the zero.
    """
    rows = np.arange(dimension)[:, None]
    cols = np.arange(columns)[None, :]
    offsets = _column_offsets(dimension, columns)[:columns][None, :]
    index = np.where(rows > cols, offsets + rows - cols, 0)
    return torch.as_tensor(index.reshape(-1), dtype=torch.long)


class StiefelMapping(torch.nn.Module):
    """Base class: a differentiable map from ``(..., P)`` values to ``(..., N, K)`` frames.

    Subclasses implement :meth:`_frame`; this class checks shapes, dtypes and
    values, and keeps ``dtype`` and ``device`` in step with ``module.to(...)``.
    The module holds no trainable parameters and no saved state: the values are
    passed in, and every buffer is derived from ``(N, K)``.

    Args:
        dimension: N, the number of rows.
        columns: K, the number of orthonormal columns (``1 ≤ K ≤ N``).
        dtype: ``torch.float32`` or ``torch.float64``.
        device: where the index buffers live; values must be on the same device.
        check_values: raise :class:`~qpeft.errors.ParameterError` on NaN or
            infinite values. The check reads one flag back from the device;
            turn it off in hot loops on a GPU once inputs are known to be sane.

    Example:
        >>> import torch
        >>> from qpeft.compiler.mappings import GivensMapping
        >>> frame = GivensMapping(dimension=6, columns=2)
        >>> frame(torch.zeros(frame.num_parameters))
        tensor([[1., 0.],
                [0., 1.],
                [0., 0.],
                [0., 0.],
                [0., 0.],
                [0., 0.]])
    """

    name: str = ""

    def __init__(
        self,
        dimension: int,
        columns: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        _check_shape(dimension, columns)
        self._check_dtype(dtype)
        device = _resolve_device(device)
        self.dimension = int(dimension)
        self.columns = int(columns)
        if not isinstance(check_values, bool):
            raise CompileError(f"check_values must be True or False, got {check_values!r}")
        self.check_values = check_values
        # An empty floating buffer follows module.to(dtype/device), so the
        # `dtype` and `device` properties stay truthful after a move.
        self.register_buffer("_probe", torch.empty(0, dtype=dtype, device=device), persistent=False)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in _SUPPORTED_DTYPES:
            raise CompileError(
                f"{type(self).__name__} computes in float32 or float64, got {dtype}; "
                f"pass dtype=torch.float32 (or float64) and cast the frame afterwards if needed"
            )

    def _apply(self, fn, recurse: bool = True):
        # .half(), .bfloat16() or .to(complex) would leave a module that computes in a
        # dtype the constructor refuses (orthonormal to 1e-3 only, or complex garbage).
        target = cast_probe(fn, self.dtype, self.device)
        self._check_dtype(target.dtype)
        if self.device.type == "meta" and target.device.type != "meta":
            # built under torch.device("meta"), then to_empty(): the index buffers hold no
            # values and none is in the state dict; take them from a twin built where the
            # module goes (they depend on N and K only)
            twin = type(self)(self.dimension, self.columns, dtype=target.dtype,
                              device=target.device)
            for name, buffer in twin.named_buffers(recurse=False):
                self._buffers[name] = buffer
            return self
        return super()._apply(fn, recurse)

    @property
    def num_parameters(self) -> int:
        """``N·K − K(K+1)/2``, see :func:`parameter_count`."""
        return parameter_count(self.dimension, self.columns)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the values must have."""
        return self._probe.dtype

    @property
    def device(self) -> torch.device:
        """The device the values must be on."""
        return self._probe.device

    def extra_repr(self) -> str:
        return (
            f"dimension={self.dimension}, columns={self.columns}, "
            f"num_parameters={self.num_parameters}, dtype={self.dtype}"
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Map ``(..., P)`` values to ``(..., N, K)`` orthonormal frames.

        Autocast is switched off inside, so the frame is computed in the
        values' dtype and stays orthonormal to that dtype's precision.
        """
        self._check_values(values)
        device_type = values.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self._frame(values)
        return self._frame(values)

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _frame")

    def _check_values(self, values: object) -> None:
        where = f"{type(self).__name__}(dimension={self.dimension}, columns={self.columns})"
        if not isinstance(values, torch.Tensor):
            raise ParameterError(
                f"{where} takes a torch.Tensor, got {type(values).__name__}; "
                f"wrap it with torch.as_tensor(values, dtype={self.dtype})"
            )
        if values.dim() == 0 or values.shape[-1] != self.num_parameters:
            raise ParameterError(
                f"{where} expects values of shape (..., {self.num_parameters}), got "
                f"{tuple(values.shape)}; the last axis must hold N·K − K(K+1)/2 = "
                f"{self.num_parameters} numbers"
            )
        if values.dtype != self.dtype:
            raise ParameterError(
                f"{where} was built for {self.dtype} but got {values.dtype} values; "
                f"cast with values.to({self.dtype}) or move the mapping with .to({values.dtype})"
            )
        if values.device != self.device:
            raise ParameterError(
                f"{where} lives on {self.device} but got values on {values.device}; "
                f"move one of them with .to(...)"
            )
        # skipped under torch.compile (a sync that splits the graph) and torch.func transforms
        # (data-dependent control flow), as in qpeft.compile
        if self.check_values and not plain_operations() and values.device.type != "meta" \
                and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ParameterError(
                f"{where} got {bad} NaN or infinite value(s); check the optimiser step "
                f"(learning rate, gradient clipping) or the values loaded from disk"
            )

    def _identity_columns(self, values: torch.Tensor) -> torch.Tensor:
        """``E_K`` in the values' dtype and device, broadcast to their batch shape."""
        eye = torch.eye(self.dimension, self.columns, dtype=values.dtype, device=values.device)
        return eye.expand(*values.shape[:-1], self.dimension, self.columns)


class _GeneratorMapping(StiefelMapping):
    """Shared parts of the maps built on the skew-symmetric generator block.

    The generator is ``A = [[S, −Bᵀ], [B, 0]]`` with ``S`` a K×K skew matrix and
    ``B`` of shape ``(N−K)×K``; only its first K columns ``A·E_K = [S; B]``
    are ever stored.
    """

    def __init__(self, dimension: int, columns: int, **options: object) -> None:
        super().__init__(dimension, columns, **options)
        self.register_buffer(
            "_lower_index",
            _lower_trapezoid_index(dimension, columns).to(self.device),
            persistent=False,
        )

    def _blocks(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(S, B)`` with shapes ``(..., K, K)`` and ``(..., N−K, K)``."""
        lower = _gather_lower(values, self._lower_index, self.dimension, self.columns)
        top = lower[..., : self.columns, :]
        return top - top.mT, lower[..., self.columns :, :]

    def _from_core(
        self, core_columns: torch.Tensor, bottom: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Lift the first K columns of a function of the core back to N rows."""
        head = core_columns[..., : self.columns, :].to(bottom.dtype)
        tail = (core_columns[..., self.columns :, :] / scale).to(bottom.dtype)
        return torch.cat([head, bottom @ tail], dim=-2)


def _gather_lower(
    values: torch.Tensor, index: torch.Tensor, dimension: int, columns: int
) -> torch.Tensor:
    """Place values below the diagonal of a ``(..., N, K)`` matrix of zeros."""
    padded = torch.cat([values.new_zeros(*values.shape[:-1], 1), values], dim=-1)
    return padded.index_select(-1, index).reshape(*values.shape[:-1], dimension, columns)


def on_graph(frame: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``frame``, attached to the graph of ``values`` that it does not depend on.

    A constant frame (Givens at N = 1, Taylor with one term, a circuit without
    gates) would otherwise not require a gradient, and a backward pass through
    it would fail or leave the values without a (zero) gradient.
    """
    return frame + 0 * values.sum(-1)[..., None, None]


def _gram(thin: torch.Tensor) -> torch.Tensor:
    """``XᵀX`` for a tall ``(..., N, K)`` X, accumulated and returned in float64.

    A float32 GEMM sums N products with a relative error near 1e-6 (near 1e-3
    under TF32), which shows up directly in ``‖UᵀU − I‖``. The K×K Gram
    matrix and the small algebra that follows it run in float64 for
    ``O(N·K²)`` double-precision operations, which keeps float32 frames
    orthonormal to a few 1e-7.
    """
    wide = thin.to(torch.float64)
    return wide.mT @ wide


def _core(skew: torch.Tensor, bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2K×2K matrix ``T`` with ``A·W = W·T`` for ``W = [E_K, [0; B]/s]``.

    ``A·E_K = E_K·S + [0; B]`` and ``A·[0; B] = −E_K·BᵀB``, so the span of
    ``W`` is invariant under ``A`` and ``f(A)·W = W·f(T)`` for every power
    series ``f``, whether or not ``B`` has full rank. The scalar
    ``s = max(‖B‖_F, 1)`` balances the two off-diagonal blocks (both of size
    about ``‖B‖``); the result does not depend on ``s``, so it is held
    constant under autograd. ``T`` is returned in float64 (see :func:`_gram`).
    """
    k = skew.shape[-1]
    skew = skew.to(torch.float64)
    gram = _gram(bottom)
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt().clamp(min=1.0).detach()
    scale = scale[..., None, None]
    eye = torch.eye(k, dtype=skew.dtype, device=skew.device).expand_as(skew)
    top = torch.cat([skew, -gram / scale], dim=-1)
    low = torch.cat([scale * eye, torch.zeros_like(skew)], dim=-1)
    return torch.cat([top, low], dim=-2), scale


class ExponentialMapping(_GeneratorMapping):
    """``U = exp(A)·E_K`` for the generator block ``A`` (the Stiefel geodesic from ``E_K``).

    Computed through the 2K×2K core of :func:`_core`:
    ``U = [F_top; B·F_bottom/s]`` with ``F = expm(T)[:, :K]``. Cost
    ``O(N·K² + K³)``. Reaches every frame when ``K < N`` (every point of the
    Stiefel manifold lies on a geodesic from ``E_K``); for ``K = N`` it covers
    ``SO(N)``.

    Example:
        >>> import torch
        >>> frame = ExponentialMapping(dimension=5, columns=2, dtype=torch.float64)
        >>> U = frame(torch.randn(frame.num_parameters, dtype=torch.float64))
        >>> bool(torch.allclose(U.mT @ U, torch.eye(2, dtype=torch.float64)))
        True
    """

    name = "exponential"

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        skew, bottom = self._blocks(values)
        core, scale = _core(skew, bottom)
        return self._from_core(torch.linalg.matrix_exp(core)[..., : self.columns], bottom, scale)


class CayleyMapping(_GeneratorMapping):
    """``U = (I − A)⁻¹(I + A)·E_K`` for the generator block ``A``.

    Computed through the 2K×2K core ``T`` of :func:`_core` (a Woodbury-type
    reduction): ``F = (I − T)⁻¹(I + T)[:, :K]``, one 2K×2K solve, then
    ``U = [F_top; B·F_bottom/s]``. ``I − T`` is always invertible (its
    eigenvalues satisfy ``(λ² − λS + BᵀB)y = 0``, which has no root
    ``λ = 1``). Cost ``O(N·K² + K³)``. The Cayley transform never yields an
    orthogonal matrix with eigenvalue −1, so frames that need one are reached
    only in the limit of large parameters.

    Example:
        >>> import torch
        >>> frame = CayleyMapping(dimension=5, columns=2, dtype=torch.float64)
        >>> frame(torch.zeros(frame.num_parameters, dtype=torch.float64))[:2]
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """

    name = "cayley"

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        skew, bottom = self._blocks(values)
        core, scale = _core(skew, bottom)
        eye = torch.eye(core.shape[-1], dtype=core.dtype, device=core.device)
        solved = torch.linalg.solve(eye - core, (eye + core)[..., : self.columns])
        return self._from_core(solved, bottom, scale)


def _apply_generator(skew: torch.Tensor, bottom: torch.Tensor, thin: torch.Tensor) -> torch.Tensor:
    """``A·X`` for an ``(..., N, K)`` matrix X in ``O(N·K²)``, without forming A."""
    k = skew.shape[-1]
    head, tail = thin[..., :k, :], thin[..., k:, :]
    return torch.cat([skew @ head - bottom.mT @ tail, bottom @ head], dim=-2)


def _taylor_partial_sums(
    skew: torch.Tensor, bottom: torch.Tensor, start: torch.Tensor, terms: int
) -> Iterator[torch.Tensor]:
    """Yield ``Σ_{j<t} Aʲ·E_K / j!`` for ``t = 1 … terms``."""
    term = start
    total = start
    yield total
    for power in range(1, terms):
        term = _apply_generator(skew, bottom, term) / power
        total = total + term
        yield total


class TaylorMapping(_GeneratorMapping):
    """``U ≈ exp(A)·E_K`` by the Taylor series ``Σ_{j<terms} Aʲ·E_K / j!`` (thin products).

    Each term costs one ``A·X`` product, ``O(N·K²)``. The result is only
    approximately orthonormal: the error is about ``‖A‖₂^terms / terms!``, with
    ``‖A‖₂`` the spectral norm of the generator; see :func:`taylor_deviation` to
    measure it.

    Args:
        terms: number of series terms (``terms = 1`` returns ``E_K``).

    Example:
        >>> import torch
        >>> frame = TaylorMapping(dimension=6, columns=2, terms=12, dtype=torch.float64)
        >>> U = frame(0.05 * torch.randn(frame.num_parameters, dtype=torch.float64))
        >>> float((U.mT @ U - torch.eye(2, dtype=torch.float64)).norm()) < 1e-12
        True
    """

    name = "taylor"

    def __init__(self, dimension: int, columns: int, *, terms: int = 10, **options: object) -> None:
        if isinstance(terms, bool) or not isinstance(terms, (int, np.integer)) or terms < 1:
            raise CompileError(
                f"terms must be an int of at least 1, got {terms!r}; about 10 terms give "
                f"1e-7 accuracy for ‖A‖ ≤ 1"
            )
        super().__init__(dimension, columns, **options)
        self.terms = int(terms)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, terms={self.terms}"

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        skew, bottom = self._blocks(values)
        start = self._identity_columns(values)
        if self.terms == 1:
            return on_graph(start, values)
        return deque(_taylor_partial_sums(skew, bottom, start, self.terms), maxlen=1)[0]


class HouseholderMapping(StiefelMapping):
    """``U = −H_0 H_1 ⋯ H_{K−1}·E_K`` with ``H_k = I − 2 v_k v_kᵀ / ‖v_k‖²``.

    ``v_k = e_k + (0, …, 0, u_k)`` where ``u_k`` (``N − 1 − k`` parameters)
    fills rows ``k+1 … N−1``. Fixing entry ``k`` of ``v_k`` to 1 removes the
    redundant scale of each vector, so the count equals the manifold dimension.
    With zero parameters each ``H_k`` flips ``e_k``, and the leading minus
    sign restores ``E_K``. Column ``k`` is ``−H_0⋯H_k e_k``; ``H_k e_k``
    sweeps the unit sphere of rows ``k…N−1`` except ``+e_k`` itself, so the
    map covers all frames except a set of measure zero.

    The product is accumulated in compact WY form: ``H_0⋯H_{K−1} = I − V T Vᵀ``
    with ``T⁻¹ = triu(VᵀV, 1) + diag(VᵀV)/2``, so
    ``U = V·T·V[:K]ᵀ − E_K``: one Gram product, one K×K triangular solve and
    one thin product, ``O(N·K²)``.

    Example:
        >>> import torch
        >>> frame = HouseholderMapping(dimension=5, columns=2, dtype=torch.float64)
        >>> U = frame(torch.randn(3, frame.num_parameters, dtype=torch.float64))
        >>> U.shape
        torch.Size([3, 5, 2])
    """

    name = "householder"

    def __init__(self, dimension: int, columns: int, **options: object) -> None:
        super().__init__(dimension, columns, **options)
        self.register_buffer(
            "_lower_index",
            _lower_trapezoid_index(dimension, columns).to(self.device),
            persistent=False,
        )

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        identity = self._identity_columns(values)
        vectors = _gather_lower(values, self._lower_index, self.dimension, self.columns)
        vectors = vectors + identity
        gram = _gram(vectors)
        inverse_t = gram.triu(1) + torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1) / 2)
        top = vectors[..., : self.columns, :].mT.to(torch.float64)
        coefficients = torch.linalg.solve_triangular(inverse_t, top, upper=True)
        return vectors @ coefficients.to(vectors.dtype) - identity


_GivensLevel = tuple[np.ndarray, np.ndarray, int]


def _givens_trees(dimension: int, columns: int) -> list[tuple[int, list[_GivensLevel]]]:
    """The rotation trees ``(column, levels)`` in the order they are applied.

    Column ``k`` is loaded by a binary tree over rows ``k … N−1``: a range
    ``[lo, hi)`` of at least two rows is split at ``mid = lo + ⌈(hi−lo)/2⌉``,
    rotated in the plane ``(lo, mid)``, and both halves are split in turn.
    Each level is ``(lo rows, mid rows, first angle)``; within a level the
    ranges are disjoint, so its rotations commute. Angles of column ``k`` are
    numbered breadth first, by increasing row within a level, from the
    column's block offset, so the angles of one level are consecutive values.
    Trees are applied from column ``K−1`` down to ``0``
    (``U = R_0 R_1 ⋯ R_{K−1} E_K``), each one root level first.
    """
    offsets = _column_offsets(dimension, columns)
    trees: list[tuple[int, list[_GivensLevel]]] = []
    for column in reversed(range(columns)):
        low = np.array([column])
        high = np.array([dimension])
        angle = int(offsets[column])
        levels: list[_GivensLevel] = []
        while True:
            split = high - low >= 2
            low, high = low[split], high[split]
            if low.size == 0:
                break
            middle = low + (high - low + 1) // 2
            levels.append((low, middle, angle))
            angle += low.size
            low = np.stack([low, middle], axis=1).reshape(-1)
            high = np.stack([middle, high], axis=1).reshape(-1)
        if angle != offsets[column + 1]:
            raise AssertionError(f"Givens tree of column {column} used a wrong angle count")
        trees.append((column, levels))
    return trees


class GivensMapping(StiefelMapping):
    """``U = R_0 R_1 ⋯ R_{K−1}·E_K``, each ``R_k`` a tree of ``N − 1 − k`` Givens rotations.

    A rotation by ``θ`` in the plane of rows ``(a, b)`` maps
    ``(x_a, x_b) ↦ (cos θ·x_a − sin θ·x_b, sin θ·x_a + cos θ·x_b)``. ``R_k``
    acts on rows ``k … N−1`` only and turns ``e_k`` into any unit vector of
    those rows (tree-shaped hyperspherical coordinates), so by induction the
    map reaches every frame: column ``k`` is any unit vector orthogonal to the
    columns before it. The tree layout is described in :func:`_givens_trees`.

    Each tree has ``⌈log₂(N−k)⌉`` levels of rotations on disjoint row pairs,
    and a level is applied at once as a batch of 2×2 rotations. A tree works
    on its rows in *activation order*: row ``k`` first, then the rows each
    level reaches, in the order of the rows they pair with. The rows reached
    so far form a prefix, the next level's rows are the next slice, and every
    level but the last rotates the whole prefix, so no level gathers or
    scatters rows of the full frame. Work ``O(N·K²)``; ``O(K·log N)``
    sequential steps.

    Example:
        >>> import torch
        >>> frame = GivensMapping(dimension=4, columns=1, dtype=torch.float64)
        >>> angles = torch.tensor([torch.pi / 2, 0.0, 0.0], dtype=torch.float64)
        >>> frame(angles).flatten().round(decimals=12)
        tensor([0., 0., 1., 0.], dtype=torch.float64)
    """

    name = "givens"

    def __init__(self, dimension: int, columns: int, **options: object) -> None:
        super().__init__(dimension, columns, **options)
        self._level_sizes: list[int] = []
        # Per tree: (column, level sizes, whether each level rotates the whole
        # prefix; the positions for the other levels are in _low_positions).
        self._plan: list[tuple[int, list[int], list[bool]]] = []
        angle_order, pending_rows, natural_order, low_positions = [], [], [], []
        for column, levels in _givens_trees(dimension, columns):
            position = np.full(dimension, -1, dtype=np.int64)  # activation order
            position[column] = 0
            reached = 1
            whole_prefix: list[bool] = []
            for low, middle, first in levels:
                reach = np.argsort(position[low], kind="stable")
                lows = position[low[reach]]
                whole = lows.size == reached  # lows are distinct reached positions
                whole_prefix.append(whole)
                if not whole:
                    low_positions.append(lows)
                angle_order.append(first + reach)
                position[middle[reach]] = np.arange(reached, reached + low.size)
                reached += low.size
            order = np.empty(dimension - column, dtype=np.int64)
            order[position[column:]] = np.arange(column, dimension)
            pending_rows.append(order[1:])
            natural_order.append(position[column:])
            sizes = [low.size for low, _, _ in levels]
            self._level_sizes += sizes
            self._plan.append((column, sizes, whole_prefix))
        for name, parts in (
            ("_angle_order", angle_order),
            ("_pending_rows", pending_rows),
            ("_natural_order", natural_order),
            ("_low_positions", low_positions),
        ):
            flat = np.concatenate([np.zeros(0, dtype=np.int64), *parts])
            tensor = torch.as_tensor(flat, dtype=torch.long, device=self.device)
            self.register_buffer(name, tensor, persistent=False)
        self._pending_sizes = [part.size for part in pending_rows]
        self._natural_sizes = [part.size for part in natural_order]
        self._low_sizes = [part.size for part in low_positions]

    def _frame(self, values: torch.Tensor) -> torch.Tensor:
        frame = self._identity_columns(values)
        angles = values.index_select(-1, self._angle_order).unsqueeze(-1)
        # One split per tensor instead of a slice per level: autograd would
        # allocate a full-size gradient for every slice.
        cosines = iter(angles.cos().split(self._level_sizes, dim=-2))
        sines = iter(angles.sin().split(self._level_sizes, dim=-2))
        low_positions = iter(self._low_positions.split(self._low_sizes))
        pending_rows = self._pending_rows.split(self._pending_sizes)
        natural_order = self._natural_order.split(self._natural_sizes)
        for tree, (column, sizes, whole_prefix) in enumerate(self._plan):
            pending = frame.index_select(-2, pending_rows[tree]).split(sizes, dim=-2)
            reached = frame[..., column : column + 1, :]
            for whole, new_rows in zip(whole_prefix, pending, strict=True):
                cos, sin = next(cosines), next(sines)
                lows = None if whole else next(low_positions)
                old_rows = reached if lows is None else reached.index_select(-2, lows)
                rotated_old = cos * old_rows - sin * new_rows
                rotated_new = sin * old_rows + cos * new_rows
                if lows is not None:
                    rotated_old = reached.index_copy(-2, lows, rotated_old)
                reached = torch.cat([rotated_old, rotated_new], dim=-2)
            reached = reached.index_select(-2, natural_order[tree])
            frame = torch.cat([frame[..., :column, :], reached], dim=-2)
        return frame if self._level_sizes else on_graph(frame, values)  # N = 1: no angle


MAPPINGS: dict[str, type[StiefelMapping]] = {
    cls.name: cls
    for cls in (CayleyMapping, ExponentialMapping, HouseholderMapping, GivensMapping, TaylorMapping)
}
"""Registry of mapping names to classes."""


def mapping(name: str, dimension: int, columns: int, **options: object) -> StiefelMapping:
    """Build the mapping called ``name`` (one of :data:`MAPPINGS`).

    Options are passed to the class: ``dtype``, ``device``, ``check_values``
    for all, ``terms`` for ``"taylor"``.

    Example:
        >>> import torch
        >>> frame = mapping("taylor", 16, 4, terms=8, dtype=torch.float64)
        >>> frame(torch.zeros(2, 3, frame.num_parameters, dtype=torch.float64)).shape
        torch.Size([2, 3, 16, 4])
    """
    cls = _mapping_class(name)
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise CompileError(
            f"mapping {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(accepted))}"
        )
    return cls(dimension, columns, **options)


def mapping_options(name: str) -> set[str]:
    """The keyword options :func:`mapping` takes for ``name``.

    >>> sorted(mapping_options("taylor"))
    ['check_values', 'device', 'dtype', 'terms']
    """
    return _accepted_options(_mapping_class(name))


def _mapping_class(name: str) -> type[StiefelMapping]:
    if name not in MAPPINGS:
        raise CompileError(f"unknown mapping {name!r}; choose one of {', '.join(sorted(MAPPINGS))}")
    return MAPPINGS[name]


def _accepted_options(cls: type[StiefelMapping]) -> set[str]:
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass is torch.nn.Module or not issubclass(klass, StiefelMapping):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return accepted


def _check_count(values: torch.Tensor, dimension: int, columns: int) -> None:
    count = parameter_count(dimension, columns)
    if values.shape[-1:] != (count,):
        raise ParameterError(
            f"expected values of shape (..., {count}) for N={dimension}, K={columns}, "
            f"got {tuple(values.shape)}"
        )


def generator_matrix(values: torch.Tensor, dimension: int, columns: int) -> torch.Tensor:
    """The dense ``(..., N, N)`` skew-symmetric generator ``A`` of the parameter layout.

    ``O(N²)`` memory: for tests and small illustrations only.

    Example:
        >>> import torch
        >>> generator_matrix(torch.tensor([1.0, 2.0, 3.0]), dimension=3, columns=2)
        tensor([[ 0., -1., -2.],
                [ 1.,  0., -3.],
                [ 2.,  3.,  0.]])
    """
    _check_count(values, dimension, columns)
    index = _lower_trapezoid_index(dimension, columns).to(values.device)
    lower = _gather_lower(values, index, dimension, columns)
    first = torch.cat(
        [lower[..., :columns, :] - lower[..., :columns, :].mT, lower[..., columns:, :]], -2
    )
    rest = torch.cat(
        [
            -lower[..., columns:, :].mT,
            values.new_zeros(*values.shape[:-1], dimension - columns, dimension - columns),
        ],
        dim=-2,
    )
    return torch.cat([first, rest], dim=-1)


def dense_reference(
    name: str, values: torch.Tensor, dimension: int, columns: int, *, terms: int = 10
) -> torch.Tensor:
    """The frame of mapping ``name`` built from explicit ``N×N`` matrices.

    An independent, slow (``O(N³)``) construction used to test the efficient
    mappings: ``matrix_exp`` and a dense solve of the full generator for
    ``"exponential"`` and ``"cayley"``, dense powers for ``"taylor"``, and
    products of explicit reflection and rotation matrices (one rotation at a
    time) for ``"householder"`` and ``"givens"``.

    Example:
        >>> import torch
        >>> values = torch.randn(3, dtype=torch.float64)
        >>> fast = mapping("exponential", 3, 2, dtype=torch.float64)(values)
        >>> bool(torch.allclose(fast, dense_reference("exponential", values, 3, 2)))
        True
    """
    _mapping_class(name)
    _check_count(values, dimension, columns)
    eye = torch.eye(dimension, dtype=values.dtype, device=values.device)
    if name in ("exponential", "cayley", "taylor"):
        generator = generator_matrix(values, dimension, columns)
        if name == "exponential":
            full = torch.linalg.matrix_exp(generator)
        elif name == "cayley":
            full = torch.linalg.solve(eye - generator, eye + generator)
        else:
            full, power = eye.expand_as(generator), eye.expand_as(generator)
            for order in range(1, terms):
                power = power @ generator / order
                full = full + power
        return full[..., :columns]
    if values.dim() != 1:
        return torch.stack([dense_reference(name, row, dimension, columns) for row in values])
    offsets = _column_offsets(dimension, columns)
    full = eye
    if name == "householder":
        for column in range(columns):
            vector = torch.cat(
                [
                    values.new_zeros(column),
                    values.new_ones(1),
                    values[offsets[column] : offsets[column + 1]],
                ]
            )
            full = full @ (eye - 2 * torch.outer(vector, vector) / (vector @ vector))
        return -full[:, :columns]
    levels = [level for _, tree in _givens_trees(dimension, columns) for level in tree]
    for rows_a, rows_b, first in levels:
        angles = range(first, first + rows_a.size)
        for a, b, angle in zip(rows_a.tolist(), rows_b.tolist(), angles, strict=True):
            rotation = eye.clone()
            rotation[a, a] = rotation[b, b] = torch.cos(values[angle])
            rotation[b, a] = torch.sin(values[angle])
            rotation[a, b] = -torch.sin(values[angle])
            full = rotation @ full
    return full[:, :columns]


@dataclass(frozen=True)
class TaylorDeviation:
    """How far a truncated Taylor frame is from an exact one.

    Attributes:
        terms: number of series terms.
        orthonormality: ``‖UᵀU − I‖_F`` (largest over the batch).
        distance_to_exponential: ``‖U − exp(A)E_K‖_F`` (largest over the batch).
    """

    terms: int
    orthonormality: float
    distance_to_exponential: float


def taylor_deviation(
    values: torch.Tensor, dimension: int, columns: int, terms: int | Iterable[int]
) -> list[TaylorDeviation]:
    """Measure the Taylor mapping's error for each requested number of terms.

    The partial sums are computed in one pass up to the largest requested
    count and compared with :class:`ExponentialMapping` on the same values.

    Example:
        >>> import torch
        >>> values = 0.1 * torch.randn(13, dtype=torch.float64)
        >>> rows = taylor_deviation(values, 8, 2, terms=[2, 6, 12])
        >>> rows[0].orthonormality > rows[1].orthonormality > rows[2].orthonormality
        True
    """
    if not isinstance(values, torch.Tensor):
        raise ParameterError(
            f"taylor_deviation takes values as a torch.Tensor, got {type(values).__name__}; "
            f"wrap them with torch.as_tensor(values, dtype=torch.float64)"
        )
    try:
        wanted = sorted({terms} if isinstance(terms, (int, np.integer)) else set(terms))
        whole = all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in wanted)
    except TypeError:  # a float, or a collection of things that do not compare
        wanted, whole = [], False
    if not wanted or not whole or wanted[0] < 1:
        raise CompileError(
            f"terms must be a positive whole number or a collection of them, got {terms!r}; "
            f"e.g. terms=[2, 4, 8]"
        )
    exact_mapping = ExponentialMapping(dimension, columns, dtype=values.dtype, device=values.device)
    taylor_mapping = TaylorMapping(
        dimension, columns, terms=wanted[-1], dtype=values.dtype, device=values.device
    )
    with torch.no_grad():
        exact = exact_mapping(values)
        taylor_mapping._check_values(values)
        skew, bottom = taylor_mapping._blocks(values)
        start = taylor_mapping._identity_columns(values)
        eye = torch.eye(columns, dtype=values.dtype, device=values.device)
        report = []
        for count, frame in enumerate(_taylor_partial_sums(skew, bottom, start, wanted[-1]), 1):
            if count in wanted:
                gram_error = torch.linalg.matrix_norm(frame.mT @ frame - eye)
                distance = torch.linalg.matrix_norm(frame - exact)
                report.append(
                    TaylorDeviation(count, float(gram_error.max()), float(distance.max()))
                )
    return report
