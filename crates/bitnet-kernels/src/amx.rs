//! Ternary GEMM on AMX int8 tiles (Intel Sapphire Rapids and later): `TDPBUSD` multiplies a
//! 16×64 tile of unsigned bytes by a 64×16 tile of signed bytes into a 16×16 tile of i32 sums,
//! 16384 multiply-adds per instruction.
//!
//! Layouts (Intel SDM, "Intel AMX", TDPBUSD):
//! - A (u8): 16 weight rows × 64 consecutive 2-bit codes `c ∈ {0,1,2}` of one 64-column chunk,
//!   unpacked from [`BlockI2`] (byte m of a block holds elements m, m+32, m+64, m+96 at shifts
//!   6, 4, 2, 0) into a per-thread scratch, stored tile by tile (each tile load reads 1 KiB of
//!   consecutive bytes), one 128-column block of the 32 rows at a time, just before its tiles
//!   are loaded (4 KiB, so the loads hit L1; kept for the later token passes when there are
//!   more than 32 tokens);
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
/// Blocks of codes unpacked ahead of the tiles that load them, so that a tile load does not
/// read bytes still in flight from the stores just before it (`amx_direct`, 1 thread: the same
/// at 8–32 tokens, 5–10 % faster at 128 than unpacking just before the loads).
const AHEAD: usize = 2;
/// Slots of the unpacked-code ring (one pass of tokens): more than [`AHEAD`], so a slot is
/// rewritten only after the tiles of its last block have been loaded.
const RING: usize = 4;

/// Whether the CPU has AMX-TILE, AMX-INT8 and AVX-512 F/BW and the OS granted this process the
/// tile state.
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
        // AVX-512 F/BW for the code unpacking; the permission request last (it changes
        // process state).
        cpu && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && request_tile_permission()
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

/// 64 bytes on a 64-byte boundary: the unit of the tile buffers. A tile row that straddles two
/// cache lines makes `tileloadd` several times slower (measured: 16-byte-aligned buffers cost
/// 56 instead of 15 ns per 32 × 64 chunk), and `Vec<u8>` guarantees no alignment.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line(pub [u8; 64]);
const _: () = assert!(std::mem::size_of::<Line>() == 64 && std::mem::align_of::<Line>() == 64);

/// Activations of `n` tokens (`q[t·kp ..]`, `kp` a multiple of 128) repacked into B tiles:
/// token tile `tt`, chunk `j` at byte `((tt·chunks + j)·16 + kk)·64 + 4·n + i` =
/// `q[16tt+n][64j+4kk+i]`, line `(tt·chunks + j)·16 + kk`; tokens past `n` are zero.
pub fn pack_acts(q: &[i8], kp: usize, n: usize) -> Vec<Line> {
    let (chunks, tiles) = (kp / KB, n.div_ceil(TOK));
    let mut b = vec![Line([0; 64]); tiles * chunks * 16];
    for t in 0..n {
        let (tt, col) = (t / TOK, t % TOK);
        let row = &q[t * kp..(t + 1) * kp];
        for j in 0..chunks {
            let tile = &mut b[(tt * chunks + j) * 16..][..16];
            for (kk, line) in tile.iter_mut().enumerate() {
                for (d, &v) in line.0[4 * col..4 * col + 4]
                    .iter_mut()
                    .zip(&row[j * KB + 4 * kk..j * KB + 4 * kk + 4])
                {
                    *d = v as u8;
                }
            }
        }
    }
    b
}

thread_local! {
    /// Unpacked codes of the current 32-row block (32 × K bytes or a ring of 4 KiB slots).
    static CODES: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
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
            let r0 = blk * ROWS;
            let nr = (rows - r0).min(ROWS);
            let rb: [&[BlockI2]; ROWS] =
                std::array::from_fn(|i| if i < nr { w.row_blocks(r0 + i) } else { &[] });
            let epilogue = |t0: usize, nt: usize, c: &[i32; ROWS * 2 * TOK]| {
                // SAFETY: AVX-512 F checked by `available()`; tokens t0 .. t0 + nt ≤ n and rows
                // r0 .. r0 + nr ≤ rows, so every write is inside `out` (asserted above); blocks
                // cover disjoint row ranges, so no two tasks write the same element, and
                // nothing reads `out` until the parallel loop has ended.
                unsafe { finish(c, x, w.scale(), (t0, nt), (r0, nr), rows, dst.0) };
            };
            // SAFETY: `available()` checked AMX, AVX-512 F/BW and the tile permission; the rows
            // hold `kp / 128` blocks each (the matrix's padded width), row 0 is never a padding
            // row (r0 < rows), `b` holds the packed activations of `n` tokens.
            unsafe { block(&rb, &mut codes, &b, kp, n, epilogue) };
        })
    });
}

/// The f32 epilogue of one pass: `c` holds 32 rows × 32 token columns of i32 sums (row
/// `r0 + i`, token `t0 + k` at `c[32i + k]`); writes `(Σ − Σq_t) / s_t · scale` — the same
/// operations, lane by lane, as every other kernel's epilogue — to `out[t·rows + r]`, through
/// 16 × 16 transposes where the rows and tokens fill them.
///
/// # Safety
/// AVX-512 F; `out` holds `(t0 + nt)·rows` values, `r0 + nr ≤ rows`, `nr ≤ 32`, `nt ≤ 32`,
/// and no other thread touches rows `r0 .. r0 + nr` of it.
#[target_feature(enable = "avx512f")]
unsafe fn finish(
    c: &[i32; ROWS * 2 * TOK],
    x: &QuantizedActs,
    scale: f32,
    (t0, nt): (usize, usize),
    (r0, nr): (usize, usize),
    rows: usize,
    out: *mut f32,
) {
    const W: usize = 2 * TOK;
    let sums: [i32; W] = std::array::from_fn(|k| if k < nt { x.sum(t0 + k) } else { 0 });
    let sx: [f32; W] = std::array::from_fn(|k| if k < nt { x.scale(t0 + k) } else { 1.0 });
    let mut y = [0f32; ROWS * W];
    for (yr, cr) in y.chunks_exact_mut(W).zip(c.chunks_exact(W)).take(nr) {
        for (((o, &a), &s), &d) in yr.iter_mut().zip(cr).zip(&sums).zip(&sx) {
            *o = (a - s) as f32 / d * scale;
        }
    }
    for i0 in (0..nr).step_by(16) {
        for k0 in (0..nt).step_by(16) {
            let (ni, nk) = ((nr - i0).min(16), (nt - k0).min(16));
            // SAFETY: token t0 + k0 + k < t0 + nt and row r0 + i0 + i < r0 + nr (caller
            // contract: inside `out`); the source is 16 rows × 16 values inside `y`.
            unsafe {
                let dst = out.add((t0 + k0) * rows + r0 + i0);
                if ni == 16 && nk == 16 {
                    crate::transpose::tile16_avx512(y.as_ptr().add(i0 * W + k0), W, dst, rows);
                } else {
                    for k in 0..nk {
                        for i in 0..ni {
                            *dst.add(k * rows + i) = y[(i0 + i) * W + k0 + k];
                        }
                    }
                }
            }
        }
    }
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

/// Writes 128-column block `bi` of the 32 rows `rows` (an empty row is a padding row: zero
/// codes) as bytes, in element order, into the two chunks of `dst` (4 KiB: chunk `2bi` then
/// chunk `2bi + 1`, each in the [`a_offset`] layout of rows 0-15 then 16-31): one 64-byte
/// store per row and chunk ([`crate::x86::unpack512`]'s two vectors are elements 0-63 and
/// 64-127).
///
/// # Safety
/// The CPU must support AVX-512 F/BW; `dst` is 64-byte aligned; `rows[0]` is not empty and
/// every non-empty row holds as many blocks, more than `bi`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack_block(rows: &[&[BlockI2]; ROWS], bi: usize, dst: &mut [u8; 2 * ROWS * KB]) {
    // The 32 rows are consecutive in memory (32 × kb blocks), and the same thread most likely
    // takes the next 32 rows next: bring 1 KiB of them into L2 per block, so that they have
    // all arrived when their own pass starts (32 row streams at a time are too many for the
    // hardware prefetchers to run ahead of).
    let kb = rows[0].len();
    let next = (rows[0].as_ptr() as *const i8).wrapping_add(ROWS * kb * 32 + bi * 1024);
    for l in 0..16 {
        // SAFETY: SSE is baseline; a prefetch never faults, whatever the address
        // (`wrapping_add` keeps the arithmetic defined).
        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(64 * l));
    }
    for (i, row) in rows.iter().enumerate() {
        let (o0, o1) = (a_offset(i, 0), a_offset(i, 1));
        let Some(b) = row.get(bi) else {
            dst[o0..o0 + KB].fill(0);
            dst[o1..o1 + KB].fill(0);
            continue;
        };
        // SAFETY: features enabled; `b.qs` is 32 bytes; the aligned stores write 64 bytes at
        // `o0` and at `o1`, multiples of 64 (caller contract: `dst` aligned) and ≤ 4 KiB − 64
        // (`a_offset` of row < 32 in chunks 0 and 1).
        unsafe {
            let [lo, hi] = crate::x86::unpack512(&b.qs);
            _mm512_store_si512(dst.as_mut_ptr().add(o0) as *mut __m512i, lo);
            _mm512_store_si512(dst.as_mut_ptr().add(o1) as *mut __m512i, hi);
        }
    }
}

/// One 32-row block against every token: calls `epilogue(t0, nt, sums)` once per pass of
/// tokens `t0 .. t0 + nt` with the 32 rows' sums (`sums[32i + k]`: row `i`, token `t0 + k`).
/// Tokens go in passes of two B tiles (32 tokens) over all columns; a pass of one B tile
/// accumulates the odd chunks into the second tile's C registers (two independent chains per
/// row tile) and adds them before the epilogue. The
/// first pass unpacks each 128-column block of codes just before its tiles load it, so the
/// loads hit L1; with more than one pass the unpacked codes stay in `codes` (32 × `kp` bytes,
/// the [`a_offset`] layout) for the later passes, otherwise one 4 KiB slot is reused.
///
/// # Safety
/// AMX-INT8 usable by this thread's process and AVX-512 F/BW; `rows[0]` is not empty and every
/// non-empty row of `rows` holds `kp / 128` blocks; `b` holds the packed activations of
/// [`pack_acts`] for `n` tokens.
unsafe fn block(
    rows: &[&[BlockI2]; ROWS],
    codes: &mut Vec<Line>,
    b: &[Line],
    kp: usize,
    n: usize,
    epilogue: impl Fn(usize, usize, &[i32; ROWS * 2 * TOK]),
) {
    const SLOT: usize = 2 * ROWS * KB;
    let (chunks, kb, tiles) = (kp / KB, kp / QK_I2, n.div_ceil(TOK));
    let keep = tiles > 2;
    codes.resize(if keep { kb } else { RING } * SLOT / 64, Line([0; 64]));
    let base = codes.as_mut_ptr() as *mut u8;
    // SAFETY: block `bi`'s slot is 4 KiB inside `codes` (`bi < kb`; the ring has RING
    // slots); no reference to it lives while it is written.
    let slot = |bi: usize| unsafe { base.add(if keep { bi } else { bi % RING } * SLOT) };
    // SAFETY: AVX-512 F/BW and the rows' lengths (caller contract); the slot is 4 KiB inside
    // `codes`, 64-byte aligned (`Line`), not borrowed elsewhere.
    let unpack = |bi: usize| unsafe { unpack_block(rows, bi, &mut *(slot(bi) as *mut [u8; SLOT])) };
    let mut c = [0i32; ROWS * 2 * TOK];
    // SAFETY (whole block): the tile configuration is valid (palette 1, eight 16×64 tiles);
    // every tileloadd reads 16 rows of 64 bytes inside `codes` (the 1 KiB tiles of one 4 KiB
    // slot: slot `bi` < kp/128 when `keep`, else `bi % RING` — the size set above) or inside one
    // 1 KiB tile of `b` (token tile < n/16 rounded up, chunk j < kp/64); every tilestored
    // writes 16 rows of 64 bytes inside `c` (stride 128 bytes, 32 rows). The tile registers
    // are not used by compiled Rust code.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack));
        let mut tt = 0;
        while tt < tiles {
            let pair = tt + 1 < tiles;
            let b0 = (b.as_ptr() as *const u8).add(tt * chunks * 1024);
            let b1 = if pair { b0.add(chunks * 1024) } else { b0 };
            asm!(
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            if tt == 0 {
                (0..AHEAD.min(kb)).for_each(unpack);
            }
            for bi in 0..kb {
                if tt == 0 && bi + AHEAD < kb {
                    unpack(bi + AHEAD);
                }
                for half in 0..2 {
                    let (a, j) = (slot(bi).add(half * 2048), 2 * bi + half);
                    asm!(
                        "tileloadd tmm0, [{a0} + {s64}*1]",
                        "tileloadd tmm1, [{a1} + {s64}*1]",
                        a0 = in(reg) a,
                        a1 = in(reg) a.add(1024),
                        s64 = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                    // Two token tiles: the first into tmm4/tmm6, the second into tmm5/tmm7.
                    // One token tile (`b1 == b0`): its even chunks into tmm4/tmm6, its odd
                    // chunks into tmm5/tmm7 — two independent chains per row tile.
                    if pair || half == 0 {
                        asm!(
                            "tileloadd tmm2, [{b0} + {s64}*1]",
                            "tdpbusd tmm4, tmm0, tmm2",
                            "tdpbusd tmm6, tmm1, tmm2",
                            b0 = in(reg) b0.add(j * 1024),
                            s64 = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                    }
                    if pair || half == 1 {
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
            if !pair {
                // One token tile: add its odd chunks' sums (exact integers) to the even ones.
                for r in c.chunks_exact_mut(2 * TOK) {
                    let (even, odd) = r.split_at_mut(TOK);
                    for (e, &o) in even.iter_mut().zip(odd.iter()) {
                        *e += o;
                    }
                }
            }
            epilogue(t0, nt, &c);
            tt += 2;
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
