//! SentencePiece tokenizer. (in progress)
