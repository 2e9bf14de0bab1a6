//! `toylens._toylens`: the native half of the Python package. Thin: it converts arguments and
//! results (arrays as numpy, reports as JSON that `toylens/__init__.py` turns into dicts and
//! arrays) and calls the library. Every call runs on toylens's own thread pool with the GIL
//! released, so the interpreter's thread keeps its floating-point mode and other Python threads
//! run meanwhile; a Rust panic becomes a Python `RuntimeError`, never an abort.

mod alloc;
mod circuits;
mod model;
mod runs;

#[global_allocator]
static ALLOCATOR: alloc::KeepLarge = alloc::KeepLarge::new();

use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A toylens error as the Python exception that fits, with the CLI's message.
pub(crate) fn py_err(e: toylens::Error) -> PyErr {
    use toylens::Error as E;
    let msg = e.to_string();
    match &e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        E::Io { .. } => PyOSError::new_err(msg),
        E::UnknownHook { .. } => PyKeyError::new_err(msg),
        E::Interrupted { .. } => PyKeyboardInterrupt::new_err(msg),
        E::Format { .. } | E::Config { .. } | E::Input(_) => PyValueError::new_err(msg),
    }
}

/// Run `f`, turning a panic into a `RuntimeError` (a panic is a toylens bug; Python must see an
/// exception, not a crash).
pub(crate) fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(PyRuntimeError::new_err(format!(
            "internal error in toylens (please report it): {what}"
        )))
    })
}

/// `f` on toylens's thread pool with the GIL released, panics caught, errors converted.
pub(crate) fn compute<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> toylens::Result<T> + Send,
) -> PyResult<T> {
    guard(|| {
        py.detach(|| toylens::engine::threads::on_pool(f))
            .map_err(py_err)
    })
}

/// A value as the Python object `json.loads` makes of its JSON.
pub(crate) fn to_py<'py, T: serde::Serialize>(
    py: Python<'py>,
    value: &T,
) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| PyRuntimeError::new_err(format!("internal error: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Size toylens's thread pool (all cores unless set before the first call; `RAYON_NUM_THREADS`
/// also works). Returns the size in force: the pool cannot be resized once it runs.
#[pyfunction]
fn set_num_threads(threads: usize) -> usize {
    toylens::engine::threads::init_pool(threads)
}

/// The size of toylens's thread pool.
#[pyfunction]
fn get_num_threads() -> usize {
    toylens::engine::threads::init_pool(0)
}

/// Give back the large blocks toylens keeps for reuse (freed caches, say); returns the bytes.
/// Like `torch.cuda.empty_cache()`: only for memory wanted elsewhere, as the next large call
/// must then fault fresh pages in.
#[pyfunction]
fn empty_cache() -> usize {
    ALLOCATOR.release()
}

/// How many large allocations were served from kept blocks (for the tests).
#[pyfunction]
fn _reused_blocks() -> usize {
    ALLOCATOR.hits()
}

#[pymodule]
fn _toylens(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    toylens::engine::simd::level_from_env().map_err(PyValueError::new_err)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(empty_cache, m)?)?;
    m.add_function(wrap_pyfunction!(_reused_blocks, m)?)?;
    model::register(m)?;
    circuits::register(m)?;
    runs::register(m)?;
    Ok(())
}
