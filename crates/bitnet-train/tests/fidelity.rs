//! The trainer's forward is the reference model: first-step logits of every master-weight fixture
//! meet the fixture criteria; the fake-quantized BitLinear equals the engine's integer BitLinear;
//! the straight-through gradients equal finite differences of the float path.

use bitnet_engine::compare::{std_dev, LogitStats, LogitsRecord};
use bitnet_engine::model::ternarize_absmean;
use bitnet_engine::test_support::{fixture_models, reference_prompts};
use bitnet_engine::weights::Checkpoint;
use bitnet_engine::{ModelConfig, WeightFormat};
use bitnet_kernels::{QuantizedActs, TernaryMatrix};
use bitnet_train::quant::{bit_linear, QuantMode};
use bitnet_train::TrainModel;
use candle_core::{DType, Device, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tensor_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn first_step_logits_of_master_weight_fixtures_match_the_reference() {
    let mut checked = Vec::new();
    for dir in fixture_models() {
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        if config.weight_format != WeightFormat::Online {
            continue;
        }
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = TrainModel::from_checkpoint(config.clone(), &ckpt, DType::F32).unwrap();
        let n_prompts = reference_prompts(&dir).len();
        assert!(n_prompts > 0, "{}: no prompts", dir.display());
        for i in 0..n_prompts {
            let r =
                LogitsRecord::read(&dir.join("reference.safetensors"), &format!("p{i}.")).unwrap();
            let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
            let ours = tensor_f32(&model.forward(&t, QuantMode::Ternary).unwrap());
            let s = std_dev(&r.logits);
            let st = LogitStats::compute(&r.logits, &ours, config.vocab_size, s);
            assert!(st.passes(), "{} prompt {i}: {st:?}", dir.display());
            checked.push(format!(
                "{} p{i}: mean {:.4}·s max {:.4}·s",
                dir.file_name().unwrap().to_string_lossy(),
                st.mean_rel,
                st.max_rel
            ));
        }
    }
    eprintln!("{}", checked.join("\n"));
    assert!(
        checked.iter().any(|c| c.starts_with("bitnet-tiny-master")),
        "bitnet-tiny-master was not checked: {checked:?}"
    );
}

/// Random activations with the kernels' edge cases: a zero row, a row at ±max magnitude, a row
/// of ties (x·s exactly k + 0.5 after scaling).
fn edge_activations(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * k)
        .map(|_| rng.random::<f32>() * 6.0 - 3.0)
        .collect();
    x[..k].fill(0.0);
    for (j, v) in x[k..2 * k].iter_mut().enumerate() {
        *v = if j % 2 == 0 { 3.0e4 } else { -3.0e4 };
    }
    for (j, v) in x[2 * k..3 * k].iter_mut().enumerate() {
        *v = if j == 0 { 127.0 } else { (j % 7) as f32 + 0.5 };
    }
    x
}

#[test]
fn fake_quant_bitlinear_equals_the_engines_integer_bitlinear() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (out, k, n) in [(48, 80, 6), (33, 129, 5), (64, 256, 4)] {
        let mut w: Vec<f32> = (0..out * k).map(|_| rng.random::<f32>() - 0.5).collect();
        w[..k].fill(0.0); // a zero row
        let x = edge_activations(&mut rng, n, k);
        let wt = Tensor::from_vec(w.clone(), (out, k), &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (n, k), &Device::Cpu).unwrap();
        let ours = tensor_f32(&bit_linear(&xt, &wt, QuantMode::Ternary).unwrap());

        let codes = ternarize_absmean(&w);
        let m = TernaryMatrix::from_codes(out, k, &codes.codes, codes.scale);
        let mut acts = QuantizedActs::new();
        acts.quantize(&x, n, k, m.cols_padded());
        let mut engine = vec![0.0f32; n * out];
        bitnet_kernels::ops::ternary_matmul(&m, &acts, &mut engine);
        for (i, (a, b)) in ours.iter().zip(&engine).enumerate() {
            // Float summation error bound: ε·√k·Σ|x_j·w_j| (rows that cancel exactly to 0 in
            // integers carry the float rounding of their large terms).
            let (r, o) = (i / out, i % out);
            let mag: f32 = (0..k)
                .map(|j| (x[r * k + j] * w[o * k + j].signum()).abs() * codes.scale)
                .sum();
            let tol = 1e-6 + 4e-7 * (k as f32).sqrt() * mag;
            assert!(
                (a - b).abs() <= tol,
                "shape {out}x{k}, row {} col {}: fake-quant {a} vs engine {b}",
                i / out,
                i % out
            );
        }
    }
}

/// `Σ c ⊙ f(x, W)` for a BitLinear layer.
fn weighted_sum(x: &Tensor, w: &Tensor, c: &Tensor, mode: QuantMode) -> Tensor {
    (bit_linear(x, w, mode).unwrap() * c)
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn ste_gradients_equal_finite_differences_of_the_float_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, k, out) = (3, 16, 8);
    let mk = |len: usize, rng: &mut ChaCha8Rng| -> Vec<f64> {
        (0..len).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    };
    let (x, w, c) = (
        mk(n * k, &mut rng),
        mk(out * k, &mut rng),
        mk(n * out, &mut rng),
    );
    let dev = Device::Cpu;
    let xv = Var::from_tensor(&Tensor::from_vec(x, (n, k), &dev).unwrap()).unwrap();
    let wv = Var::from_tensor(&Tensor::from_vec(w, (out, k), &dev).unwrap()).unwrap();
    let ct = Tensor::from_vec(c, (n, out), &dev).unwrap();
    let loss = weighted_sum(xv.as_tensor(), wv.as_tensor(), &ct, QuantMode::Ternary);
    let grads = loss.backward().unwrap();
    let gx: Vec<f64> = grads
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let gw: Vec<f64> = grads
        .get(wv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    // The float path at the quantized point: f(x', W') = Σ c ⊙ x'·W'ᵀ.
    let xq = xv
        .as_tensor()
        .apply_op1(bitnet_train::quant::ActQuant)
        .unwrap();
    let wq = wv
        .as_tensor()
        .apply_op1(bitnet_train::quant::WeightQuant)
        .unwrap();
    let f = |x: &Tensor, w: &Tensor| -> f64 {
        weighted_sum(x, w, &ct, QuantMode::Float)
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-6;
    let bump = |t: &Tensor, i: usize, d: f64| -> Tensor {
        let mut v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        v[i] += d;
        Tensor::from_vec(v, t.shape(), &dev).unwrap()
    };
    assert_eq!((gx.len(), gw.len()), (n * k, out * k));
    for (i, g) in gx.iter().enumerate() {
        let fd = (f(&bump(&xq, i, h), &wq) - f(&bump(&xq, i, -h), &wq)) / (2.0 * h);
        assert!(
            (fd - g).abs() < 1e-6,
            "x[{i}]: STE {g} vs finite difference {fd}"
        );
    }
    for (i, g) in gw.iter().enumerate() {
        let fd = (f(&xq, &bump(&wq, i, h)) - f(&xq, &bump(&wq, i, -h))) / (2.0 * h);
        assert!(
            (fd - g).abs() < 1e-6,
            "W[{i}]: STE {g} vs finite difference {fd}"
        );
    }
}

#[test]
fn model_gradients_equal_finite_differences_in_float_mode() {
    // The whole architecture (embedding, RMSNorm, RoPE, GQA attention, relu², sub-norms, untied
    // head) in f64 with float linears: autograd against central differences.
    let dir = bitnet_engine::test_support::fixtures_dir().join("bitnet-tiny-master");
    let mut config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    config.hidden_size = 16;
    config.intermediate_size = 24;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 4;
    config.vocab_size = 40;
    config.num_hidden_layers = 2;
    let model = TrainModel::new_random(config, 0.3, 11, DType::F64).unwrap();
    let ids = Tensor::from_vec(
        vec![1u32, 5, 9, 3, 7, 2, 30, 8, 5, 1, 0, 39],
        (2, 6),
        &Device::Cpu,
    )
    .unwrap();
    let loss = model.loss(&ids, QuantMode::Float).unwrap();
    let grads = loss.backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut checked = 0;
    for p in &model.params {
        let g: Vec<f64> = grads
            .get(p.var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f64> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..3 {
            let i = rng.random_range(0..orig.len());
            let at = |d: f64| -> f64 {
                let mut v = orig.clone();
                v[i] += d;
                p.var
                    .set(&Tensor::from_vec(v, p.var.as_tensor().shape(), &Device::Cpu).unwrap())
                    .unwrap();
                model
                    .loss(&ids, QuantMode::Float)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let h = 1e-5;
            let fd = (at(h) - at(-h)) / (2.0 * h);
            p.var
                .set(
                    &Tensor::from_vec(orig.clone(), p.var.as_tensor().shape(), &Device::Cpu)
                        .unwrap(),
                )
                .unwrap();
            assert!(
                (fd - g[i]).abs() <= 1e-6 + 1e-4 * fd.abs(),
                "{}[{i}]: autograd {} vs finite difference {fd}",
                p.name,
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 40);
}
