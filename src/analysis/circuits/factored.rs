//! A low-rank matrix kept as the product of its two factors, `A [l, m] · B [m, r]`, as
//! TransformerLens's `FactoredMatrix`: a head's QK circuit `W_Q W_Kᵀ` and OV circuit `W_V W_O` are
//! `d_model × d_model` matrices of rank `d_head`, and everything asked of them (singular values,
//! eigenvalues, norms, products) is computed through the small inner dimension, never by forming
//! the full product. In f64.

use crate::error::{Error, Result};
use nalgebra::DMatrix;
use ndarray::{s, Array1, Array2, ArrayView2};

pub use nalgebra::Complex;

/// `A · B`, never formed unless asked (`product`).
#[derive(Clone, Debug, PartialEq)]
pub struct FactoredMatrix {
    pub a: Array2<f64>,
    pub b: Array2<f64>,
}

/// A singular value decomposition `M = U · diag(S) · Vᵀ` (thin: `k` columns).
#[derive(Clone, Debug)]
pub struct Svd {
    /// `[l, k]`
    pub u: Array2<f64>,
    /// `[k]`, descending.
    pub s: Array1<f64>,
    /// `[r, k]` (V, not Vᵀ, as TransformerLens returns it).
    pub v: Array2<f64>,
}

fn to_na(a: ArrayView2<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

/// `a · b` in f64 with each entry summed in the order of the inner index, on every machine
/// (ndarray's own product picks its kernels by CPU, AVX-512 included).
pub fn dot(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    assert_eq!(a.ncols(), b.nrows(), "dot: inner dimensions differ");
    let mut out = Array2::zeros((a.nrows(), b.ncols()));
    for (mut row, a_row) in out.outer_iter_mut().zip(a.outer_iter()) {
        for (&x, b_row) in a_row.iter().zip(b.outer_iter()) {
            row.zip_mut_with(&b_row, |o, &y| *o += x * y);
        }
    }
    out
}

/// The thin SVD of a full matrix, singular values descending.
pub fn svd(m: ArrayView2<f64>) -> Svd {
    let (rows, cols) = m.dim();
    let k = rows.min(cols);
    if k == 0 {
        return Svd {
            u: Array2::zeros((rows, 0)),
            s: Array1::zeros(0),
            v: Array2::zeros((cols, 0)),
        };
    }
    let d = to_na(m).svd(true, true);
    let (u, vt) = (d.u.expect("asked for U"), d.v_t.expect("asked for Vᵀ"));
    // nalgebra leaves the order to its iterations: sort descending, ties by index.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| {
        d.singular_values[j]
            .total_cmp(&d.singular_values[i])
            .then(i.cmp(&j))
    });
    Svd {
        u: Array2::from_shape_fn((rows, k), |(i, c)| u[(i, order[c])]),
        s: Array1::from_iter(order.iter().map(|&c| d.singular_values[c])),
        v: Array2::from_shape_fn((cols, k), |(j, c)| vt[(order[c], j)]),
    }
}

/// Eigenvalues of a square matrix, in the order `order_eigenvalues` gives.
pub fn eigenvalues(m: ArrayView2<f64>) -> Vec<Complex<f64>> {
    if m.nrows() == 0 {
        return Vec::new();
    }
    let mut ev: Vec<Complex<f64>> = to_na(m).complex_eigenvalues().iter().copied().collect();
    order_eigenvalues(&mut ev);
    ev
}

/// `|z|` (libm's hypot: the same bits everywhere).
pub fn modulus(z: &Complex<f64>) -> f64 {
    libm::hypot(z.re, z.im)
}

/// Descending modulus, then real part, then imaginary part: one order on every machine.
pub fn order_eigenvalues(ev: &mut [Complex<f64>]) {
    ev.sort_by(|x, y| {
        modulus(y)
            .total_cmp(&modulus(x))
            .then(y.re.total_cmp(&x.re))
            .then(y.im.total_cmp(&x.im))
    });
}

impl FactoredMatrix {
    /// `a [l, m] · b [m, r]`; the inner dimensions must agree.
    pub fn new(a: Array2<f64>, b: Array2<f64>) -> Result<Self> {
        if a.ncols() != b.nrows() {
            return Err(Error::Input(format!(
                "a factored matrix's factors must agree on the inner dimension: A is {:?}, B is {:?}",
                a.shape(),
                b.shape()
            )));
        }
        Ok(FactoredMatrix { a, b })
    }

    /// From f32 weights (as a model stores them).
    pub fn from_f32(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Result<Self> {
        Self::new(a.mapv(f64::from), b.mapv(f64::from))
    }

    /// `(l, r)`: the shape of the product.
    pub fn shape(&self) -> (usize, usize) {
        (self.a.nrows(), self.b.ncols())
    }

    /// The inner dimension `m`.
    pub fn mdim(&self) -> usize {
        self.a.ncols()
    }

    /// The full product `A·B` `[l, r]`.
    pub fn product(&self) -> Array2<f64> {
        dot(self.a.view(), self.b.view())
    }

    /// `B·A` `[m, m]` (square products only: same nonzero eigenvalues as `A·B`).
    pub fn inner_product(&self) -> Result<Array2<f64>> {
        self.square("BA")?;
        Ok(dot(self.b.view(), self.a.view()))
    }

    /// The transpose, `Bᵀ·Aᵀ`.
    pub fn t(&self) -> FactoredMatrix {
        FactoredMatrix {
            a: self.b.t().to_owned(),
            b: self.a.t().to_owned(),
        }
    }

    /// `self · other`, kept factored through the smaller inner dimension.
    pub fn then(&self, other: &FactoredMatrix) -> Result<FactoredMatrix> {
        if self.shape().1 != other.shape().0 {
            return Err(Error::Input(format!(
                "cannot multiply factored matrices of shapes {:?} and {:?}",
                self.shape(),
                other.shape()
            )));
        }
        let middle = dot(self.b.view(), other.a.view());
        Ok(if self.mdim() <= other.mdim() {
            FactoredMatrix::new(self.a.clone(), dot(middle.view(), other.b.view()))?
        } else {
            FactoredMatrix::new(dot(self.a.view(), middle.view()), other.b.clone())?
        })
    }

    /// `self · m` for a full matrix `m [r, n]`.
    pub fn times(&self, m: ArrayView2<f64>) -> Result<FactoredMatrix> {
        if self.shape().1 != m.nrows() {
            return Err(Error::Input(format!(
                "cannot multiply a factored matrix of shape {:?} by a matrix of shape {:?}",
                self.shape(),
                m.shape()
            )));
        }
        FactoredMatrix::new(self.a.clone(), dot(self.b.view(), m))
    }

    /// `m · self` for a full matrix `m [n, l]`.
    pub fn after(&self, m: ArrayView2<f64>) -> Result<FactoredMatrix> {
        if m.ncols() != self.shape().0 {
            return Err(Error::Input(format!(
                "cannot multiply a matrix of shape {:?} by a factored matrix of shape {:?}",
                m.shape(),
                self.shape()
            )));
        }
        FactoredMatrix::new(dot(m, self.a.view()), self.b.clone())
    }

    /// The SVD of `A·B` through the factors' own SVDs (TransformerLens's construction): with
    /// `A = Ua Sa Vaᵀ` and `B = Ub Sb Vbᵀ`, the middle `Sa Vaᵀ Ub Sb` is small; its SVD
    /// `Um Sm Vmᵀ` gives `U = Ua Um`, `S = Sm`, `V = Vb Vm`.
    pub fn svd(&self) -> Svd {
        let sa = svd(self.a.view());
        let sb = svd(self.b.view());
        let left = &sa.v.t() * &sa.s.view().insert_axis(ndarray::Axis(1));
        let right = &sb.u * &sb.s.view().insert_axis(ndarray::Axis(0));
        let middle = dot(left.view(), right.view());
        let sm = svd(middle.view());
        Svd {
            u: dot(sa.u.view(), sm.u.view()),
            s: sm.s,
            v: dot(sb.v.view(), sm.v.view()),
        }
    }

    /// Eigenvalues of `A·B` (square only): those of the small `B·A`, which has the same nonzero
    /// ones (`A·B` adds only zeros), ordered by [`order_eigenvalues`].
    pub fn eigenvalues(&self) -> Result<Vec<Complex<f64>>> {
        Ok(eigenvalues(self.inner_product()?.view()))
    }

    /// Frobenius norm of `A·B`: `√tr(AᵀA · BBᵀ)`, through the inner dimension (equal to the root
    /// of the sum of squared singular values, TransformerLens's `norm()`).
    pub fn norm(&self) -> f64 {
        let ata = dot(self.a.t(), self.a.view());
        let bbt = dot(self.b.view(), self.b.t());
        (&ata * &bbt).sum().max(0.0).sqrt()
    }

    /// The top-left `k × k` corner of `A·B` (TransformerLens's `get_corner`).
    pub fn corner(&self, k: usize) -> Array2<f64> {
        let (l, r) = self.shape();
        dot(
            self.a.slice(s![..k.min(l), ..]),
            self.b.slice(s![.., ..k.min(r)]),
        )
    }

    fn square(&self, what: &str) -> Result<()> {
        let (l, r) = self.shape();
        if l != r {
            return Err(Error::Input(format!(
                "{what} needs a square factored matrix; this one is {l} × {r}"
            )));
        }
        Ok(())
    }
}

/// TransformerLens's composition score of two circuits: `‖W_A W_B‖ / (‖W_A‖ ‖W_B‖)` (Frobenius).
pub fn composition_score(w_a: &FactoredMatrix, w_b: &FactoredMatrix) -> Result<f64> {
    let denom = w_a.norm() * w_b.norm();
    let num = w_a.then(w_b)?.norm();
    Ok(if denom > 0.0 { num / denom } else { 0.0 })
}
