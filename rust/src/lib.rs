//! `wukong_native._native`: the compiled hot paths of wukong's storage layer.
//! Only wiring lives here; see `hashring.rs` and `compress.rs`.

use pyo3::prelude::*;

mod buffer;
pub mod compress;
pub mod error;
pub mod hashring;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<hashring::PyHashRing>()?;
    m.add_function(wrap_pyfunction!(hashring::py_hash64, m)?)?;
    m.add_function(wrap_pyfunction!(compress::py_compress, m)?)?;
    m.add_function(wrap_pyfunction!(compress::py_decompress, m)?)?;
    m.add_function(wrap_pyfunction!(compress::py_is_compressible, m)?)?;
    m.add("TAG_RAW", compress::TAG_RAW)?;
    m.add("TAG_LZ4", compress::TAG_LZ4)?;
    m.add("HEADER_LEN", compress::HEADER_LEN)?;
    Ok(())
}
