//! The crate's one error type, and its single mapping to Python exceptions.

use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeError {
    /// A hash ring needs at least one node.
    EmptyRing,
    /// A frame that cannot be decoded: truncated, unknown tag, bad lengths, bad LZ4 data.
    CorruptFrame(String),
}

impl fmt::Display for NativeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeError::EmptyRing => f.write_str("HashRing needs at least one node"),
            NativeError::CorruptFrame(why) => write!(f, "corrupt frame: {why}"),
        }
    }
}

impl std::error::Error for NativeError {}

impl From<NativeError> for PyErr {
    fn from(err: NativeError) -> PyErr {
        // Both kinds are bad argument values; `except ValueError` is the documented contract.
        PyValueError::new_err(err.to_string())
    }
}
