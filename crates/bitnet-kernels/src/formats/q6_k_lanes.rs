//! Q6_K with its quants reordered for the AVX-512 VNNI output head: the bytes of a
//! [`BlockQ6K`] (`ql`, `qh`, `scales`, `d`), but the quant stored at position `p` (in Q6_K's
//! element order) is element [`lane_element`]`(p)` of the block. Unpacked into four 64-byte
//! vectors as Q6_K is, lane `l` (bytes `4l..4l+4`) of every vector then holds four quants of
//! sub-block `l`, so a lane's sub-block scale is the same in all four vectors: one scale
//! multiply per block and lane instead of one per vector (`q6k_vnni`). Not a GGUF type: the
//! loader converts a Q6_K head to it on CPUs that run the VNNI kernels, exactly (same quants,
//! scales and `d`), and [`BlockQ6KLanes::to_q6k`] converts back.

use super::{BlockQ6K, QK_K};
use crate::quant::QuantBlock;

/// One Q6_K block in the VNNI lane order: a [`BlockQ6K`]'s bytes whose quants are reordered
/// (so the inner block is not a valid Q6_K block, and stays private).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6KLanes(BlockQ6K);

const _: () = assert!(std::mem::size_of::<BlockQ6KLanes>() == 210);

/// The block element stored at position `p` (`p < 256`): with `p = 64j + 4l + i` (vector `j`,
/// lane `l`, byte `i`), element `16l + 4j + i` — sub-block `l`.
#[inline]
pub const fn lane_element(p: usize) -> usize {
    let (j, l, i) = (p / 64, (p % 64) / 4, p % 4);
    16 * l + 4 * j + i
}

impl BlockQ6KLanes {
    /// The same block in the lane order (exact: the quants move, nothing is re-quantized).
    pub fn from_q6k(b: &BlockQ6K) -> Self {
        let q = b.quants();
        let mut out = *b;
        out.set_quants(&std::array::from_fn(|p| q[lane_element(p)]));
        BlockQ6KLanes(out)
    }

    /// The block in Q6_K's element order (the inverse of [`BlockQ6KLanes::from_q6k`]).
    pub fn to_q6k(&self) -> BlockQ6K {
        let stored = self.0.quants();
        let mut q = [0u8; QK_K];
        for (p, &v) in stored.iter().enumerate() {
            q[lane_element(p)] = v;
        }
        let mut out = self.0;
        out.set_quants(&q);
        out
    }

    /// The stored bytes (`ql`, `qh`, `scales`, `d` as in Q6_K; the quants in the lane order),
    /// for the kernels' loads.
    pub(crate) fn raw(&self) -> &BlockQ6K {
        &self.0
    }
}

impl QuantBlock for BlockQ6KLanes {
    const BLOCK: usize = QK_K;
    const NAME: &'static str = "Q6_K (VNNI lane order)";

    fn to_float(&self, out: &mut [f32]) {
        self.to_q6k().to_float(out);
    }

    fn from_float(x: &[f32]) -> Self {
        BlockQ6KLanes::from_q6k(&BlockQ6K::from_float(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order is a permutation that keeps each 4-byte lane inside one sub-block, the same
    /// sub-block in all four vectors.
    #[test]
    fn lane_order_is_a_permutation_by_sub_block() {
        let mut seen = [false; QK_K];
        for p in 0..QK_K {
            let e = lane_element(p);
            assert!(!seen[e], "element {e} stored twice");
            seen[e] = true;
            assert_eq!(
                e / 16,
                (p % 64) / 4,
                "position {p}: element {e} not in its lane's sub-block"
            );
        }
    }

    /// Converting moves quants without changing a value, and converts back bit for bit.
    #[test]
    fn conversion_is_exact_both_ways() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..20 {
            let x: Vec<f32> = (0..QK_K)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let b = BlockQ6K::from_float(&x);
            let l = BlockQ6KLanes::from_q6k(&b);
            assert_eq!(l.to_q6k(), b);
            let (q, ql) = (b.quants(), l.raw().quants());
            for p in 0..QK_K {
                assert_eq!(ql[p], q[lane_element(p)], "position {p}");
            }
            let (mut a, mut c) = ([0f32; QK_K], [0f32; QK_K]);
            b.to_float(&mut a);
            l.to_float(&mut c);
            assert_eq!(a.map(f32::to_bits), c.map(f32::to_bits));
            assert_eq!(BlockQ6KLanes::from_float(&x), l);
        }
    }
}
