//! One test per error class: the message names the offending file, tensor, field or value.

use bitnet_engine::test_support::*;
use bitnet_engine::{
    Error, GenerateParams, Generator, KvCache, Model, RunState, SamplingParams, Tokenizer,
};
use serde_json::json;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    fixture_models()
        .into_iter()
        .find(|d| d.ends_with(name))
        .unwrap_or_else(|| panic!("fixture {name}"))
}

fn packed_copy() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixture("bitnet-tiny-packed"), t.path());
    t
}

fn load_err(dir: &std::path::Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_tensors(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<OwnedTensor>)) {
    let p = dir.join("model.safetensors");
    let mut t = read_tensors(&p);
    edit(&mut t);
    std::fs::remove_file(&p).unwrap();
    write_tensors(&p, &t);
}

#[test]
fn missing_directory_and_files() {
    let e = load_err(std::path::Path::new("/nonexistent/model-dir"));
    assert!(
        e.contains("model directory not found: /nonexistent/model-dir"),
        "{e}"
    );

    let t = packed_copy();
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");

    let t = packed_copy();
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not found"),
        "{e}"
    );

    let t = packed_copy();
    std::fs::remove_file(t.path().join("tokenizer.json")).unwrap();
    let m = Model::load(t.path()).unwrap();
    let e = Tokenizer::load(t.path(), &m.config)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn config_missing_or_invalid_field() {
    let t = packed_copy();
    edit_config(t.path(), |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(t.path());
    assert!(
        e.contains("config.json") && e.contains("missing required field `hidden_size`"),
        "{e}"
    );

    let t = packed_copy();
    edit_config(t.path(), |c| c["num_key_value_heads"] = json!(3));
    let e = load_err(t.path());
    assert!(
        e.contains("`num_key_value_heads`") && e.contains("must divide"),
        "{e}"
    );

    let t = packed_copy();
    edit_config(t.path(), |c| c["vocab_size"] = json!("big"));
    let e = load_err(t.path());
    assert!(e.contains("`vocab_size`") && e.contains("\"big\""), "{e}");

    let t = packed_copy();
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    std::fs::write(t.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_and_quantization() {
    let t = packed_copy();
    edit_config(t.path(), |c| {
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["model_type"] = json!("llama");
    });
    let e = load_err(t.path());
    assert!(
        e.contains("unsupported architecture") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
    assert!(e.contains("supported: BitNetForCausalLM"), "{e}");

    let t = packed_copy();
    edit_config(t.path(), |c| c["hidden_act"] = json!("gelu"));
    let e = load_err(t.path());
    assert!(e.contains("gelu") && e.contains("relu2 or silu"), "{e}");

    let t = packed_copy();
    edit_config(t.path(), |c| {
        c["quantization_config"] = json!({"quant_method": "gptq", "bits": 4})
    });
    let e = load_err(t.path());
    assert!(
        e.contains("unsupported quantization config") && e.contains("gptq"),
        "{e}"
    );
    assert!(e.contains("autobitlinear"), "{e}");

    let t = packed_copy();
    edit_config(t.path(), |c| {
        c["quantization_config"]["quantization_mode"] = json!("dynamic")
    });
    let e = load_err(t.path());
    assert!(e.contains("\"dynamic\"") && e.contains("supported"), "{e}");
}

#[test]
fn corrupt_or_truncated_safetensors() {
    let t = packed_copy();
    let p = t.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors"),
        "{e}"
    );

    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &garbage).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors"),
        "{e}"
    );

    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors"),
        "{e}"
    );
}

#[test]
fn missing_tensor_wrong_shape_wrong_dtype() {
    let t = packed_copy();
    rewrite_tensors(t.path(), |v| {
        v.retain(|x| x.name != "model.layers.1.mlp.up_proj.weight")
    });
    let e = load_err(t.path());
    assert!(
        e.contains("tensor `model.layers.1.mlp.up_proj.weight` not found"),
        "{e}"
    );

    let t = packed_copy();
    rewrite_tensors(t.path(), |v| {
        let x = v
            .iter_mut()
            .find(|x| x.name == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        x.shape = vec![16, 32]; // same byte count, wrong shape
    });
    let e = load_err(t.path());
    assert!(
        e.contains("`model.layers.0.self_attn.k_proj.weight`"),
        "{e}"
    );
    assert!(e.contains("expected shape [8, 64], found [16, 32]"), "{e}");

    let t = packed_copy();
    rewrite_tensors(t.path(), |v| {
        let x = v
            .iter_mut()
            .find(|x| x.name == "model.norm.weight")
            .unwrap();
        x.dtype = safetensors::Dtype::I16;
    });
    let e = load_err(t.path());
    assert!(
        e.contains("`model.norm.weight`") && e.contains("found I16"),
        "{e}"
    );

    // Float weights in a checkpoint whose config says packed.
    let t = packed_copy();
    rewrite_tensors(t.path(), |v| {
        let x = v
            .iter_mut()
            .find(|x| x.name == "model.layers.0.mlp.gate_proj.weight")
            .unwrap();
        x.dtype = safetensors::Dtype::BF16;
        x.shape = vec![48, 32];
    });
    let e = load_err(t.path());
    assert!(
        e.contains("`model.layers.0.mlp.gate_proj.weight`") && e.contains("expected dtype U8"),
        "{e}"
    );

    // An invalid 2-bit code (3) in packed weights.
    let t = packed_copy();
    rewrite_tensors(t.path(), |v| {
        let x = v
            .iter_mut()
            .find(|x| x.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        x.data[5] = 0xFF;
    });
    let e = load_err(t.path());
    assert!(
        e.contains("`model.layers.0.self_attn.q_proj.weight`") && e.contains("code 3"),
        "{e}"
    );
}

#[test]
fn prompt_beyond_context() {
    let dir = fixture("bitnet-tiny-packed");
    let m = Model::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &m.config).unwrap();
    let mut g = Generator::new(&m, &tok, None);
    let prompt = vec![1u32; 200];
    let params = GenerateParams {
        max_tokens: 100,
        ..Default::default()
    };
    let e = g.generate(&prompt, &params, |_| {}).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { .. }));
    let s = e.to_string();
    assert!(
        s.contains("200 tokens") && s.contains("max_tokens 100") && s.contains("256"),
        "{s}"
    );
    // Exactly the context is fine.
    let params = GenerateParams {
        max_tokens: 56,
        ignore_eos: true,
        ..Default::default()
    };
    assert_eq!(
        g.generate(&prompt, &params, |_| {}).unwrap().tokens.len(),
        56
    );
}

#[test]
fn invalid_sampling_value() {
    let dir = fixture("bitnet-tiny-packed");
    let m = Model::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &m.config).unwrap();
    let mut g = Generator::new(&m, &tok, None);
    let params = GenerateParams {
        sampling: SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = g
        .generate(&[507, 1, 2], &params, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("`top_p` = 1.5"), "{e}");
}

#[test]
fn token_id_out_of_range() {
    let dir = fixture("bitnet-tiny-packed");
    let m = Model::load(&dir).unwrap();
    let mut cache = KvCache::new(&m.config, 8);
    let mut st = RunState::new(&m.config, 8, 8);
    let e = m
        .forward_last(&[1, 512], &mut cache, &mut st)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "token id 512 is out of range for vocabulary size 512");
    let tok = Tokenizer::load(&dir, &m.config).unwrap();
    let mut g = Generator::new(&m, &tok, None);
    let e = g
        .generate(&[99999], &GenerateParams::default(), |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("99999"), "{e}");
}

/// A TQ2_0 GGUF with a 2-bit code 3 or with two different block scales in one projection: the
/// load names the file and the tensor (the transcoding fast path checks what the code path did).
#[test]
fn tq2_0_code_3_and_mixed_scales() {
    use bitnet_formats::gguf::GgufFile;
    let src = fixtures_dir()
        .join("bitnet-silu-gguf")
        .join("gguf")
        .join("tq2_0_default.gguf");
    let name = "blk.1.ffn_up.weight";
    let (start, nbytes) = {
        let f = GgufFile::open(&src).unwrap();
        let t = f.tensor(name).unwrap();
        (f.data_offset(t), t.nbytes)
    };
    let bytes = std::fs::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let load = |edit: &dyn Fn(&mut [u8])| {
        let mut b = bytes.clone();
        edit(&mut b[start..start + nbytes]);
        let p = dir.path().join("bad.gguf");
        std::fs::write(&p, &b).unwrap();
        match Model::load(&p) {
            Ok(_) => panic!("{} loaded but should not", p.display()),
            Err(e) => e.to_string(),
        }
    };
    // Block 3 (66 bytes each), byte 17: a code 3 at bits 4-5.
    let e = load(&|d| d[3 * 66 + 17] |= 0x30);
    assert!(
        e.contains("bad.gguf") && e.contains(name) && e.contains("code 3"),
        "{e}"
    );
    // Block 2 gets every code non-zero (+1) and a scale unlike the others.
    let e = load(&|d| {
        d[2 * 66..2 * 66 + 64].fill(0xAA);
        d[2 * 66 + 64..2 * 66 + 66]
            .copy_from_slice(&half::f16::from_f32(7.5).to_bits().to_le_bytes());
    });
    assert!(
        e.contains(name) && e.contains("block scales") && e.contains("7.5"),
        "{e}"
    );
    // A non-finite scale on the first block with weights.
    let e = load(&|d| d[64..66].copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes()));
    assert!(e.contains(name) && e.contains("not finite"), "{e}");
}
