//! Checkpoint variants built from the fixtures at test time: sharded weights, the 1bitLLM tensor
//! layout, and planted bugs that the reference criteria must catch.

use bitnet_engine::compare::{std_dev, LogitStats, LogitsRecord};
use bitnet_engine::test_support::*;
use bitnet_engine::{Architecture, Model};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    fixture_models()
        .into_iter()
        .find(|d| d.ends_with(name))
        .unwrap_or_else(|| panic!("fixture {name}"))
}

/// Prompt-logit statistics of the model in `dir` against `reference_dir`'s prompt 0..3.
fn stats(dir: &Path, reference_dir: &Path) -> Vec<LogitStats> {
    let model = Model::load(dir).unwrap();
    (0..3)
        .map(|i| {
            let r = LogitsRecord::read(
                &reference_dir.join("reference.safetensors"),
                &format!("p{i}."),
            )
            .unwrap();
            let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let (logits, _, _) =
                bitnet_engine::generate::greedy_with_logits(&model, &ids, 0).unwrap();
            LogitStats::compute(&r.logits, &logits, r.vocab, std_dev(&r.logits))
        })
        .collect()
}

fn copy_of(src: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(src, t.path());
    t
}

#[test]
fn sharded_checkpoint_with_index_matches() {
    let src = fixture("bitnet-tiny-packed");
    let t = copy_of(&src);
    let tensors = read_tensors(&src.join("model.safetensors"));
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_tensors(&t.path().join(names[0]), a);
    write_tensors(&t.path().join(names[1]), b);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, names[0]), (b, names[1])] {
        for x in part {
            map.insert(x.name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        t.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for s in stats(t.path(), &src) {
        assert!(s.passes() && s.max_rel < 1e-4, "{s:?}");
    }
}

#[test]
fn one_bit_llm_layout_matches() {
    // The 1bitLLM reproductions: class BitnetForCausalLM, model_type llama, sub-norms named
    // inner_attn_ln / ffn_layernorm, no quantization_config (float weights, quantized online),
    // rope_theta at top level. Same math as the SiLU master fixture, so the same reference holds.
    let src = fixture("mqa-silu-master-tied");
    let t = copy_of(&src);
    let tensors: Vec<OwnedTensor> = read_tensors(&src.join("model.safetensors"))
        .into_iter()
        .map(|mut x| {
            x.name = x
                .name
                .replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln")
                .replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm");
            x
        })
        .collect();
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    write_tensors(&t.path().join("model.safetensors"), &tensors);
    edit_config(t.path(), |c| {
        c["architectures"] = json!(["BitnetForCausalLM"]);
        c["model_type"] = json!("llama");
        let theta = c["rope_parameters"]["rope_theta"].clone();
        c.as_object_mut().unwrap().remove("rope_parameters");
        c.as_object_mut().unwrap().remove("quantization_config");
        c["rope_theta"] = theta;
    });
    let m = Model::load(t.path()).unwrap();
    assert_eq!(m.config.architecture, Architecture::Bitnet1bitLlm);
    for s in stats(t.path(), &src) {
        assert!(s.passes(), "{s:?}");
    }
}

#[test]
fn planted_bugs_fail_the_criteria() {
    // Each edit reproduces a bug public engines shipped; the criteria must reject every one.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "bitnet-tiny-packed",
            Box::new(|c| c["hidden_act"] = json!("silu")),
        ),
        (
            "bitnet-tiny-packed",
            Box::new(|c| c["quantization_config"]["linear_class"] = json!("bitlinear")),
        ),
        (
            "gqa4-bitlinear-untied",
            Box::new(|c| c["quantization_config"]["linear_class"] = json!("autobitlinear")),
        ),
        (
            "bitnet-tiny-master",
            Box::new(|c| c["rope_parameters"]["rope_theta"] = json!(10000.0)),
        ),
        (
            "mqa-silu-master-tied",
            Box::new(|c| c["hidden_act"] = json!("relu2")),
        ),
    ];
    for (name, edit) in cases {
        let src = fixture(name);
        let t = copy_of(&src);
        edit_config(t.path(), edit);
        let all = stats(t.path(), &src);
        assert!(
            all.iter().any(|s| !s.passes()),
            "{name}: planted bug not caught: {all:?}"
        );
    }
}
