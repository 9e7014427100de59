//! PyTorch's float32 `tensor.abs().mean()` on CPU, reproduced bit for bit, so that converting
//! master weights gives exactly the scale that llama.cpp's and bitnet.cpp's Python converters
//! write (they ternarize with `w.abs().mean()` in eager torch).
//!
//! torch sums a contiguous float32 tensor with `cascade_sum`: the range is split over threads
//! by `at::parallel_for` (grain 32768, chunk = ceil(n / threads)); each chunk is summed as
//! vectors of 8 lanes (its `Vectorized<float>` reduction width, measured against torch 2.15 on
//! an AVX-512 machine) with four interleaved accumulators and a four-level cascade
//! (`multi_row_sum`), lanes then added in order; the per-thread sums are added in thread order.
//! The result therefore depends on torch's thread count, which is why it is a parameter.

const GRAIN: usize = 32768;
const LANES: usize = 8;
const ILP: usize = 4;

type V = [f32; LANES];

fn add(a: &mut V, b: &V) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

fn load(x: &[f32], vec_index: usize) -> V {
    let mut v = [0f32; LANES];
    v.copy_from_slice(&x[vec_index * LANES..(vec_index + 1) * LANES]);
    v
}

fn ceil_log2(x: usize) -> usize {
    if x <= 1 {
        0
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// `multi_row_sum<Vec, 4>` over `size` groups of four vectors (indexed loops kept to mirror
/// the C++ line by line).
#[allow(clippy::needless_range_loop)]
fn multi_row_sum(x: &[f32], size: usize) -> [V; ILP] {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..ILP {
                add(&mut acc[0][k], &load(x, i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; LANES];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..ILP {
            add(&mut acc[0][k], &load(x, i * ILP + k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    acc[0]
}

/// `vectorized_inner_sum` of one contiguous range.
#[allow(clippy::needless_range_loop)]
fn range_sum(x: &[f32]) -> f32 {
    let n_vec = x.len() / LANES;
    let size_ilp = n_vec / ILP;
    let mut partial = multi_row_sum(x, size_ilp);
    for v in size_ilp * ILP..n_vec {
        add(&mut partial[0], &load(x, v));
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    let mut acc = 0f32;
    for &v in &x[n_vec * LANES..] {
        acc += v;
    }
    for &l in &partial[0] {
        acc += l;
    }
    acc
}

/// torch's `x.abs().mean()` for a contiguous float32 tensor with `threads` intra-op threads.
pub fn torch_abs_mean(x: &[f32], threads: usize) -> f32 {
    let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let n = abs.len();
    if n == 0 {
        return f32::NAN;
    }
    let sum = if n < GRAIN || threads <= 1 {
        range_sum(&abs)
    } else {
        let t = threads.min(n.div_ceil(GRAIN));
        let chunk = n.div_ceil(t);
        let parts: Vec<f32> = abs.chunks(chunk).map(range_sum).collect();
        // The [threads] buffer is reduced with the scalar path: added in order from zero.
        parts.iter().fold(0f32, |a, &b| a + b)
    };
    sum / n as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sums_are_exact() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 - 3.0).collect();
        let exact = x.iter().map(|v| v.abs() as f64).sum::<f64>() / 1000.0;
        assert_eq!(torch_abs_mean(&x, 2), exact as f32);
    }
}
