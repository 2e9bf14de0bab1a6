"""``FactoredMatrix``: a matrix kept as the product of its factors ``A @ B`` (leading axes broadcast),
with TransformerLens's names and semantics. Singular values, eigenvalues and norms go through the
small inner dimension; the full product is formed only when asked (``AB``)."""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


class FactoredMatrix:
    """``A [..., ldim, mdim] @ B [..., mdim, rdim]``."""

    def __init__(self, A: Any, B: Any):
        A, B = np.asarray(A), np.asarray(B)
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"factors are matrices (or stacks of them); got {A.shape} and {B.shape}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                "Factored matrix must match on inner dimension, "
                f"shapes were a: {A.shape}, b:{B.shape}"
            )
        lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.A = np.broadcast_to(A, lead + A.shape[-2:])
        self.B = np.broadcast_to(B, lead + B.shape[-2:])
        self.shape = lead + (self.ldim, self.rdim)
        self.has_leading_dims = len(lead) > 0
        self._svd: Any = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def AB(self) -> np.ndarray:
        """The full product."""
        return self.A @ self.B

    @property
    def BA(self) -> np.ndarray:
        """``B @ A`` (square matrices only)."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square matrix; this one is {self.ldim} x {self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(_t(self.B), _t(self.A))

    def __matmul__(self, other: Any) -> Union["FactoredMatrix", np.ndarray]:
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = np.asarray(other)
        if other.ndim < 2:
            # A vector: collapse to a vector.
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-1] >= self.rdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Any) -> Union["FactoredMatrix", np.ndarray]:
        other = np.asarray(other)
        if other.ndim < 2:
            return ((other[..., None, :] @ self.A) @ self.B)[..., 0, :]
        if other.shape[-2] >= self.ldim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: Any) -> "FactoredMatrix":
        scalar = np.asarray(scalar)
        if scalar.ndim > 0:
            scalar = scalar[..., None, None]
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def svd(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, S, V)`` with ``U @ diag(S) @ V.T == AB``, through the factors' own SVDs."""
        if self._svd is None:
            Ua, Sa, Vha = np.linalg.svd(self.A, full_matrices=False)
            Ub, Sb, Vhb = np.linalg.svd(self.B, full_matrices=False)
            middle = Sa[..., :, None] * Vha @ Ub * Sb[..., None, :]
            Um, Sm, Vhm = np.linalg.svd(middle, full_matrices=False)
            self._svd = (Ua @ Um, Sm, _t(Vhb) @ _t(Vhm))
        return self._svd

    @property
    def U(self) -> np.ndarray:
        return self.svd()[0]

    @property
    def S(self) -> np.ndarray:
        return self.svd()[1]

    @property
    def V(self) -> np.ndarray:
        return self.svd()[2]

    @property
    def Vh(self) -> np.ndarray:
        """TransformerLens's historical alias of ``V`` (it returns V, not its transpose)."""
        return self.V

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of ``BA``: those of ``AB`` without its extra zeros."""
        return np.linalg.eigvals(self.BA)

    def norm(self) -> np.ndarray:
        """Frobenius norm."""
        return np.sqrt((self.S**2).sum(-1))

    def get_corner(self, k: int = 3) -> np.ndarray:
        """The top-left ``k`` corner of every axis of the product."""
        m = self.A[..., :k, :] @ self.B[..., :, :k]
        return m[tuple(slice(k) for _ in range(m.ndim))]

    def __getitem__(self, idx: Any) -> "FactoredMatrix":
        if not isinstance(idx, tuple):
            idx = (idx,)
        lead = len(self.shape) - 2
        if len(idx) <= lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if len(idx) == lead + 1:
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        return FactoredMatrix(self.A[idx[:-1]], self.B[idx[:-2] + (slice(None), idx[-1])])

    def collapse_l(self) -> np.ndarray:
        """``S Vᵀ`` ``[..., mdim, rdim]`` (the product with the left factor's orthonormal part dropped)."""
        return self.S[..., :, None] * _t(self.V)

    def collapse_r(self) -> np.ndarray:
        return self.U * self.S[..., None, :]

    def make_even(self) -> "FactoredMatrix":
        s = np.sqrt(self.S)
        return FactoredMatrix(self.U * s[..., None, :], s[..., :, None] * _t(self.V))

    def unsqueeze(self, k: int) -> "FactoredMatrix":
        return FactoredMatrix(np.expand_dims(self.A, k), np.expand_dims(self.B, k))

    @property
    def pair(self) -> Tuple[np.ndarray, np.ndarray]:
        return (self.A, self.B)

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"


def get_comp_score(W_A: Any, W_B: Any) -> np.ndarray:
    """TransformerLens's composition score ``‖W_A W_B‖ / (‖W_A‖ ‖W_B‖)`` of two (factored) matrices."""

    def norm(m: Any) -> np.ndarray:
        return m.norm() if isinstance(m, FactoredMatrix) else np.linalg.norm(m, axis=(-2, -1))

    return norm(W_A @ W_B) / (norm(W_A) * norm(W_B))
