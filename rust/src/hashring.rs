//! Consistent-hash ring: which KVS server holds a key.
//!
//! Every server (node) owns `vnodes` points on a 64-bit circle; the point of vnode `v` of
//! node `name` is `hash64(f"{name}#{v}")`. A key lives on the node owning the first point
//! clockwise from `hash64(key)` (the first point `>= hash`, wrapping to the smallest point).
//! Points depend on the node's name, not its position in the list, so adding or removing
//! one of N servers moves only the keys of the arcs it gains or loses (about 1/N of them).
//!
//! State: `points` holds every vnode point sorted ascending (ties broken by node index, so
//! the order is total and deterministic); `owners[i]` is the index into `nodes` of the node
//! owning `points[i]`. Both are built once and never change.
//!
//! `hash64` is FNV-1a 64 followed by the murmur3 64-bit finalizer: FNV-1a alone mixes the
//! last bytes of short, similar strings ("host:6379#17") poorly, which clusters vnodes; the
//! finalizer fixes that and both steps are a few lines in pure Python (`wukong/hashring.py`
//! is the bit-identical reference).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::NativeError;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `data`, then murmur3's fmix64 finalizer.
#[inline]
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `hash64(data) -> int`: the ring's hash, exposed for the parity tests.
#[pyfunction(name = "hash64")]
pub fn py_hash64(data: &[u8]) -> u64 {
    hash64(data)
}

/// The ring itself: plain Rust, no Python.
#[derive(Debug, Clone)]
pub struct Ring {
    nodes: Vec<String>,
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    pub fn new(nodes: Vec<String>, vnodes: usize) -> Result<Ring, NativeError> {
        if nodes.is_empty() || vnodes == 0 {
            return Err(NativeError::EmptyRing);
        }
        let mut placed: Vec<(u64, u32)> = Vec::with_capacity(nodes.len() * vnodes);
        for (index, name) in nodes.iter().enumerate() {
            for v in 0..vnodes {
                placed.push((hash64(format!("{name}#{v}").as_bytes()), index as u32));
            }
        }
        placed.sort_unstable();
        let (points, owners) = placed.into_iter().unzip();
        Ok(Ring {
            nodes,
            points,
            owners,
        })
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    #[inline]
    pub fn node_for(&self, key: &[u8]) -> usize {
        let h = hash64(key);
        let i = self.points.partition_point(|&p| p < h);
        let i = if i == self.points.len() { 0 } else { i };
        self.owners[i] as usize
    }

    pub fn nodes_for<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<usize> {
        keys.iter().map(|k| self.node_for(k.as_ref())).collect()
    }
}

/// `HashRing(nodes, vnodes=160)`: Python face of [`Ring`].
#[pyclass(name = "HashRing", module = "wukong_native._native", frozen)]
pub struct PyHashRing {
    ring: Ring,
}

#[pymethods]
impl PyHashRing {
    #[new]
    #[pyo3(signature = (nodes, vnodes = 160))]
    fn new(nodes: Vec<String>, vnodes: usize) -> PyResult<Self> {
        Ok(PyHashRing {
            ring: Ring::new(nodes, vnodes)?,
        })
    }

    #[getter]
    fn nodes(&self) -> Vec<String> {
        self.ring.nodes().to_vec()
    }

    fn node_for(&self, key: &[u8]) -> usize {
        self.ring.node_for(key)
    }

    fn nodes_for<'py>(&self, py: Python<'py>, keys: Vec<Bound<'py, PyBytes>>) -> Vec<usize> {
        // bytes are immutable and `keys` keeps them alive, so the slices stay valid while
        // the hashing runs without the GIL.
        let slices: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        py.detach(|| self.ring.nodes_for(&slices))
    }

    fn __len__(&self) -> usize {
        self.ring.nodes().len()
    }

    fn __repr__(&self) -> String {
        format!("HashRing({:?})", self.ring.nodes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:6379")).collect()
    }

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("job-1/task-{i}").into_bytes())
            .collect()
    }

    #[test]
    fn hash64_known_values() {
        // FNV-1a 64 of "" is the offset basis; these pin the finalized values for the
        // Python reference to match.
        assert_eq!(hash64(b""), fmix64(FNV_OFFSET));
        assert_eq!(hash64(b"a"), fmix64(0xaf63_dc4c_8601_ec8c));
    }

    #[test]
    fn empty_ring_is_an_error() {
        assert_eq!(Ring::new(vec![], 160).unwrap_err(), NativeError::EmptyRing);
    }

    #[test]
    fn single_node_gets_everything() {
        let ring = Ring::new(servers(1), 160).unwrap();
        assert!(ring.nodes_for(&keys(1000)).iter().all(|&i| i == 0));
    }

    #[test]
    fn spread_is_even_within_20_percent() {
        let ring = Ring::new(servers(3), 160).unwrap();
        let mut counts = [0usize; 3];
        for i in ring.nodes_for(&keys(100_000)) {
            counts[i] += 1;
        }
        for c in counts {
            assert!((c as f64 - 33_333.0).abs() < 0.2 * 33_333.0, "{counts:?}");
        }
    }

    #[test]
    fn adding_a_server_moves_about_one_nth() {
        let ks = keys(100_000);
        let before = Ring::new(servers(3), 160).unwrap();
        let after = Ring::new(servers(4), 160).unwrap();
        let moved = before
            .nodes_for(&ks)
            .iter()
            .zip(after.nodes_for(&ks))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(moved <= 30_000, "{moved} of 100000 keys moved");
    }

    #[test]
    fn placement_depends_on_names_not_positions() {
        let ks = keys(10_000);
        let forward = Ring::new(servers(3), 160).unwrap();
        let mut reversed_names = servers(3);
        reversed_names.reverse();
        let reversed = Ring::new(reversed_names, 160).unwrap();
        for (a, b) in forward
            .nodes_for(&ks)
            .into_iter()
            .zip(reversed.nodes_for(&ks))
        {
            assert_eq!(forward.nodes()[a], reversed.nodes()[b]);
        }
    }
}
