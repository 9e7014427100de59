// A CPU emulation of the CUDA built-ins that crates/bitnet-engine/src/cuda/kernels.cu uses, so
// that the kernel source itself runs on a machine without a GPU (scripts/cuda-emu-check.sh).
// Each block's threads are cooperative fibers on one OS thread (x86-64 only); __syncthreads and
// warp shuffles are barriers that switch fibers. Blocks run one after another, so __shared__
// variables can be plain statics. Slow and exact: a test harness, not a backend.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#define BITNET_CUDA_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

struct dim3 { unsigned x = 0, y = 0, z = 0; };
struct int4 { int x, y, z, w; };
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
using std::min;
using std::max;

namespace emu {
// A minimal x86-64 System V context switch: saves the callee-saved registers on the current
// stack, stores its pointer in *save, and resumes the stack `load` (glibc's swapcontext makes a
// signal-mask syscall per switch, which made the emulator ~50x slower).
extern "C" void emu_switch(void** save, void* load);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");

struct Fiber {
    void* sp = nullptr;
    std::vector<char> stack;
    bool done = false;
};
inline std::vector<Fiber> fibers;
inline void* sched_sp;
inline int cur = 0;
inline std::function<void()> body;
inline uint64_t shfl[1024 / 32][32];
// Barriers: fibers still running, arrivals at the open barrier, and its generation.
inline int live, blk_arrived, warp_live[32], warp_arrived[32];
inline long blk_gen, warp_gen[32];

inline void yield() { emu_switch(&fibers[cur].sp, sched_sp); }

inline void warp_barrier() {
    int w = cur / 32;
    long g = warp_gen[w];
    if (++warp_arrived[w] == warp_live[w]) {
        warp_arrived[w] = 0;
        warp_gen[w]++;
        return;
    }
    while (warp_gen[w] == g) yield();
}
inline void block_barrier() {
    long g = blk_gen;
    if (++blk_arrived == live) {
        blk_arrived = 0;
        blk_gen++;
        return;
    }
    while (blk_gen == g) yield();
}
[[noreturn]] inline void fiber_main() {
    body();
    fibers[cur].done = true;
    int w = cur / 32;
    live--;
    warp_live[w]--;
    // A barrier that only waited for this fiber opens.
    if (blk_arrived > 0 && blk_arrived == live) { blk_arrived = 0; blk_gen++; }
    if (warp_arrived[w] > 0 && warp_arrived[w] == warp_live[w]) { warp_arrived[w] = 0; warp_gen[w]++; }
    yield();
    __builtin_unreachable();
}

// Runs `kernel` (a closure calling the kernel with its arguments) over the grid.
inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    unsigned n = block.x * block.y * block.z;
    if (fibers.size() != n) fibers = std::vector<Fiber>(n);
    gridDim = grid;
    blockDim = block;
    body = kernel;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = {bx, by, bz};
                live = (int)n;
                blk_arrived = 0;
                for (unsigned w = 0; w < (n + 31) / 32; w++) {
                    warp_live[w] = (int)std::min(32u, n - 32 * w);
                    warp_arrived[w] = 0;
                }
                for (unsigned i = 0; i < n; i++) {
                    Fiber& f = fibers[i];
                    f.stack.resize(256 * 1024);
                    f.done = false;
                    // Stack top: a dummy return address, then fiber_main as the address that
                    // emu_switch's `ret` jumps to, below it the six registers it pops.
                    uintptr_t top = ((uintptr_t)(f.stack.data() + f.stack.size())) & ~(uintptr_t)15;
                    void** sp = (void**)top;
                    *--sp = nullptr;
                    *--sp = (void*)&fiber_main;
                    for (int r = 0; r < 6; r++) *--sp = nullptr;
                    f.sp = sp;
                }
                bool left = true;
                while (left) {
                    left = false;
                    for (unsigned i = 0; i < n; i++) {
                        if (fibers[i].done) continue;
                        cur = (int)i;
                        threadIdx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
                        emu_switch(&sched_sp, fibers[i].sp);
                        if (!fibers[i].done) left = true;
                    }
                }
            }
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    static_assert(sizeof(T) <= 8);
    int lane = emu::cur % 32, w = emu::cur / 32;
    std::memcpy(&emu::shfl[w][lane], &v, sizeof(T));
    emu::warp_barrier();
    T r;
    std::memcpy(&r, &emu::shfl[w][lane ^ o], sizeof(T));
    emu::warp_barrier();
    return r;
}

inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float emu_h2f(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
inline unsigned short emu_f2h(float f) { _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h; }
