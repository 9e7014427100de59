//! Run-time kernel selection: the best path the CPU supports, or the one `BITNET_KERNEL`
//! (`scalar`, `avx2`, `avx512`, `amx`, `neon`, `neon-dot`) forces — for parity tests and
//! benchmarks.

use std::sync::OnceLock;

/// A ternary dot-product implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-512 VNNI `vpdpbusd` (256-bit, with AVX512VL).
    Avx512Vnni,
    /// AMX int8 tiles (`tdpbusd`) for multi-token GEMMs; single-token work and short batches
    /// take the AVX-512 VNNI kernels.
    Amx,
    /// aarch64 baseline NEON (`smlal`/`smlal2` into i16, `sadalp` into i32).
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl Kernel {
    /// Name as `BITNET_KERNEL` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512",
            Kernel::Amx => "amx",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neon-dot",
        }
    }

    /// Whether this machine can run it.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => Kernel::Avx512Vnni.available() && crate::amx::available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            _ => false,
        }
    }

    /// Every kernel this machine can run, scalar first.
    pub fn all_available() -> Vec<Kernel> {
        [
            Kernel::Scalar,
            Kernel::Avx2,
            Kernel::Avx512Vnni,
            Kernel::Amx,
            Kernel::Neon,
            Kernel::NeonDot,
        ]
        .into_iter()
        .filter(|k| k.available())
        .collect()
    }
}

/// The kernel in use: `BITNET_KERNEL` if set and not empty (falling back to scalar, with a
/// message, when the CPU cannot run it or the name is unknown), else the best available.
pub fn active() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        if let Some(name) = std::env::var("BITNET_KERNEL").ok().filter(|n| !n.is_empty()) {
            let want = match name.as_str() {
                "scalar" => Some(Kernel::Scalar),
                "avx2" => Some(Kernel::Avx2),
                "avx512" => Some(Kernel::Avx512Vnni),
                "amx" => Some(Kernel::Amx),
                "neon" => Some(Kernel::Neon),
                "neon-dot" => Some(Kernel::NeonDot),
                _ => None,
            };
            match want {
                Some(k) if k.available() => return k,
                _ => eprintln!(
                    "BITNET_KERNEL={name}: not available on this CPU or unknown (scalar, avx2, avx512, amx, neon, neon-dot); using scalar"
                ),
            }
            return Kernel::Scalar;
        }
        Kernel::all_available().last().copied().unwrap_or(Kernel::Scalar)
    })
}

/// `out[t] = Σ c·q` of one weight row with activation rows `q[t·stride..]` (`t < out.len()`),
/// on `kernel`. `q` must hold `(out.len() − 1)·stride + blocks.len()·128` values.
#[inline]
pub fn row_dot(
    kernel: Kernel,
    blocks: &[crate::BlockI2],
    q: &[i8],
    stride: usize,
    out: &mut [i32],
) {
    let need = out.len().saturating_sub(1) * stride + blocks.len() * crate::ternary::QK_I2;
    assert!(
        q.len() >= need,
        "activation rows shorter than the weight row"
    );
    match kernel {
        // SAFETY: `available()` checked the CPU features when the kernel was chosen (`active`
        // only returns available kernels; tests skip unavailable ones) and the length was
        // asserted above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { crate::avx2::dot_avx2(blocks, q, stride, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni | Kernel::Amx => unsafe { crate::x86::dot_vnni(blocks, q, stride, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { crate::neon::dot_neon(blocks, q, stride, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDot => unsafe { crate::neon::dot_dotprod(blocks, q, stride, out) },
        _ => {
            for (t, o) in out.iter_mut().enumerate() {
                let row = &q[t * stride..];
                *o = blocks
                    .iter()
                    .zip(row.chunks_exact(crate::ternary::QK_I2))
                    .map(|(b, qb)| b.vec_dot_i8(qb))
                    .sum();
            }
        }
    }
}

/// `Σ c·q` of two weight rows (same length) with `outa.len() == outb.len()` activation rows:
/// [`row_dot`] for each row, but the AVX-512 VNNI kernel computes both rows in one pass (a
/// 2-row × 8-token register block: each activation vector loaded once for two rows). Integer
/// sums, so the result is identical to two [`row_dot`] calls on every kernel.
#[inline]
pub fn row_dot2(
    kernel: Kernel,
    rows: [&[crate::BlockI2]; 2],
    q: &[i8],
    stride: usize,
    outa: &mut [i32],
    outb: &mut [i32],
) {
    assert!(
        rows[0].len() == rows[1].len() && outa.len() == outb.len(),
        "row_dot2: rows or outputs of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, Kernel::Avx512Vnni | Kernel::Amx) && outa.len() >= 8 {
        let need = (outa.len() - 1) * stride + rows[0].len() * crate::ternary::QK_I2;
        assert!(
            q.len() >= need,
            "activation rows shorter than the weight row"
        );
        // SAFETY: `available()` checked the features when the kernel was chosen; the length
        // was asserted above.
        unsafe { crate::x86::dot_vnni_2rows(rows, q, stride, outa, outb) };
        return;
    }
    row_dot(kernel, rows[0], q, stride, outa);
    row_dot(kernel, rows[1], q, stride, outb);
}
