//! The CUDA backend (feature `cuda`).
//!
//! Without a GPU: `--device auto` falls back to the CPU and says why, `cuda` is refused with the
//! reason, and the kernels compile with NVRTC when it is on the library path. With a GPU
//! (`BITNET_TEST_CUDA=1 cargo test --features cuda --test cuda -- --include-ignored`, or
//! `scripts/gpu-check.sh`): the fixture criteria on the GPU, GPU batches against single
//! sequences, and GPU against CPU on the 2B-4T-shaped model (`BITNET_2B4T_GGUF`).
#![cfg(feature = "cuda")]

use bitnet_engine::compare::{std_dev, GreedyReport, LogitStats};
use bitnet_engine::generate::greedy_with_logits;
use bitnet_engine::test_support::{assert_meets_reference, fixtures_dir};
use bitnet_engine::{Device, KvCache, Model, RunState, SeqStep};
use std::path::PathBuf;

fn want_gpu() -> bool {
    std::env::var("BITNET_TEST_CUDA").is_ok_and(|v| v == "1")
}

fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn tiny() -> PathBuf {
    fixtures_dir().join("bitnet-tiny-packed")
}

#[test]
fn auto_falls_back_to_the_cpu_and_says_why() {
    let mut model = Model::load(&tiny()).unwrap();
    let p = model.use_device(Device::Auto).unwrap();
    if want_gpu() {
        assert!(p.gpu, "BITNET_TEST_CUDA=1 but auto chose {}", p.description);
        assert!(p.description.starts_with("cuda:0 ("), "{}", p.description);
        return;
    }
    if driver_present() {
        eprintln!("a CUDA driver is present: auto chose {}", p.description);
        return;
    }
    assert!(!p.gpu && !model.on_gpu());
    assert!(
        p.description.starts_with("cpu (auto: ") && p.description.contains("no CUDA driver"),
        "{}",
        p.description
    );
    let e = model.use_device(Device::Cuda(0)).unwrap_err().to_string();
    assert!(e.contains("cuda:0") && e.contains("no CUDA driver"), "{e}");
    // Still runs, on the CPU.
    let ids = [1u32, 2, 3];
    let (logits, _, _) = greedy_with_logits(&model, &ids, 2).unwrap();
    assert_eq!(logits.len(), 3 * model.config.vocab_size);
}

/// The kernel source compiles with NVRTC for Hopper and Ampere (needs `libnvrtc.so` on the
/// library path; skipped without it unless `BITNET_REQUIRE_NVRTC=1`).
#[test]
fn kernels_compile_with_nvrtc() {
    // SAFETY: only tries to dlopen NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        assert!(
            std::env::var("BITNET_REQUIRE_NVRTC").is_err(),
            "BITNET_REQUIRE_NVRTC is set but libnvrtc.so cannot be loaded"
        );
        eprintln!("SKIPPED: libnvrtc.so is not on the library path");
        return;
    }
    for arch in ["compute_90", "compute_80"] {
        let opts = cudarc::nvrtc::CompileOptions {
            fmad: Some(false),
            options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(bitnet_engine::cuda::KERNELS_CU, opts)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        let src = ptx.to_src();
        for k in [
            "rmsnorm_quant",
            "rmsnorm_rows",
            "ternary_gemm",
            "rope_store",
            "attention",
            "act_mul",
            "head_f32",
            "head_f16",
            "head_bf16",
            "head_q6k",
        ] {
            assert!(
                src.contains(&format!(".entry {k}(")),
                "{arch}: no entry {k}"
            );
        }
        // The GEMM is dp4a-based.
        assert!(src.contains("dp4a"), "{arch}: ternary_gemm without dp4a");
    }
}

fn gpu_model(path: &std::path::Path) -> Model {
    assert!(want_gpu(), "set BITNET_TEST_CUDA=1 to run the GPU tests");
    let mut model = Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let p = model
        .use_device(Device::Cuda(0))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("{} on {}", path.display(), p.description);
    model
}

/// Prompt logits and the 24-token greedy decode of every prompt against `reference`.
fn check_reference(model: &Model, reference: &std::path::Path, label: &str) {
    assert_meets_reference(model, reference, &format!("GPU {label}"));
}

#[test]
#[ignore = "needs a CUDA GPU: BITNET_TEST_CUDA=1 … -- --include-ignored"]
fn gpu_meets_the_fixture_criteria() {
    let root = fixtures_dir();
    for name in [
        "bitnet-tiny-packed",
        "bitnet-tiny-master",
        "bitnet-silu-gguf",
    ] {
        let dir = root.join(name);
        check_reference(&gpu_model(&dir), &dir.join("reference.safetensors"), name);
    }
    let gguf = root.join("bitnet-silu-gguf");
    for (file, reference) in [
        ("f16.gguf", "reference_llamacpp.safetensors"),
        ("tq2_0.gguf", "reference_llamacpp.safetensors"),
        ("tq1_0.gguf", "reference_llamacpp.safetensors"),
        ("tq2_0_default.gguf", "reference_tq2_0_default.safetensors"),
        ("i2_s.gguf", "reference.safetensors"),
    ] {
        let model = gpu_model(&gguf.join("gguf").join(file));
        check_reference(&model, &gguf.join(reference), file);
    }
}

/// Several sequences in one GPU step (the server's continuous batching) give what each gives
/// alone, and prefill in odd chunks equals one batch.
#[test]
#[ignore = "needs a CUDA GPU: BITNET_TEST_CUDA=1 … -- --include-ignored"]
fn gpu_batches_equal_single_sequences() {
    let model = gpu_model(&tiny());
    let c = &model.config;
    let prompts: [&[u32]; 3] = [
        &[1, 5, 9, 200, 31],
        &[7, 7, 7],
        &[300, 2, 44, 45, 46, 47, 48],
    ];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let mut cache = KvCache::new(c, 16);
            let mut st = RunState::new(c, 64, 16);
            model.forward_last(p, &mut cache, &mut st).unwrap().to_vec()
        })
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(c, 16)).collect();
    let mut st = RunState::new(c, 64, 16);
    let mut steps: Vec<SeqStep> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, tokens)| SeqStep {
            cache,
            tokens,
            want_logits: true,
        })
        .collect();
    let mut logits = Vec::new();
    model
        .forward_batch(&mut steps, &mut st, &mut logits)
        .unwrap();
    let v = c.vocab_size;
    for (i, a) in alone.iter().enumerate() {
        let s = std_dev(a);
        let st = LogitStats::compute(a, &logits[i * v..(i + 1) * v], v, s);
        assert!(st.max_rel <= 1e-4, "sequence {i}: {st:?}");
    }
    // Chunked prefill (max batch 2) against one batch.
    let ids: Vec<u32> = (1..20).collect();
    let (mut one, mut chunked) = (Vec::new(), Vec::new());
    let mut cache = KvCache::new(c, 32);
    let mut st = RunState::new(c, 64, 32);
    model
        .forward_all(&ids, &mut cache, &mut st, &mut one)
        .unwrap();
    let mut cache = KvCache::new(c, 32);
    let mut st = RunState::new(c, 2, 32);
    model
        .forward_all(&ids, &mut cache, &mut st, &mut chunked)
        .unwrap();
    let st = LogitStats::compute(&one, &chunked, v, std_dev(&one));
    assert!(st.max_rel <= 1e-4, "chunked prefill: {st:?}");
}

/// GPU against CPU on the 2B-4T-shaped random model (`bitnet create-model --shape 2b4t`, path in
/// `BITNET_2B4T_GGUF`): the fixture criteria with the CPU logits as the reference.
#[test]
#[ignore = "needs a CUDA GPU and BITNET_2B4T_GGUF"]
fn gpu_matches_cpu_on_the_2b4t_shape() {
    let path = PathBuf::from(
        std::env::var("BITNET_2B4T_GGUF").expect("BITNET_2B4T_GGUF: the 2B-4T-shaped .gguf"),
    );
    let cpu = Model::load(&path).unwrap();
    let gpu = gpu_model(&path);
    let v = cpu.config.vocab_size;
    let prompt: Vec<u32> = (0..32u32).map(|i| (i * 7919 + 11) % v as u32).collect();
    let (cl, cg, cgl) = greedy_with_logits(&cpu, &prompt, 24).unwrap();
    let (gl, gg, ggl) = greedy_with_logits(&gpu, &prompt, 24).unwrap();
    let s = std_dev(&cl);
    let st = LogitStats::compute(&cl, &gl, v, s);
    let cg: Vec<i64> = cg.iter().map(|&x| x as i64).collect();
    let gg: Vec<i64> = gg.iter().map(|&x| x as i64).collect();
    let rep = GreedyReport::compute(&cg, &cgl, &gg, &ggl, v, s);
    eprintln!(
        "2B-4T GPU vs CPU: prompt mean {:.2e}·s max {:.2e}·s top1 {}/{}; greedy steps {} part {:?}",
        st.mean_rel, st.max_rel, st.top1_agree, st.positions, rep.steps, rep.first_divergence
    );
    assert!(st.passes(), "{st:?}");
    assert!(rep.passes(), "{rep:?}");
}

/// A cache filled on the CPU cannot silently continue on the GPU (its positions are not there).
#[test]
#[ignore = "needs a CUDA GPU: BITNET_TEST_CUDA=1 … -- --include-ignored"]
fn gpu_refuses_a_cache_filled_on_the_cpu() {
    assert!(want_gpu(), "set BITNET_TEST_CUDA=1 to run the GPU tests");
    let mut model = Model::load(&tiny()).unwrap();
    let c = model.config.clone();
    let mut cache = KvCache::new(&c, 16);
    let mut st = RunState::new(&c, 8, 16);
    model.forward_last(&[1, 2, 3], &mut cache, &mut st).unwrap();
    model.use_device(Device::Cuda(0)).unwrap();
    let e = model
        .forward_last(&[4], &mut cache, &mut st)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 positions computed on the CPU"), "{e}");
    cache.truncate(0);
    model
        .forward_last(&[1, 2, 3, 4], &mut cache, &mut st)
        .unwrap();
}
