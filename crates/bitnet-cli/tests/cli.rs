//! The built `bitnet` binary, used as a user would.

use bitnet_engine::test_support::{copy_dir, edit_config, fixture_models, reference_prompts};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bitnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bitnet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("output is valid UTF-8")
}

fn fixture(name: &str) -> PathBuf {
    fixture_models()
        .into_iter()
        .find(|d| d.ends_with(name))
        .unwrap_or_else(|| panic!("fixture {name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failing run: non-zero exit, an `error:` line containing every needle, no panic.
fn assert_error(out: &Output, needles: &[&str]) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(err.contains("error:"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn logits_then_compare_logits_pass_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixture_models() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let reference = dir.join("reference.safetensors");
        let refs = bitnet_engine::compare::LogitsRecord::read(&reference, "p0.").unwrap();
        for (i, prompt) in reference_prompts(&dir).iter().enumerate() {
            let out_path = tmp.path().join(format!("{name}-{i}.safetensors"));
            let mut args = vec![
                "logits",
                "--model",
                s(&dir),
                "--generate",
                "24",
                "-o",
                s(&out_path),
            ];
            let ids;
            if dir.join("tokenizer.json").is_file() {
                args.extend(["--prompt", prompt]);
            } else {
                // SentencePiece-only fixture: feed the reference ids.
                let r = bitnet_engine::compare::LogitsRecord::read(&reference, &format!("p{i}."))
                    .unwrap();
                ids = r
                    .ids
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                args.extend(["--tokens", &ids]);
            }
            let o = bitnet(&args);
            assert!(o.status.success(), "{name} p{i}: {}", text(&o.stderr));
            let prefix = format!("p{i}.");
            let o = bitnet(&[
                "compare-logits",
                s(&reference),
                s(&out_path),
                "--a-prefix",
                &prefix,
            ]);
            let stdout = text(&o.stdout);
            assert!(
                o.status.success(),
                "{name} p{i}: {stdout}{}",
                text(&o.stderr)
            );
            assert!(stdout.contains("ids:            identical"), "{stdout}");
            assert!(
                stdout.contains("greedy:         identical for all 24 steps"),
                "{name} p{i}: {stdout}"
            );
            assert!(stdout.contains("verdict:        PASS"), "{stdout}");
        }
        assert!(refs.vocab > 0);
    }
}

#[test]
fn compare_logits_fails_on_a_planted_bug() {
    let src = fixture("bitnet-tiny-packed");
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("model");
    copy_dir(&src, &bad);
    edit_config(&bad, |c| c["hidden_act"] = serde_json::json!("silu"));
    let out_path = t.path().join("bad.safetensors");
    let prompt = &reference_prompts(&src)[0];
    let o = bitnet(&[
        "logits",
        "--model",
        s(&bad),
        "--prompt",
        prompt,
        "--generate",
        "24",
        "-o",
        s(&out_path),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = bitnet(&[
        "compare-logits",
        s(&src.join("reference.safetensors")),
        s(&out_path),
        "--a-prefix",
        "p0.",
    ]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict:        FAIL"), "{stdout}");

    // Comparing different prompts reports differing ids.
    let o = bitnet(&[
        "compare-logits",
        s(&src.join("reference.safetensors")),
        s(&src.join("reference.safetensors")),
        "--a-prefix",
        "p0.",
        "--b-prefix",
        "p1.",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("ids:            DIFFER"));
}

#[test]
fn generate_streams_text_and_seeds_repeat() {
    let dir = fixture("bitnet-tiny-master");
    let run = |seed: &str| {
        let o = bitnet(&[
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            "You may copy",
            "--max-tokens",
            "40",
            "--temperature",
            "4",
            "--top-k",
            "100",
            "--seed",
            seed,
            "--ignore-eos",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains("prompt: ")
                && err.contains("tokens/s")
                && err.contains("generation: 40 tokens"),
            "{err}"
        );
        text(&o.stdout)
    };
    let a = run("11");
    assert!(!a.trim().is_empty());
    assert_eq!(a, run("11"), "same seed, same text");
    assert_ne!(a, run("12"), "another seed, another text");

    // Greedy through the CLI equals the reference continuation's text.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let p = &r["prompts"][0];
    let o = bitnet(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--ignore-eos",
    ]);
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout).trim_end_matches('\n'),
        p["greedy_text"].as_str().unwrap()
    );
}

#[test]
fn generate_stop_string_cuts_the_text() {
    let dir = fixture("bitnet-tiny-master");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let p = &r["prompts"][0];
    let full = p["greedy_text"].as_str().unwrap();
    // Stop at a piece from the middle of the known greedy continuation.
    let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[cut..].chars().take(3).collect();
    let expect = &full[..full.find(&stop).unwrap()];
    let o = bitnet(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--ignore-eos",
        "--stop",
        &stop,
    ]);
    assert!(o.status.success());
    assert_eq!(text(&o.stdout).trim_end_matches('\n'), expect);
    assert!(text(&o.stderr).contains("finish: stop"));
}

#[test]
fn chat_reads_piped_turns() {
    let dir = fixture("bitnet-tiny-packed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "chat",
            "--model",
            s(&dir),
            "--system",
            "Be brief.",
            "--max-tokens",
            "8",
            "--seed",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\nAnd again?\n/reset\nNew topic\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).lines().count(),
        3,
        "one reply line per user turn"
    );
    assert!(text(&o.stderr).contains("conversation cleared"));
}

#[test]
fn inspect_describes_the_checkpoint() {
    let o = bitnet(&["inspect", s(&fixture("gqa4-bitlinear-untied"))]);
    let out = text(&o.stdout);
    assert!(o.status.success());
    for needle in [
        "BitNetForCausalLM",
        "2 layers, hidden 128, intermediate 256, heads 8 (kv 2, head_dim 16, GQA 4:1), vocab 384",
        "bitlinear: divide",
        "separate lm_head",
        "context:       256 tokens",
        "BPE",
        "chat template: from the model",
    ] {
        assert!(out.contains(needle), "lacks {needle:?}: {out}");
    }
}

#[test]
fn errors_are_messages_not_panics() {
    let dir = fixture("bitnet-tiny-packed");
    let t = tempfile::tempdir().unwrap();
    let o = bitnet(&["generate", "--model", "/no/such/model", "--prompt", "x"]);
    assert_error(&o, &["/no/such/model"]);

    let bad = t.path().join("bad-config");
    copy_dir(&dir, &bad);
    edit_config(&bad, |c| {
        c.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    assert_error(
        &bitnet(&["inspect", s(&bad)]),
        &["config.json", "`num_hidden_layers`"],
    );

    let o = bitnet(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "x",
        "--top-p",
        "2",
    ]);
    assert_error(&o, &["`top_p` = 2"]);
    let o = bitnet(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "x",
        "--temperature",
        "-1",
    ]);
    assert_error(&o, &["`temperature` = -1"]);
    let o = bitnet(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "x",
        "--max-tokens",
        "1000",
    ]);
    assert_error(&o, &["exceeds the model's context of 256 tokens"]);
    let out = t.path().join("x.safetensors");
    let o = bitnet(&[
        "logits",
        "--model",
        s(&dir),
        "--tokens",
        "1,2,512",
        "-o",
        s(&out),
    ]);
    assert_error(
        &o,
        &["token id 512 is out of range for vocabulary size 512"],
    );
    let o = bitnet(&[
        "logits",
        "--model",
        s(&dir),
        "--tokens",
        "1,x",
        "-o",
        s(&out),
    ]);
    assert_error(&o, &["element 1 (\"x\")"]);
    let o = bitnet(&[
        "compare-logits",
        s(&dir.join("config.json")),
        s(&dir.join("reference.safetensors")),
    ]);
    assert_error(&o, &["config.json", "invalid safetensors"]);
    let o = bitnet(&[
        "compare-logits",
        s(&dir.join("reference.safetensors")),
        s(&dir.join("reference.safetensors")),
    ]);
    assert_error(&o, &["no tensor `ids`", "p0."]);
}

#[test]
fn convert_to_each_gguf_type_and_back_to_hf_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    for (fx, reference, prefix) in [
        ("bitnet-silu-gguf", "reference_llamacpp.safetensors", "p2."),
        ("bitnet-tiny-packed", "reference.safetensors", "p2."),
    ] {
        let src = fixture(fx);
        let prompt = &reference_prompts(&src)[2];
        for ty in ["tq2_0", "tq1_0", "i2_s", "f16"] {
            let out = t(&format!("{fx}-{ty}.gguf"));
            let o = bitnet(&["convert", s(&src), "-o", s(&out), "--type", ty]);
            let err = text(&o.stderr);
            assert!(o.status.success(), "{err}");
            assert!(err.contains("verified: all 14 ternary tensors"), "{err}");
            // GGUF → HF (2B-4T packed), tokenizer included, then logits against the reference.
            let hf = t(&format!("{fx}-{ty}-hf"));
            let o = bitnet(&["convert", s(&out), "--to", "hf", "-o", s(&hf)]);
            assert!(o.status.success(), "{}", text(&o.stderr));
            for model in [&out, &hf] {
                let lo = t("l.safetensors");
                let o = bitnet(&[
                    "logits",
                    "--model",
                    s(model),
                    "--prompt",
                    prompt,
                    "--generate",
                    "24",
                    "-o",
                    s(&lo),
                ]);
                assert!(o.status.success(), "{}", text(&o.stderr));
                // i2_s keeps the f32 scale (the HF reference); the others store f16 scales.
                let r = if ty == "i2_s" {
                    "reference.safetensors"
                } else {
                    reference
                };
                let o = bitnet(&[
                    "compare-logits",
                    s(&src.join(r)),
                    s(&lo),
                    "--a-prefix",
                    prefix,
                ]);
                let out_txt = text(&o.stdout);
                assert!(
                    o.status.success(),
                    "{fx} {ty} {}: {out_txt}",
                    model.display()
                );
                assert!(out_txt.contains("ids:            identical"), "{out_txt}");
            }
        }
    }
    // Bad types are errors naming the flag.
    let o = bitnet(&[
        "convert",
        s(&fixture("bitnet-tiny-packed")),
        "-o",
        s(&t("x.gguf")),
        "--type",
        "q4_0",
    ]);
    assert_error(&o, &["--type \"q4_0\"", "i2_s, tq1_0, tq2_0, f16"]);
}

#[test]
fn perplexity_and_inspect_on_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let text_file = tmp.path().join("t.txt");
    let body: String = reference_prompts(&fixture("bitnet-silu-gguf"))
        .join("\n")
        .repeat(20);
    std::fs::write(&text_file, body).unwrap();
    let g = fixture("bitnet-silu-gguf").join("gguf/tq2_0_default.gguf");
    let o = bitnet(&[
        "perplexity",
        "--model",
        s(&g),
        "--file",
        s(&text_file),
        "--ctx",
        "64",
        "--chunks",
        "3",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        out.contains("perplexity: ") && out.contains("3 chunks of 64 tokens, 93 tokens scored"),
        "{out}"
    );
    let o = bitnet(&["inspect", s(&g)]);
    let out = text(&o.stdout);
    for needle in [
        "GGUF v3",
        "bitnet",
        "Q6_K: 1 tensors",
        "TQ2_0: 14 tensors",
        "SentencePiece BPE",
        "vocab 1000",
    ] {
        assert!(out.contains(needle), "lacks {needle:?}: {out}");
    }
    let o = bitnet(&[
        "perplexity",
        "--model",
        s(&g),
        "--file",
        s(&text_file),
        "--ctx",
        "100000",
    ]);
    assert_error(&o, &["ctx", "between 4 and the model's context of 256"]);
}

#[test]
fn create_model_then_bench_json() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("tiny.gguf");
    let o = bitnet(&[
        "create-model",
        "--shape",
        "tiny",
        "--type",
        "tq2_0",
        "--out",
        s(&m),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Its special tokens are added tokens, not vocabulary entries: `inspect` names the model
    // kind without `tokenizers` warning that the vocabulary "could be corrupted".
    let o = bitnet(&["inspect", s(&m)]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(
        o.status.success() && out.contains("tokenizer:     BPE"),
        "{out}{err}"
    );
    assert!(!err.contains("WARN"), "{err}");
    let o = bitnet(&[
        "bench",
        "-m",
        s(&m),
        "-p",
        "16",
        "-n",
        "8",
        "-t",
        "1,2",
        "-r",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        for k in [
            "n_prompt",
            "n_gen",
            "n_threads",
            "avg_ts",
            "stddev_ts",
            "avg_ns",
            "samples_ts",
        ] {
            assert!(r.get(k).is_some(), "missing {k}: {r}");
        }
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }
    assert!(rows
        .iter()
        .any(|r| r["n_gen"] == 8 && r["gbps"].as_f64().unwrap() > 0.0));
    // The random model's byte-level vocabulary tokenizes and generates.
    let o = bitnet(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "hello",
        "--max-tokens",
        "4",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}
