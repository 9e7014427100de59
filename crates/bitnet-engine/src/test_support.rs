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

/// The fixture checkpoints that carry a `reference.safetensors`, sorted by name.
pub fn fixture_models() -> Vec<PathBuf> {
    let dir = fixtures_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.safetensors").is_file() && p.join("config.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixture with reference.safetensors in {}", dir.display());
    v
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
