//! Streamed text is whole UTF-8 characters even when one character spans several byte-level
//! tokens, and the pieces add up to the full decode.

use bitnet_engine::test_support::fixture_models;
use bitnet_engine::tokenizer::StreamDecoder;
use bitnet_engine::{ModelConfig, Tokenizer};

#[test]
fn stream_decoder_never_splits_characters() {
    let dir = fixture_models()
        .into_iter()
        .find(|d| d.ends_with("bitnet-tiny-packed"))
        .unwrap();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tok = Tokenizer::load(&dir, &cfg).unwrap();
    let text = "naïve café — 🦀 crabs, 日本語, ünïcödé ∑x² 👩‍👩‍👧";
    let ids = tok.encode(text, false).unwrap();
    // The small byte-level vocabulary splits these characters over several tokens.
    assert!(ids.len() > text.chars().count() / 2, "{ids:?}");
    let split = ids
        .iter()
        .filter(|&&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(
        split >= 4,
        "expected byte tokens that are partial characters, found {split}"
    );

    let prompt = tok.encode("Say:", true).unwrap();
    let mut dec = StreamDecoder::new(&prompt);
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(p) = dec.push(&tok, id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = dec.flush(&tok).unwrap() {
        pieces.push(p);
    }
    for p in &pieces {
        assert!(
            !p.contains('\u{FFFD}'),
            "piece with a broken character: {p:?}"
        );
    }
    assert_eq!(pieces.concat(), text);
    assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap());
}
