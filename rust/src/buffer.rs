//! Zero-copy access to Python buffers, and `bytes` allocated without initialising them.

use std::ptr::NonNull;

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{ffi, Bound};

/// A read-only view of any object exporting the buffer protocol, as raw bytes.
///
/// Requested as `PyBUF_SIMPLE`: the exporter must be C-contiguous and the item format is
/// ignored, so a float64 numpy array is seen as its `nbytes` bytes (PyO3's typed
/// `PyBuffer<u8>` would reject its "d" format). Released on drop.
pub struct ByteView {
    view: Box<ffi::Py_buffer>,
}

impl ByteView {
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<ByteView> {
        // Boxed: the exporter may keep pointers into the Py_buffer, so it must not move.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(ByteView { view })
    }

    pub fn as_slice(&self) -> &[u8] {
        let len = self.view.len as usize;
        if len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` until release.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, len) }
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // Drop runs with the GIL held: a ByteView is only created and dropped in pyfunctions.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

/// Pointer into a fresh `bytes` object, movable into a GIL-released closure.
#[derive(Clone, Copy)]
pub struct OutPtr(NonNull<u8>);

// SAFETY: the pointed-to `bytes` is not yet visible to any other code; only the closure
// that receives the pointer writes to it, while the caller keeps the object alive.
unsafe impl Send for OutPtr {}

impl OutPtr {
    pub fn as_ptr(self) -> *mut u8 {
        self.0.as_ptr()
    }
}

/// A new `bytes` of `len` bytes whose contents are NOT initialised, and a pointer to them.
/// The caller must write all `len` bytes before the object is returned to Python.
pub fn new_bytes_uninit(py: Python<'_>, len: usize) -> PyResult<(Bound<'_, PyBytes>, OutPtr)> {
    let len_ssize = isize::try_from(len).map_err(|_| PyMemoryError::new_err(len))?;
    unsafe {
        let obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len_ssize);
        let bytes = Bound::from_owned_ptr_or_err(py, obj)?.cast_into_unchecked::<PyBytes>();
        let buf = NonNull::new(ffi::PyBytes_AsString(obj).cast::<u8>())
            .expect("PyBytes_AsString of a new bytes object");
        Ok((bytes, OutPtr(buf)))
    }
}
