//! Training end to end on data made here: the loss falls, resume reproduces the uninterrupted
//! run, exports run in the engine with the trainer's own logits, and fine-tuning starts from a
//! fixture checkpoint.

use bitnet_engine::compare::{std_dev, LogitStats};
use bitnet_engine::convert::gguf_out::GgufOptions;
use bitnet_engine::generate::greedy_with_logits;
use bitnet_engine::weights::Checkpoint;
use bitnet_engine::{Model, ModelConfig, Tokenizer};
use bitnet_formats::gguf::GgmlType;
use bitnet_train::optim::AdamWConfig;
use bitnet_train::{QuantMode, TrainModel, TrainOptions, Trainer};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A small corpus with structure a tiny model learns in seconds.
fn write_corpus(path: &Path) {
    let who = [
        "the shepherd",
        "the king",
        "a woman",
        "the people",
        "my brother",
        "the priest",
    ];
    let did = [
        "went up to",
        "came down from",
        "dwelt in",
        "looked upon",
        "spake unto",
    ];
    let what = [
        "the city",
        "the mountain",
        "the house of the lord",
        "the river",
        "jerusalem",
    ];
    let mut s = String::new();
    let mut k = 7usize;
    for doc in 0..240 {
        for _ in 0..4 {
            k = k.wrapping_mul(1103515245).wrapping_add(12345) % (1 << 31);
            s.push_str(&format!(
                "And {} {} {}.\n",
                who[k % who.len()],
                did[(k / 7) % did.len()],
                what[(k / 49) % what.len()]
            ));
        }
        if doc % 3 == 0 {
            s.push_str("And it was so.\n");
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn small_config(dir: &Path, tokenizer: &Path) -> ModelConfig {
    let tok = bitnet_train::data::load_tokenizer(tokenizer).unwrap();
    let (bos, eos) = bitnet_train::tokenizer_train::special_ids(&tok);
    let v = serde_json::json!({
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "vocab_size": tok.get_vocab_size(true), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "relu2", "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": bos, "eos_token_id": eos,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "online"}
    });
    ModelConfig::from_value(&v, &dir.join("config.json")).unwrap()
}

fn options(data: PathBuf, tokenizer: PathBuf, steps: usize) -> TrainOptions {
    TrainOptions {
        data: vec![data],
        tokenizer,
        seq_len: 32,
        batch_size: 8,
        grad_accum: 2,
        steps,
        lr: 4e-3,
        min_lr: 4e-4,
        warmup: 5,
        adamw: AdamWConfig::default(),
        clip: 1.0,
        seed: 42,
        eval_every: 20,
        eval_windows: 8,
        heldout_frac: 0.05,
        save_every: 0,
        init_std: 0.02,
        distill: None,
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    tokenizer: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("corpus.txt");
    write_corpus(&data);
    let tokenizer = root.join("tok/tokenizer.json");
    let n = bitnet_train::tokenizer_train::train_tokenizer(
        std::slice::from_ref(&data),
        320,
        &tokenizer,
    )
    .unwrap();
    assert!(n <= 320 && n > 256, "vocab {n}");
    Setup {
        _tmp: tmp,
        root,
        data,
        tokenizer,
    }
}

#[test]
fn loss_falls_resume_is_exact_and_exports_run_in_the_engine() {
    let s = setup();
    let steps = 120;
    let cfg = small_config(&s.root, &s.tokenizer);

    // The uninterrupted run.
    let model = TrainModel::new_random(cfg.clone(), 0.02, 1, DType::F32).unwrap();
    let full_dir = s.root.join("full");
    let mut t = Trainer::new(
        model,
        options(s.data.clone(), s.tokenizer.clone(), steps),
        &full_dir,
    )
    .unwrap();
    let report = t.run(&AtomicBool::new(false), false).unwrap();
    let losses = report.state.losses.clone();
    assert_eq!(losses.len(), steps);
    let first = losses[0];
    let last: f32 = losses[steps - 5..].iter().sum::<f32>() / 5.0;
    eprintln!(
        "loss {first:.3} → {last:.3}; evals {:?}",
        report.state.evals
    );
    assert!(first > 5.0, "starts near ln(vocab): {first}");
    assert!(
        last < 0.5 * first,
        "loss must fall well below its start: {first} → {last}"
    );
    let eval = report.state.evals.last().expect("held-out evaluation");
    assert!(
        eval.loss < 0.5 * first && eval.perplexity.is_finite(),
        "{eval:?}"
    );

    // Interrupted after 45 steps, saved, resumed from disk: the same losses, bit for bit.
    let model = TrainModel::new_random(cfg.clone(), 0.02, 1, DType::F32).unwrap();
    let part_dir = s.root.join("part");
    let mut t = Trainer::new(
        model,
        options(s.data.clone(), s.tokenizer.clone(), steps),
        &part_dir,
    )
    .unwrap();
    for _ in 0..45 {
        t.step().unwrap();
    }
    t.save().unwrap();
    drop(t);
    let mut t = Trainer::resume(&part_dir).unwrap();
    assert_eq!(t.state.step, 45);
    let resumed = t.run(&AtomicBool::new(false), false).unwrap();
    assert_eq!(
        resumed.state.losses, losses,
        "resume must reproduce the loss curve"
    );

    // The trainer's own forward on a text, and the engine on every form of the result.
    let trained = TrainModel::from_checkpoint(
        ModelConfig::from_file(&full_dir.join("config.json")).unwrap(),
        &Checkpoint::open(&full_dir).unwrap(),
        DType::F32,
    )
    .unwrap();
    let tok = Tokenizer::load(&full_dir, &trained.config).unwrap();
    let ids = tok
        .encode(
            "And the king went up to the mountain.\nAnd the people",
            true,
        )
        .unwrap();
    assert_eq!(ids[0], trained.config.bos_token_id.unwrap(), "BOS first");
    let t_ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let ours: Vec<f32> = trained
        .forward(&t_ids, QuantMode::Ternary)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let s_ref = std_dev(&ours);
    let hf = s.root.join("export-hf");
    bitnet_train::export::export_hf(&full_dir, &hf).unwrap();
    let gguf = s.root.join("export.gguf");
    bitnet_train::export::export_gguf(
        &full_dir,
        &gguf,
        GgufOptions {
            ternary: GgmlType::TQ2_0,
            embedding: GgmlType::F16,
        },
    )
    .unwrap();
    let packed_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        packed_cfg["quantization_config"]["quantization_mode"],
        "offline"
    );
    for path in [&full_dir, &hf, &gguf] {
        let m = Model::load(path).unwrap();
        let (logits, _, _) = greedy_with_logits(&m, &ids, 0).unwrap();
        let st = LogitStats::compute(&ours, &logits, m.config.vocab_size, s_ref);
        eprintln!("{}: {st:?}", path.display());
        assert!(st.passes(), "{}: {st:?}", path.display());
        // The tokenizer travels with the export.
        let t2 = Tokenizer::load(path, &m.config).unwrap();
        assert_eq!(
            t2.encode("And the king", true).unwrap(),
            tok.encode("And the king", true).unwrap()
        );
    }
}

#[test]
fn fine_tuning_starts_from_the_fixture_master_weights() {
    let fixture = bitnet_engine::test_support::fixtures_dir().join("bitnet-tiny-master");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("corpus.txt");
    write_corpus(&data);
    let config = ModelConfig::from_file(&fixture.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&fixture).unwrap();
    let model = TrainModel::from_checkpoint(config, &ckpt, DType::F32).unwrap();
    let mut o = options(data, fixture.join("tokenizer.json"), 12);
    o.lr = 2e-3;
    o.eval_every = 0;
    let out = tmp.path().join("ft");
    let mut t = Trainer::new(model, o, &out).unwrap();
    let before = t.evaluate().unwrap().unwrap();
    let report = t.run(&AtomicBool::new(false), false).unwrap();
    let after = report.state.evals.last().unwrap();
    eprintln!("held-out {before:?} → {after:?}");
    assert!(
        after.loss < before.loss,
        "fine-tuning lowers the held-out loss"
    );
    // The fine-tuned checkpoint runs in the engine and keeps the fixture's tokenizer.
    let m = Model::load(&out).unwrap();
    assert_eq!(m.config.vocab_size, 512);
    let tok = Tokenizer::load(&out, &m.config).unwrap();
    assert_eq!(tok.bos_id(), Some(507));
}

#[test]
fn distillation_moves_the_student_towards_the_teachers_logits() {
    // Teacher: the fixture model run by the engine (`bitnet logits` writes the same record).
    let fixture = bitnet_engine::test_support::fixtures_dir().join("bitnet-tiny-master");
    let teacher = Model::load(&fixture).unwrap();
    let tok = Tokenizer::load(&fixture, &teacher.config).unwrap();
    let ids = tok.encode("In the beginning was the word", true).unwrap();
    let (logits, greedy, greedy_logits) = greedy_with_logits(&teacher, &ids, 16).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rec_path = tmp.path().join("teacher.safetensors");
    bitnet_engine::compare::LogitsRecord {
        ids: ids.iter().map(|&x| x as i64).collect(),
        logits,
        vocab: teacher.config.vocab_size,
        greedy: Some(greedy.iter().map(|&x| x as i64).collect()),
        greedy_logits: Some(greedy_logits),
    }
    .write(&rec_path)
    .unwrap();

    let data = tmp.path().join("corpus.txt");
    write_corpus(&data);
    let student = TrainModel::new_random(teacher.config.clone(), 0.02, 9, DType::F32).unwrap();
    let mut o = options(data, fixture.join("tokenizer.json"), 30);
    o.eval_every = 0;
    o.distill = Some(bitnet_train::distill::DistillOptions {
        files: vec![rec_path],
        weight: 1.0,
        temperature: 1.0,
    });
    let mut t = Trainer::new(student, o, &tmp.path().join("student")).unwrap();
    let report = t.run(&AtomicBool::new(false), false).unwrap();
    let l = &report.state.losses;
    eprintln!("KL(teacher ‖ student): {:.4} → {:.4}", l[0], l[l.len() - 1]);
    assert!(
        l[l.len() - 1] < 0.5 * l[0],
        "distillation loss falls: {l:?}"
    );
}
