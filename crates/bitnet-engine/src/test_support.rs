//! Locating the reference fixtures (`shared/fixtures`) for tests of this and other crates.

use std::path::PathBuf;

/// The fixtures directory: `$BITNET_FIXTURES`, else the first `shared/fixtures` found next to or
/// above the workspace (the repository normally sits beside `shared/`).
///
/// # Panics
/// When no fixtures directory exists: tests that need the reference must not silently pass.
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("BITNET_FIXTURES") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for a in here.ancestors() {
        let cand = a.join("shared/fixtures");
        if cand.join("README.md").is_file() {
            return cand;
        }
    }
    panic!(
        "reference fixtures not found: set BITNET_FIXTURES to the shared/fixtures directory \
         (searched for shared/fixtures above {})",
        here.display()
    );
}

/// The repository's own extra reference checkpoints (`tests/fixtures`, made by
/// `scripts/make-extra-fixtures.sh`).
pub fn repo_fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Every fixture checkpoint that carries a `reference.safetensors` (shared ones, then the
/// repository's), each group sorted by name.
///
/// # Panics
/// Also when `BITNET_KERNEL` forces a kernel that is not the one in use (the CPU lacks it, or
/// the name is unknown: the dispatcher then falls back to scalar, and the criteria would test
/// the scalar kernel while claiming another).
pub fn fixture_models() -> Vec<PathBuf> {
    if let Some(want) = std::env::var("BITNET_KERNEL")
        .ok()
        .filter(|k| !k.is_empty())
    {
        let got = bitnet_kernels::dispatch::active().name();
        assert_eq!(got, want, "BITNET_KERNEL={want} is not the kernel in use");
    }
    let mut all = Vec::new();
    for dir in [fixtures_dir(), repo_fixtures_dir()] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.join("reference.safetensors").is_file() && p.join("config.json").is_file()
            })
            .collect();
        v.sort();
        assert!(
            !v.is_empty(),
            "no fixture with reference.safetensors in {}",
            dir.display()
        );
        all.extend(v);
    }
    all
}

/// Prompt texts of a fixture's `reference.json`.
pub fn reference_prompts(model_dir: &std::path::Path) -> Vec<String> {
    let p = model_dir.join("reference.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    v["prompts"]
        .as_array()
        .expect("reference.json prompts")
        .iter()
        .map(|x| x["text"].as_str().expect("prompt text").to_string())
        .collect()
}

/// A tensor read into memory, for tests that rewrite checkpoints.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    /// Name.
    pub name: String,
    /// Dtype.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

/// Reads every tensor of a safetensors file (sorted by name).
pub fn read_tensors(path: &std::path::Path) -> Vec<OwnedTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut v: Vec<OwnedTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| OwnedTensor {
            name,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Writes tensors to a safetensors file.
pub fn write_tensors(path: &std::path::Path, tensors: &[OwnedTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .expect("consistent tensor");
            (t.name.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Copies the plain files of a checkpoint directory into `dst` (created if needed).
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).expect("create dir");
    for e in std::fs::read_dir(src).expect("read dir").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
        }
    }
}

/// Rewrites `dir/config.json` through `edit`.
pub fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("config")).expect("json");
    edit(&mut v);
    // The copy may be read-only (fixtures are): replace the file.
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, serde_json::to_string_pretty(&v).expect("json")).expect("write config");
}

/// Asserts the fixtures README's criteria 2 and 3 for prompts 0..3 of `reference` (a
/// `reference*.safetensors`): prompt logits from one forward pass, and the 24-step greedy decode
/// through the KV cache. Prints one line per prompt, prefixed with `label`.
///
/// # Panics
/// When a criterion fails (the message names the label, prompt and statistics).
pub fn assert_meets_reference(model: &crate::Model, reference: &std::path::Path, label: &str) {
    use crate::compare::{std_dev, GreedyReport, LogitStats, LogitsRecord};
    for i in 0..3 {
        let r = LogitsRecord::read(reference, &format!("p{i}."))
            .unwrap_or_else(|e| panic!("{}: {e}", reference.display()));
        let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
        let ref_greedy = r.greedy.as_ref().expect("reference greedy tokens");
        let s = std_dev(&r.logits);
        let (logits, greedy, gl) =
            crate::generate::greedy_with_logits(model, &ids, ref_greedy.len())
                .unwrap_or_else(|e| panic!("{label} p{i}: {e}"));
        let st = LogitStats::compute(&r.logits, &logits, r.vocab, s);
        let g: Vec<i64> = greedy.iter().map(|&x| x as i64).collect();
        let rep = GreedyReport::compute(
            ref_greedy,
            r.greedy_logits.as_ref().expect("reference greedy logits"),
            &g,
            &gl,
            r.vocab,
            s,
        );
        eprintln!(
            "{label} p{i}: prompt mean {:.2e}·s max {:.2e}·s top1 {}/{}; greedy steps {} part {:?}",
            st.mean_rel, st.max_rel, st.top1_agree, st.positions, rep.steps, rep.first_divergence
        );
        assert!(st.passes(), "{label} p{i}: {st:?}");
        assert!(rep.passes(), "{label} p{i}: {rep:?}");
    }
}
