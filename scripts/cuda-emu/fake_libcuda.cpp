// A stand-in `libcuda.so` for machines without a GPU: the subset of the CUDA driver API that
// bitnet-engine's CUDA backend calls through cudarc, over host memory, running the kernels of
// crates/bitnet-engine/src/cuda/kernels.cu through the fiber emulator of emu.h. NVRTC stays
// the real one (it compiles the same source to PTX, which is then ignored here). Graph capture
// records launches and a graph replays them. Built and used by scripts/cuda-emu-check.sh.
#include "emu.h"
#include "../../crates/bitnet-engine/src/cuda/kernels.cu"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <utility>

using Launch = std::function<void()>;
using Maker = std::function<Launch(void**, dim3, dim3)>;

template <class... A, size_t... I>
static Launch bind_args(void (*k)(A...), void** p, dim3 g, dim3 b, std::index_sequence<I...>) {
    std::tuple<A...> args{*(A*)p[I]...};
    return [=]() { emu::run_grid(g, b, [=]() { std::apply(k, args); }); };
}
template <class... A>
static Maker reg(void (*k)(A...)) {
    return [k](void** p, dim3 g, dim3 b) {
        return bind_args(k, p, g, b, std::index_sequence_for<A...>{});
    };
}
static std::map<std::string, Maker>& kernels() {
    static std::map<std::string, Maker> m = {
        {"rmsnorm_quant", reg(rmsnorm_quant)}, {"rmsnorm_rows", reg(rmsnorm_rows)},
        {"ternary_gemm", reg(ternary_gemm)},   {"rope_store", reg(rope_store)},
        {"attention", reg(attention)},         {"act_mul", reg(act_mul)},
        {"head_f32", reg(head_f32)},           {"head_f16", reg(head_f16)},
        {"head_bf16", reg(head_bf16)},         {"head_q6k", reg(head_q6k)},
    };
    return m;
}

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
static bool capturing = false;
static std::vector<Launch> captured;
static long launches = 0;

#define API extern "C" __attribute__((visibility("default")))
API CUresult cuInit(unsigned) { return 0; }
API CUresult cuDriverGetVersion(int* v) { *v = 12040; return 0; }
API CUresult cuDeviceGetCount(int* c) { *c = 1; return 0; }
API CUresult cuDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
API CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "CPU emulator (scripts/cuda-emu)");
    return 0;
}
API CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    *v = attr == 75 ? 9 : 0;  // compute capability 9.0; no memory pools (plain cuMemAlloc)
    return 0;
}
API CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = size_t(8) << 30; return 0; }
API CUresult cuMemGetInfo_v2(size_t* f, size_t* t) { *f = *t = size_t(8) << 30; return 0; }
API CUresult cuDevicePrimaryCtxRetain(void** c, int) { *c = (void*)0x1000; return 0; }
API CUresult cuDevicePrimaryCtxRelease_v2(int) { return 0; }
API CUresult cuCtxSetCurrent(void*) { return 0; }
API CUresult cuCtxGetCurrent(void** c) { *c = (void*)0x1000; return 0; }
API CUresult cuCtxSynchronize() { return 0; }
API CUresult cuStreamCreate(void** s, unsigned) { *s = new int(0); return 0; }
API CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { *s = new int(0); return 0; }
API CUresult cuStreamDestroy_v2(void* s) { delete (int*)s; return 0; }
API CUresult cuStreamSynchronize(void*) { return 0; }
API CUresult cuStreamWaitEvent(void*, void*, unsigned) { return 0; }
API CUresult cuEventCreate(void** e, unsigned) { *e = new int(0); return 0; }
API CUresult cuEventRecord(void*, void*) { return 0; }
API CUresult cuEventSynchronize(void*) { return 0; }
API CUresult cuEventDestroy_v2(void* e) { delete (int*)e; return 0; }
API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    *p = (CUdeviceptr)std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
    return *p ? 0 : 2;
}
API CUresult cuMemFree_v2(CUdeviceptr p) { std::free((void*)p); return 0; }
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) {
    std::memset((void*)p, v, n);
    return 0;
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) {
    if (capturing) { std::fprintf(stderr, "fake libcuda: copy during capture\n"); return 900; }
    std::memcpy((void*)d, s, n);
    return 0;
}
API CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) {
    if (capturing) { std::fprintf(stderr, "fake libcuda: copy during capture\n"); return 900; }
    std::memcpy(d, (void*)s, n);
    return 0;
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) {
    std::memmove((void*)d, (void*)s, n);
    return 0;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { return cuMemcpyHtoDAsync_v2(d, s, n, nullptr); }
API CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { return cuMemcpyDtoHAsync_v2(d, s, n, nullptr); }
API CUresult cuModuleLoadData(void** m, const void* image) {
    // The PTX must come from NVRTC compiling kernels.cu: check it names every kernel.
    const char* ptx = (const char*)image;
    for (auto& [name, _] : kernels())
        if (!std::strstr(ptx, (".entry " + name + "(").c_str())) return 200;
#ifdef BITNET_KV_F32
    const bool f16_kv = false;
#else
    const bool f16_kv = true;
#endif
    // Only an f16 KV cache rounds floats to f16 (rope_store): the PTX must match this build.
    if ((std::strstr(ptx, "cvt.rn.f16.f32") != nullptr) != f16_kv) {
        std::fprintf(stderr, "fake libcuda: PTX and emulator disagree on the KV precision\n");
        return 200;
    }
    *m = (void*)0x2000;
    return 0;
}
API CUresult cuModuleUnload(void*) { return 0; }
API CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) return 500;
    *f = (void*)&it->second;
    return 0;
}
API CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned shmem, void*, void** params, void**) {
    if (shmem != 0 || bx * by * bz > 1024) return 1;
    Launch l = (*(Maker*)f)(params, {gx, gy, gz}, {bx, by, bz});
    if (capturing) captured.push_back(l);
    else { l(); launches++; }
    return 0;
}
API CUresult cuStreamBeginCapture_v2(void*, int) { capturing = true; captured.clear(); return 0; }
API CUresult cuStreamIsCapturing(void*, int* s) { *s = capturing ? 1 : 0; return 0; }
API CUresult cuStreamEndCapture(void*, void** g) {
    capturing = false;
    *g = new std::vector<Launch>(captured);
    return 0;
}
API CUresult cuGraphInstantiateWithFlags(void** e, void* g, unsigned long long) {
    *e = new std::vector<Launch>(*(std::vector<Launch>*)g);
    return 0;
}
API CUresult cuGraphLaunch(void* e, void*) {
    for (auto& l : *(std::vector<Launch>*)e) { l(); launches++; }
    return 0;
}
API CUresult cuGraphUpload(void*, void*) { return 0; }
API CUresult cuGraphExecDestroy(void* e) { delete (std::vector<Launch>*)e; return 0; }
API CUresult cuGraphDestroy(void* g) { delete (std::vector<Launch>*)g; return 0; }
API CUresult cuGetErrorString(int, const char** s) { *s = "fake libcuda error"; return 0; }
API CUresult cuGetErrorName(int, const char** s) { *s = "CUDA_ERROR_FAKE"; return 0; }
