//! Payload framing and LZ4 block compression for values stored in the KVS.
//!
//! A frame is self-describing:
//!
//! ```text
//! [tag: u8][original length: u64 little-endian][payload]
//!  tag 0 = raw  (payload is the data itself)
//!  tag 1 = lz4  (payload is one LZ4 *block*, no size prefix, no checksum)
//! ```
//!
//! Deciding raw vs lz4 (identical in the pure-Python twin, `wukong/compression.py`):
//!
//! 1. data shorter than `min_size` is raw;
//! 2. data longer than `PROBE_MIN` bytes is first probed (`is_compressible`): compress
//!    `PROBE_WINDOWS` windows of `PROBE_WINDOW` bytes, evenly spaced from the first byte to
//!    the last, each as its own block; unless they shrink below 90% in total, the data is
//!    raw without compressing the rest (a 256 MiB random array costs ~10 µs to judge);
//! 3. otherwise the whole input is compressed, and kept only if below 90% of the input.
//!
//! Below `PROBE_MIN` the probe is skipped: on compressible data it would add up to
//! 8 KiB / n of extra work, while LZ4's own skip-ahead makes a failed full attempt cheap.
//!
//! The decision compares compressed sizes, so both implementations must produce the same
//! compressed bytes: the Python twin is a port of lz4_flex 0.14.0's block encoder (pinned
//! in Cargo.toml), and the parity tests check frames are byte-identical.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::{new_bytes_uninit, ByteView};
use crate::error::NativeError;

pub const TAG_RAW: u8 = 0;
pub const TAG_LZ4: u8 = 1;
pub const HEADER_LEN: usize = 9;
pub const PROBE_WINDOW: usize = 2048;
pub const PROBE_WINDOWS: usize = 4;
pub const PROBE_MIN: usize = 64 * 1024;
/// LZ4 cannot expand a block by more than this factor; a header claiming more is corrupt
/// (and must not make us allocate terabytes).
const MAX_LZ4_RATIO: usize = 255;

/// What `compress` stores: raw (the caller copies the data after a header) or a ready frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Encoded {
    Raw,
    Lz4(Vec<u8>),
}

/// Is `compressed` bytes enough of a saving over `original` bytes to be worth decoding?
#[inline]
fn pays_off(compressed: usize, original: usize) -> bool {
    (compressed as u128) * 10 < (original as u128) * 9
}

/// Start offsets of the probe windows of data of length `n > PROBE_WINDOWS * PROBE_WINDOW`.
pub fn probe_starts(n: usize) -> impl Iterator<Item = usize> {
    let span = (n - PROBE_WINDOW) as u128;
    let last = (PROBE_WINDOWS - 1) as u128;
    (0..PROBE_WINDOWS).map(move |i| (i as u128 * span / last) as usize)
}

/// The cheap probe: would compressing `data` pay off? Deterministic; never looks at more
/// than `PROBE_WINDOWS * PROBE_WINDOW` bytes (all of shorter data).
pub fn is_compressible(data: &[u8]) -> bool {
    let n = data.len();
    if n <= PROBE_WINDOWS * PROBE_WINDOW {
        return pays_off(lz4_flex::block::compress(data).len(), n);
    }
    let compressed: usize = probe_starts(n)
        .map(|s| lz4_flex::block::compress(&data[s..s + PROBE_WINDOW]).len())
        .sum();
    pays_off(compressed, PROBE_WINDOWS * PROBE_WINDOW)
}

fn header(tag: u8, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = tag;
    h[1..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// Decide raw vs lz4 for `data`, compressing it when lz4 wins.
pub fn encode(data: &[u8], min_size: usize) -> Encoded {
    let n = data.len();
    if n < min_size || (n > PROBE_MIN && !is_compressible(data)) {
        return Encoded::Raw;
    }
    // calloc'd, so the untouched tail of the worst-case bound costs no page faults.
    let mut frame = vec![0u8; HEADER_LEN + lz4_flex::block::get_maximum_output_size(n)];
    let written = lz4_flex::block::compress_into(data, &mut frame[HEADER_LEN..])
        .expect("output sized by get_maximum_output_size");
    if !pays_off(written, n) {
        return Encoded::Raw;
    }
    frame[..HEADER_LEN].copy_from_slice(&header(TAG_LZ4, n));
    frame.truncate(HEADER_LEN + written);
    Encoded::Lz4(frame)
}

/// Write the raw frame of `data` into `out` (exactly `HEADER_LEN + data.len()` bytes).
pub fn write_raw_frame(data: &[u8], out: &mut [u8]) {
    out[..HEADER_LEN].copy_from_slice(&header(TAG_RAW, data.len()));
    out[HEADER_LEN..].copy_from_slice(data);
}

/// `compress` as plain Rust: the whole frame in a Vec.
pub fn compress(data: &[u8], min_size: usize) -> Vec<u8> {
    match encode(data, min_size) {
        Encoded::Lz4(frame) => frame,
        Encoded::Raw => {
            let mut out = vec![0u8; HEADER_LEN + data.len()];
            write_raw_frame(data, &mut out);
            out
        }
    }
}

/// A validated frame header: tag, original length, payload.
pub fn parse_frame(frame: &[u8]) -> Result<(u8, usize, &[u8]), NativeError> {
    let corrupt = |why: String| Err(NativeError::CorruptFrame(why));
    if frame.len() < HEADER_LEN {
        return corrupt(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            frame.len()
        ));
    }
    let tag = frame[0];
    let claimed = u64::from_le_bytes(frame[1..HEADER_LEN].try_into().expect("8 bytes"));
    let payload = &frame[HEADER_LEN..];
    match tag {
        TAG_RAW if claimed != payload.len() as u64 => corrupt(format!(
            "raw payload has {} bytes, header says {claimed}",
            payload.len()
        )),
        TAG_LZ4 if payload.is_empty() => corrupt("empty lz4 payload".to_string()),
        TAG_LZ4 if claimed > (payload.len() as u64).saturating_mul(MAX_LZ4_RATIO as u64) => {
            corrupt(format!(
                "header claims {claimed} bytes from {} bytes of lz4 data",
                payload.len()
            ))
        }
        TAG_RAW | TAG_LZ4 => Ok((tag, claimed as usize, payload)),
        _ => corrupt(format!("unknown tag {tag} (expected 0 = raw or 1 = lz4)")),
    }
}

/// Decode a payload of a parsed frame into `out`, which must be exactly its original length.
pub fn decode_into(tag: u8, payload: &[u8], out: &mut [u8]) -> Result<(), NativeError> {
    if tag == TAG_RAW {
        out.copy_from_slice(payload);
        return Ok(());
    }
    let written = lz4_flex::block::decompress_into(payload, out)
        .map_err(|e| NativeError::CorruptFrame(format!("bad lz4 data: {e}")))?;
    if written != out.len() {
        return Err(NativeError::CorruptFrame(format!(
            "lz4 data decodes to {written} bytes, header says {}",
            out.len()
        )));
    }
    Ok(())
}

/// `decompress` as plain Rust.
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, NativeError> {
    let (tag, len, payload) = parse_frame(frame)?;
    let mut out = vec![0u8; len];
    decode_into(tag, payload, &mut out)?;
    Ok(out)
}

#[pyfunction(name = "compress")]
#[pyo3(signature = (data, *, min_size = 1024))]
pub fn py_compress<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    min_size: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let view = ByteView::new(data)?;
    let input = view.as_slice();
    match py.detach(|| encode(input, min_size)) {
        Encoded::Lz4(frame) => Ok(PyBytes::new(py, &frame)),
        Encoded::Raw => {
            // One memcpy straight into the result; no zero-fill, no intermediate Vec.
            let (bytes, out) = new_bytes_uninit(py, HEADER_LEN + input.len())?;
            py.detach(move || unsafe {
                let out = out.as_ptr();
                std::ptr::copy_nonoverlapping(
                    header(TAG_RAW, input.len()).as_ptr(),
                    out,
                    HEADER_LEN,
                );
                std::ptr::copy_nonoverlapping(input.as_ptr(), out.add(HEADER_LEN), input.len());
            });
            Ok(bytes)
        }
    }
}

#[pyfunction(name = "decompress")]
pub fn py_decompress<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let view = ByteView::new(frame)?;
    let (tag, len, payload) = parse_frame(view.as_slice())?;
    let (bytes, out) = new_bytes_uninit(py, len)?;
    py.detach(move || {
        // SAFETY: `out` points at `len` bytes owned by `bytes`, alive for this call. They
        // are zeroed before a slice is formed, so no uninitialised memory is ever read,
        // even by a corrupt block.
        let out = unsafe {
            std::ptr::write_bytes(out.as_ptr(), 0, len);
            std::slice::from_raw_parts_mut(out.as_ptr(), len)
        };
        decode_into(tag, payload, out)
    })?;
    Ok(bytes)
}

#[pyfunction(name = "is_compressible")]
pub fn py_is_compressible(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
    let view = ByteView::new(data)?;
    let input = view.as_slice();
    Ok(py.detach(|| is_compressible(input)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        // xorshift64*: incompressible and reproducible without a rand dependency.
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    #[test]
    fn roundtrip_all_kinds() {
        for data in [
            vec![],
            vec![7u8; 5],
            text(100_000),
            random_bytes(100_000, 3),
            vec![0u8; 1 << 20],
        ] {
            for min_size in [0, 1024] {
                assert_eq!(decompress(&compress(&data, min_size)).unwrap(), data);
            }
        }
    }

    #[test]
    fn small_data_is_raw() {
        let frame = compress(&text(1000), 1024);
        assert_eq!(frame[0], TAG_RAW);
        assert_eq!(&frame[1..9], &1000u64.to_le_bytes());
        assert_eq!(&frame[9..], &text(1000)[..]);
    }

    #[test]
    fn compressible_data_is_lz4() {
        assert_eq!(compress(&text(100_000), 1024)[0], TAG_LZ4);
        assert_eq!(compress(&vec![0u8; 100_000], 1024)[0], TAG_LZ4);
        assert!(is_compressible(&vec![0u8; 10 << 20]));
    }

    #[test]
    fn random_data_is_raw() {
        assert!(!is_compressible(&random_bytes(1 << 20, 1)));
        assert_eq!(compress(&random_bytes(1 << 20, 1), 1024)[0], TAG_RAW);
        assert_eq!(compress(&random_bytes(5000, 2), 1024)[0], TAG_RAW);
    }

    #[test]
    fn probe_windows_cover_both_ends() {
        let n = 1 << 20;
        let starts: Vec<usize> = probe_starts(n).collect();
        assert_eq!(starts.first(), Some(&0));
        assert_eq!(starts.last(), Some(&(n - PROBE_WINDOW)));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = compress(&text(50_000), 0);
        for cut in [0, 1, 8, 9, 10, frame.len() / 2, frame.len() - 1] {
            assert!(
                matches!(decompress(&frame[..cut]), Err(NativeError::CorruptFrame(_))),
                "{cut}"
            );
        }
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let mut frame = compress(b"abc", 0);
        frame[0] = 7;
        let err = decompress(&frame).unwrap_err();
        assert!(err.to_string().contains("unknown tag 7"), "{err}");
    }

    #[test]
    fn absurd_length_is_an_error_not_an_allocation() {
        let mut frame = compress(&text(50_000), 0);
        frame[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decompress(&frame),
            Err(NativeError::CorruptFrame(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..2000 {
            let mut frame = vec![TAG_LZ4];
            let body = random_bytes(64, seed);
            frame.extend_from_slice(&200u64.to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = decompress(&frame);
        }
    }
}
