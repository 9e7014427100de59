//! Ternary GEMM on AMX int8 tiles (Intel Sapphire Rapids and later): `TDPBUSD` multiplies a
//! 16×64 tile of unsigned bytes by a 64×16 tile of signed bytes into a 16×16 tile of i32 sums,
//! 16384 multiply-adds per instruction.
//!
//! Layouts (Intel SDM, "Intel AMX", TDPBUSD):
//! - A (u8): 16 weight rows × 64 consecutive 2-bit codes `c ∈ {0,1,2}` of one 64-column chunk,
//!   unpacked from [`BlockI2`] (byte m of a block holds elements m, m+32, m+64, m+96 at shifts
//!   6, 4, 2, 0) into a per-thread scratch of 32 rows × K bytes, stored tile by tile (each
//!   tile load reads 1 KiB of consecutive bytes);
//! - B (i8, "VNNI" layout): 16 rows of 64 bytes; row `kk` holds, for each of 16 tokens `n`, the
//!   four activations `q[n][4kk .. 4kk+4]` of the chunk. Packed once per matmul.
//! - C (i32): 16 weight rows × 16 tokens.
//!
//! The kernel computes the same exact integer sums `Σ c·q` as every other kernel (scalar twin:
//! [`BlockI2::vec_dot_i8`]), so the callers' f32 epilogue gives bit-identical results.
//! Register blocking: two A tiles (32 rows) × two B tiles (32 tokens) into four C tiles
//! (tmm4–7), so each tile load feeds two `TDPBUSD`.
//!
//! Linux hands out the AMX register state only after `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`; [`available`] makes that request once and reports whether it held.

#![cfg(target_arch = "x86_64")]

use crate::act::QuantizedActs;
use crate::ternary::{BlockI2, TernaryMatrix, QK_I2};
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Weight rows per task (two A tiles).
const ROWS: usize = 32;
/// Tokens per B tile.
const TOK: usize = 16;
/// Bytes of K per tile (64 codes / activations).
const KB: usize = 64;

/// Whether the CPU has AMX-TILE, AMX-INT8 and AVX2 and the OS granted this process the tile
/// state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7 (read only when the maximum leaf is ≥ 7): EDX bit 24 AMX-TILE, 25 AMX-INT8.
        let max = __cpuid(0).eax;
        let ebx7 = if max >= 7 {
            __cpuid_count(7, 0)
        } else {
            __cpuid_count(0, 0)
        };
        let cpu = max >= 7 && (ebx7.edx >> 24) & 1 == 1 && (ebx7.edx >> 25) & 1 == 1;
        // AVX2 for the code unpacking; the permission request last (it changes process state).
        cpu && std::is_x86_feature_detected!("avx2") && request_tile_permission()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted XSAVE
    // features; it reads and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Tile configuration (palette 1): every tile 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<TileConfig>() == 64);

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Activations of `n` tokens (`q[t·kp ..]`, `kp` a multiple of 128) repacked into B tiles:
/// token tile `tt`, chunk `j` at `((tt·chunks + j)·16 + kk)·64 + 4·n + i` = `q[16tt+n][64j+4kk+i]`;
/// tokens past `n` are zero.
pub fn pack_acts(q: &[i8], kp: usize, n: usize) -> Vec<i8> {
    let (chunks, tiles) = (kp / KB, n.div_ceil(TOK));
    let mut b = vec![0i8; tiles * chunks * 1024];
    for t in 0..n {
        let (tt, col) = (t / TOK, t % TOK);
        let row = &q[t * kp..(t + 1) * kp];
        for j in 0..chunks {
            let tile = &mut b[(tt * chunks + j) * 1024..][..1024];
            for kk in 0..16 {
                let src = &row[j * KB + 4 * kk..j * KB + 4 * kk + 4];
                tile[kk * 64 + 4 * col..kk * 64 + 4 * col + 4].copy_from_slice(src);
            }
        }
    }
    b
}

thread_local! {
    /// Unpacked codes of the current 32-row block (32 × K bytes).
    static CODES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[t·rows + r] = (Σ c·q − Σq_t) / s_t · scale` — the ternary matmul of
/// [`crate::ops::ternary_matmul_with`], same f32 epilogue, so results are bit-identical to
/// the other kernels — on AMX tiles, 32-row blocks split over the rayon pool.
///
/// # Panics
/// If [`available`] is false or the shapes disagree.
pub fn ternary_matmul(w: &TernaryMatrix, x: &QuantizedActs, out: &mut [f32]) {
    assert!(available(), "AMX is not available on this CPU/OS");
    let (n, kp, rows) = (x.n(), x.k_padded(), w.rows());
    assert!(
        kp == w.cols_padded() && kp % QK_I2 == 0 && out.len() >= rows * n,
        "amx::ternary_matmul shapes"
    );
    let b = pack_acts(x.data(), kp, n);
    let dst = OutPtr(out.as_mut_ptr());
    let dst = &dst;
    let blocks = rows.div_ceil(ROWS);
    (0..blocks).into_par_iter().for_each(|blk| {
        CODES.with(|c| {
            let mut codes = c.borrow_mut();
            codes.resize(ROWS * kp, 0);
            let r0 = blk * ROWS;
            let nr = (rows - r0).min(ROWS);
            for i in 0..ROWS {
                if i < nr {
                    // SAFETY: AVX2 was checked by `available()`.
                    unsafe { unpack_row(w.row_blocks(r0 + i), i, &mut codes) };
                } else {
                    for j in 0..kp / KB {
                        codes[a_offset(i, j)..a_offset(i, j) + KB].fill(0);
                    }
                }
            }
            let epilogue = |t: usize, sums: &[i32]| {
                let (sum, st) = (x.sum(t), x.scale(t));
                for (i, &v) in sums[..nr].iter().enumerate() {
                    let y = (v - sum) as f32 / st * w.scale();
                    // SAFETY: t < n and r0 + i < rows, so the index is inside `out` (asserted
                    // above); blocks cover disjoint row ranges, so no two tasks write the same
                    // element, and nothing reads `out` until the parallel loop has ended.
                    unsafe { *dst.0.add(t * rows + r0 + i) = y };
                }
            };
            // SAFETY: `available()` checked AMX and the tile permission; `codes` holds 32 rows
            // of `kp` codes and `b` the packed activations of `n` tokens.
            unsafe { block(&codes, &b, kp, n, epilogue) };
        })
    });
}

/// `out` shared by the row-block tasks, each writing only its own rows.
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `ternary_matmul`), never read them.
unsafe impl Sync for OutPtr {}

/// Where row `i` (< 32) of chunk `j` starts in the A scratch: tiles are stored whole and in
/// the order they are loaded (chunk 0 rows 0-15, chunk 0 rows 16-31, chunk 1 …), so every
/// `tileloadd` of A reads 1 KiB of consecutive bytes.
#[inline(always)]
fn a_offset(i: usize, j: usize) -> usize {
    ((j * 2 + i / 16) * 16 + i % 16) * KB
}

/// Writes row `i`'s 2-bit codes as bytes, in element order, into the A scratch layout of
/// [`a_offset`].
///
/// # Safety
/// The CPU must support AVX2 (the scratch size is asserted).
#[target_feature(enable = "avx2")]
unsafe fn unpack_row(blocks: &[BlockI2], i: usize, codes: &mut [u8]) {
    assert!(
        i < ROWS && codes.len() >= ROWS * blocks.len() * QK_I2,
        "unpack_row: destination too short"
    );
    let m = _mm256_set1_epi8(3);
    for (bi, b) in blocks.iter().enumerate() {
        // SAFETY: `b.qs` is 32 bytes; the stores write 64 bytes at `a_offset(i, 2bi)` and at
        // `a_offset(i, 2bi + 1)`, both < 32 · blocks · 128 ≤ codes.len() (asserted).
        unsafe {
            if bi % 2 == 0 {
                crate::x86::prefetch_ahead(b, 1);
            }
            let v = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
            let p0 = codes.as_mut_ptr().add(a_offset(i, 2 * bi)) as *mut __m256i;
            let p1 = codes.as_mut_ptr().add(a_offset(i, 2 * bi + 1)) as *mut __m256i;
            _mm256_storeu_si256(p0, _mm256_and_si256(_mm256_srli_epi16(v, 6), m));
            _mm256_storeu_si256(p0.add(1), _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
            _mm256_storeu_si256(p1, _mm256_and_si256(_mm256_srli_epi16(v, 2), m));
            _mm256_storeu_si256(p1.add(1), _mm256_and_si256(v, m));
        }
    }
}

/// One 32-row block against every token: calls `epilogue(t, sums)` for each token `t < n` with
/// the 32 rows' sums.
///
/// # Safety
/// AMX-INT8 usable by this thread's process; `codes` holds 32 rows of `kp` codes in the
/// [`a_offset`] layout and `b` the
/// packed activations of [`pack_acts`] for `n` tokens.
unsafe fn block(codes: &[u8], b: &[i8], kp: usize, n: usize, epilogue: impl Fn(usize, &[i32])) {
    let chunks = kp / KB;
    let mut c = [0i32; ROWS * 2 * TOK];
    let mut col = [0i32; ROWS];
    let a0 = codes.as_ptr();
    // SAFETY: the rows 16-31 tile of chunk 0 (caller contract: 32 rows of `kp` codes).
    let a1 = unsafe { a0.add(a_offset(16, 0)) };
    // SAFETY (whole block): the tile configuration is valid (palette 1, eight 16×64 tiles);
    // every tileloadd reads 16 rows of 64 bytes inside `codes` (1 KiB tiles at 2 KiB · j and
    // 2 KiB · j + 1 KiB, chunk j < kp/64) or
    // inside one 1 KiB tile of `b`; every tilestored writes 16 rows of 64 bytes inside `c`
    // (stride 128 bytes, 32 rows). The tile registers are not used by compiled Rust code.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack));
        let mut tt = 0;
        let tiles = n.div_ceil(TOK);
        while tt < tiles {
            let pair = tt + 1 < tiles;
            let b0 = b.as_ptr().add(tt * chunks * 1024);
            let b1 = if pair { b0.add(chunks * 1024) } else { b0 };
            asm!(
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            for j in 0..chunks {
                asm!(
                    "tileloadd tmm0, [{a0} + {s64}*1]",
                    "tileloadd tmm1, [{a1} + {s64}*1]",
                    "tileloadd tmm2, [{b0} + {s64}*1]",
                    "tdpbusd tmm4, tmm0, tmm2",
                    "tdpbusd tmm6, tmm1, tmm2",
                    a0 = in(reg) a0.add(j * 2048),
                    a1 = in(reg) a1.add(j * 2048),
                    b0 = in(reg) b0.add(j * 1024),
                    s64 = in(reg) 64usize,
                    options(nostack, readonly)
                );
                if pair {
                    asm!(
                        "tileloadd tmm3, [{b1} + {s64}*1]",
                        "tdpbusd tmm5, tmm0, tmm3",
                        "tdpbusd tmm7, tmm1, tmm3",
                        b1 = in(reg) b1.add(j * 1024),
                        s64 = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
            }
            // C scratch: 32 rows × 32 tokens of i32 (128-byte rows).
            let cp = c.as_mut_ptr() as *mut u8;
            asm!(
                "tilestored [{c0} + {s}*1], tmm4",
                "tilestored [{c1} + {s}*1], tmm5",
                "tilestored [{c2} + {s}*1], tmm6",
                "tilestored [{c3} + {s}*1], tmm7",
                c0 = in(reg) cp,
                c1 = in(reg) cp.add(64),
                c2 = in(reg) cp.add(16 * 128),
                c3 = in(reg) cp.add(16 * 128 + 64),
                s = in(reg) 128usize,
                options(nostack)
            );
            let t0 = tt * TOK;
            let nt = (n - t0).min(if pair { 2 * TOK } else { TOK });
            for k in 0..nt {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = c[i * 2 * TOK + k];
                }
                epilogue(t0 + k, &col);
            }
            tt += 2;
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
