//! `bitnet train-tokenizer`, `bitnet train` (exports, ctrl-c, resume, clear errors) and the
//! bundled default model, through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bitnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("BITNET_MODEL")
        .output()
        .expect("run bitnet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Text with repeated phrases: learnable in a few dozen steps.
fn corpus(dir: &Path) -> PathBuf {
    let lines = [
        "In the beginning God created the heaven and the earth.",
        "And the earth was without form, and void.",
        "And God said, Let there be light: and there was light.",
        "And God saw the light, that it was good.",
        "And the evening and the morning were the first day.",
    ];
    let mut t = String::new();
    for i in 0..150 {
        for j in 0..4 {
            t.push_str(lines[(i * 3 + j * 2) % lines.len()]);
            t.push('\n');
        }
        t.push('\n');
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, t).unwrap();
    p
}

/// The corpus and a 400-token BPE trained on it by `bitnet train-tokenizer`.
fn corpus_and_tokenizer(dir: &Path) -> (PathBuf, PathBuf) {
    let data = corpus(dir);
    let tok = dir.join("tokenizer.json");
    ok(&bitnet(&[
        "train-tokenizer",
        "--vocab",
        "400",
        s(&data),
        "-o",
        s(&tok),
    ]));
    (data, tok)
}

fn shape(dir: &Path) -> PathBuf {
    let p = dir.join("shape.json");
    std::fs::write(
        &p,
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "relu2",
            "max_position_embeddings": 256, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    p
}

#[test]
fn tokenizer_train_export_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = corpus(d);
    let tok = d.join("tok/tokenizer.json");
    let o = bitnet(&["train-tokenizer", "--vocab", "400", s(&data), "-o", s(&tok)]);
    ok(&o);
    assert!(d.join("tok/tokenizer_config.json").is_file());

    let (ckpt, hf, gguf) = (d.join("ckpt"), d.join("hf"), d.join("m.gguf"));
    let o = bitnet(&[
        "train",
        "--config",
        s(&shape(d)),
        "--tokenizer",
        s(&tok),
        "--data",
        s(&data),
        "--out",
        s(&ckpt),
        "--steps",
        "80",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--lr",
        "4e-3",
        "--warmup",
        "5",
        "--eval-every",
        "10",
        "--eval-windows",
        "4",
        "--heldout",
        "0.05",
        "--export-hf",
        s(&hf),
        "--export-gguf",
        s(&gguf),
    ]);
    ok(&o);
    let err = text(&o.stderr);
    assert!(err.contains("held-out loss"), "{err}");
    assert!(
        err.contains("exported") && err.contains("verified"),
        "{err}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    let losses: Vec<f64> = state["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 80);
    assert!(losses[79] < 0.6 * losses[0], "loss falls: {losses:?}");

    // Every form runs in the engine: checkpoint (float master weights), HF packed, GGUF.
    for m in [&ckpt, &hf, &gguf] {
        let o = bitnet(&[
            "generate",
            "--model",
            s(m),
            "--prompt",
            "And God said",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ]);
        ok(&o);
        assert!(!text(&o.stdout).trim().is_empty(), "{}", m.display());
    }
    // Resuming a finished run has nothing left to do and says so.
    let o = bitnet(&["train", "--resume", s(&ckpt)]);
    ok(&o);
    assert!(
        text(&o.stderr).contains("done at step 80"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (data, tok) = corpus_and_tokenizer(d);
    let ckpt = d.join("ckpt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "train",
            "--config",
            s(&shape(d)),
            "--tokenizer",
            s(&tok),
            "--data",
            s(&data),
            "--out",
            s(&ckpt),
            "--steps",
            "100000",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--eval-every",
            "0",
            "--save-every",
            "0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "interrupted runs exit with 130");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(step > 0, "some steps ran before the interrupt");
    assert_eq!(state["losses"].as_array().unwrap().len() as u64, step);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (data, tok) = corpus_and_tokenizer(d);
    let base = |extra: &[&str]| {
        let mut v = vec![
            "train".to_string(),
            "--config".into(),
            s(&shape(d)).into(),
            "--tokenizer".into(),
            s(&tok).into(),
            "--out".into(),
            s(&d.join("o")).into(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        bitnet(&refs)
    };
    let mut cases: Vec<(Vec<String>, &[&str])> = vec![
        (base(&["--data", "/nonexistent.txt"]), &["/nonexistent.txt"]),
        (base(&["--data", s(&data), "--lr", "0"]), &["--lr"]),
        (
            base(&["--data", s(&data), "--seq-len", "100000"]),
            &["--seq-len", "tokens"],
        ),
        (
            vec![
                "train-tokenizer".into(),
                "--vocab".into(),
                "10".into(),
                s(&data).into(),
                "-o".into(),
                s(&d.join("t.json")).into(),
            ],
            &["--vocab"],
        ),
    ];
    let tiny = d.join("tiny.txt");
    std::fs::write(&tiny, "Amen.\n").unwrap();
    cases.push((
        base(&["--data", s(&tiny), "--seq-len", "32"]),
        &["--seq-len", "fewer than one window"],
    ));
    let bad_jsonl = d.join("bad.jsonl");
    std::fs::write(&bad_jsonl, "{\"text\": \"ok\"}\n{\"body\": 3}\n").unwrap();
    cases.push((
        base(&["--data", s(&bad_jsonl)]),
        &["bad.jsonl", "line 2", "text"],
    ));
    for (args, needles) in cases {
        let o = run(args.clone());
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
        }
    }
}

#[test]
fn generate_without_model_uses_the_bundled_model() {
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/kjv-bitnet");
    assert!(
        bundled.join("config.json").is_file(),
        "the bundled model is missing at {}",
        bundled.display()
    );
    let o = bitnet(&[
        "generate",
        "--prompt",
        "And God said",
        "--max-tokens",
        "24",
        "--seed",
        "1",
    ]);
    ok(&o);
    let out = text(&o.stdout);
    // Trained on the King James Bible: its commonest words come back.
    let words = [
        "the", "and", "of", "unto", "shall", "lord", "god", "he", "that",
    ];
    let lower = out.to_lowercase();
    let hits = words
        .iter()
        .filter(|w| lower.split(|c: char| !c.is_alphabetic()).any(|t| t == **w))
        .count();
    assert!(hits >= 2, "expected KJV words in {out:?}");
}
