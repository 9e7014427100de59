//! A pure-Rust SentencePiece tokenizer for BPE models (`tokenizer.model`, or the `llama`
//! vocabulary of a GGUF file), encoding and decoding exactly as the sentencepiece library does.
//!
//! What is reproduced, from sentencepiece's `normalizer.cc`, `bpe_model.cc`,
//! `model_interface.cc` and `sentencepiece_processor.cc`:
//!
//! * **Normalization**: the `precompiled_charsmap` rules (a Darts double-array trie, longest
//!   prefix match; this is how `nmt_nfkc` and custom rule sets work; an empty charsmap, as with
//!   `identity`, leaves the text as is), user-defined symbols copied untouched,
//!   `remove_extra_whitespaces` (drop leading and trailing spaces, collapse runs of spaces),
//!   `add_dummy_prefix` (a space in front) and `escape_whitespaces` (space → `▁`). Only U+0020
//!   counts as a space, as in sentencepiece.
//! * **BPE**: the normalized text is split into characters (user-defined symbols are single,
//!   frozen symbols); the adjacent pair with the highest score whose concatenation is a NORMAL,
//!   USER_DEFINED or UNUSED piece is merged (ties: leftmost) until no pair applies; UNUSED results
//!   are split back into the pieces they were merged from. There is no pre-splitting of the text:
//!   like sentencepiece, the encoder relies on the vocabulary (`split_digits` and
//!   `split_by_whitespace` only shape what the trainer puts in it).
//! * **Unknowns**: a symbol that is no piece becomes its UTF-8 bytes as `<0xXX>` pieces when
//!   `byte_fallback` is on, otherwise the unknown id (a run of unknown symbols gives one id).
//! * **Decoding**: runs of byte pieces are decoded as UTF-8, each invalid byte giving U+FFFD;
//!   `▁` → space; the space of the first piece is dropped (when the model adds a dummy prefix or
//!   removes extra whitespace); the unknown piece gives the model's `unk_surface` (` ⁇ `); then
//!   the `denormalizer_spec` rules, if any, apply.
//!
//! Not supported (a clear error when loading): model types other than BPE (Unigram, word,
//! char) and `treat_whitespace_as_suffix`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod proto;
use proto::parse_model;

/// The whitespace symbol U+2581 (LOWER ONE EIGHTH BLOCK).
const SPACE: &str = "\u{2581}";
/// sentencepiece's default `unk_surface`.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// The type of a vocabulary entry (`ModelProto.SentencePiece.Type`; GGUF `token_type` uses the
/// same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceType {
    /// An ordinary piece (1).
    Normal,
    /// The unknown piece, `<unk>` (2).
    Unknown,
    /// A control symbol such as `<s>`, `</s>` (3): never produced from text.
    Control,
    /// A user-defined symbol (4): always one token when it occurs in the text.
    UserDefined,
    /// A piece excluded from the output (5): merged, then split back.
    Unused,
    /// A byte piece `<0xXX>` for byte fallback (6).
    Byte,
}

impl PieceType {
    /// The type for its protobuf / GGUF number (1 to 6).
    pub fn from_number(n: u64) -> Option<Self> {
        use PieceType::*;
        let all = [Normal, Unknown, Control, UserDefined, Unused, Byte];
        all.get(usize::try_from(n.checked_sub(1)?).ok()?).copied()
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmPiece {
    /// The piece text, with `▁` for spaces (`<0xXX>` for byte pieces).
    pub piece: String,
    /// BPE merge priority: larger merges first.
    pub score: f32,
    /// The piece type.
    pub kind: PieceType,
}

/// Options of a SentencePiece model.
///
/// `split_digits` and `split_by_whitespace` are training options, recorded for information:
/// as in sentencepiece they do not change encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpmOptions {
    /// Prepend a space (`▁`) to the text, and drop it from the start when decoding.
    pub add_dummy_prefix: bool,
    /// Strip leading and trailing spaces and collapse runs of spaces into one.
    pub remove_extra_whitespaces: bool,
    /// Encode unknown characters as UTF-8 byte pieces (needs all 256 `<0xXX>` pieces).
    pub byte_fallback: bool,
    /// Trainer option: digits were kept as separate pieces.
    pub split_digits: bool,
    /// Trainer option: pieces did not cross whitespace.
    pub split_by_whitespace: bool,
    /// The unknown piece (the one piece of type [`PieceType::Unknown`]).
    pub unk_id: Option<u32>,
    /// Beginning-of-sequence id (not added by [`SpmTokenizer::encode`]).
    pub bos_id: Option<u32>,
    /// End-of-sequence id (not added by [`SpmTokenizer::encode`]).
    pub eos_id: Option<u32>,
}

impl Default for SpmOptions {
    /// sentencepiece's defaults: dummy prefix, extra whitespace removed, no byte fallback; ids
    /// unset (`from_pieces` takes the unknown id from the vocabulary).
    fn default() -> Self {
        Self {
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            byte_fallback: false,
            split_digits: false,
            split_by_whitespace: true,
            unk_id: None,
            bos_id: None,
            eos_id: None,
        }
    }
}

/// A SentencePiece BPE tokenizer. See the [module documentation](self) for what it reproduces.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    pieces: Vec<SpmPiece>,
    opts: SpmOptions,
    /// NORMAL, USER_DEFINED and UNUSED pieces: what BPE may merge into.
    normal: HashMap<String, u32>,
    /// The other pieces (unknown, control, byte), looked up first as in sentencepiece.
    reserved: HashMap<String, u32>,
    /// User-defined symbols by first character, longest first.
    user_defined: HashMap<char, Vec<u32>>,
    has_unused: bool,
    unk: u32,
    byte_ids: Vec<u32>,
    norm: NormSpec,
    denorm: Option<NormSpec>,
    unk_surface: String,
}

impl SpmTokenizer {
    /// Loads a SentencePiece `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a serialized `sentencepiece.ModelProto`; `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let m = parse_model(bytes).map_err(|e| err(format!("invalid SentencePiece model: {e}")))?;
        let t = &m.trainer;
        let model_type = t.model_type.unwrap_or(1);
        if model_type != 2 {
            let names = ["?", "UNIGRAM", "BPE", "WORD", "CHAR"];
            let name = usize::try_from(model_type).ok().and_then(|i| names.get(i));
            return Err(err(format!(
                "unsupported SentencePiece model type {model_type} ({}): only BPE (2) is supported",
                name.unwrap_or(&"unknown")
            )));
        }
        if t.treat_whitespace_as_suffix {
            return Err(err("treat_whitespace_as_suffix is not supported".into()));
        }
        // As sentencepiece's unk_id()/bos_id()/eos_id(): the named piece, if of the right type.
        let find = |name: &Option<String>, default: &str, kind: PieceType| {
            let name = name.as_deref().filter(|s| !s.is_empty()).unwrap_or(default);
            let i = m
                .pieces
                .iter()
                .position(|p| p.piece == name && p.kind == kind);
            i.and_then(|i| u32::try_from(i).ok())
        };
        let opts = SpmOptions {
            add_dummy_prefix: m.normalizer.add_dummy_prefix,
            remove_extra_whitespaces: m.normalizer.remove_extra_whitespaces,
            byte_fallback: t.byte_fallback,
            split_digits: t.split_digits,
            split_by_whitespace: t.split_by_whitespace.unwrap_or(true),
            unk_id: None,
            bos_id: find(&t.bos_piece, "<s>", PieceType::Control),
            eos_id: find(&t.eos_piece, "</s>", PieceType::Control),
        };
        let unk_surface = t.unk_surface.clone().unwrap_or(DEFAULT_UNK_SURFACE.into());
        let denorm = m.denormalizer.filter(|d| d.charsmap.is_some());
        Self::build(m.pieces, opts, m.normalizer, denorm, unk_surface, path)
    }

    /// Builds a tokenizer from a vocabulary (e.g. GGUF `tokenizer.ggml.tokens` / `scores` /
    /// `token_type` of a `llama` tokenizer). No character normalization; spaces are escaped.
    /// `opts.unk_id`, if set, must be the [`PieceType::Unknown`] piece; unset, it is found.
    pub fn from_pieces(pieces: Vec<SpmPiece>, opts: SpmOptions) -> Result<Self> {
        let norm = NormSpec {
            add_dummy_prefix: opts.add_dummy_prefix,
            remove_extra_whitespaces: opts.remove_extra_whitespaces,
            escape_whitespaces: true,
            charsmap: None,
        };
        let path = Path::new("(SentencePiece vocabulary)");
        Self::build(pieces, opts, norm, None, DEFAULT_UNK_SURFACE.into(), path)
    }

    fn build(
        pieces: Vec<SpmPiece>,
        mut opts: SpmOptions,
        norm: NormSpec,
        denorm: Option<NormSpec>,
        unk_surface: String,
        path: &Path,
    ) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: PathBuf::from(path),
            message,
        };
        if u32::try_from(pieces.len()).is_err() {
            return Err(err(format!("{} pieces is too many", pieces.len())));
        }
        let mut normal = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined: HashMap<char, Vec<u32>> = HashMap::new();
        let mut byte_ids = vec![u32::MAX; 256];
        let mut unk = None;
        let mut has_unused = false;
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            if p.piece.is_empty() || p.piece.contains('\0') {
                return Err(err(format!("piece {id} is empty or contains NUL")));
            }
            let map = match p.kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => &mut normal,
                _ => &mut reserved,
            };
            if map.insert(p.piece.clone(), id).is_some() {
                return Err(err(format!("piece {:?} is defined twice", p.piece)));
            }
            match p.kind {
                PieceType::Unknown if unk.is_some() => {
                    return Err(err("more than one UNKNOWN piece".into()))
                }
                PieceType::Unknown => unk = Some(id),
                PieceType::Unused => has_unused = true,
                PieceType::UserDefined => {
                    let first = p.piece.chars().next().unwrap_or('\0');
                    user_defined.entry(first).or_default().push(id);
                }
                PieceType::Byte => {
                    if !opts.byte_fallback {
                        return Err(err(format!(
                            "byte piece {:?} found although byte_fallback is off",
                            p.piece
                        )));
                    }
                    let b = byte_piece_value(&p.piece)
                        .ok_or_else(|| err(format!("invalid byte piece {:?}", p.piece)))?;
                    byte_ids[usize::from(b)] = id;
                }
                _ => {}
            }
        }
        let unk = unk.ok_or_else(|| err("the vocabulary has no UNKNOWN piece".into()))?;
        if opts.unk_id.is_some_and(|u| u != unk) {
            return Err(err(format!(
                "unk_id {:?} is not the UNKNOWN piece ({unk})",
                opts.unk_id
            )));
        }
        opts.unk_id = Some(unk);
        if opts.byte_fallback && byte_ids.contains(&u32::MAX) {
            return Err(err(
                "byte_fallback is on but not all 256 byte pieces <0x00>..<0xFF> exist".into(),
            ));
        }
        for (name, id) in [("bos_id", opts.bos_id), ("eos_id", opts.eos_id)] {
            if id.is_some_and(|id| id as usize >= pieces.len()) {
                return Err(err(format!("{name} {id:?} is outside the vocabulary")));
            }
        }
        for ids in user_defined.values_mut() {
            ids.sort_by_key(|&id| Reverse(pieces[id as usize].piece.len()));
        }
        Ok(Self {
            pieces,
            opts,
            normal,
            reserved,
            user_defined,
            has_unused,
            unk,
            byte_ids,
            norm,
            denorm,
            unk_surface,
        })
    }

    /// Encodes text to ids (no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.normalize(text);
        let mut out = Vec::with_capacity(normalized.len() / 3 + 1);
        self.bpe(&normalized, &mut out);
        out
    }

    /// The text as the model normalizes it before BPE (spaces as `▁`).
    pub fn normalize(&self, text: &str) -> String {
        normalize(&self.norm, text, |s| self.match_user_defined(s))
    }

    /// Decodes ids to text. Control pieces (`<s>`, `</s>`) give nothing when `skip_special`
    /// (as in sentencepiece), their piece text otherwise; the unknown piece always gives the
    /// model's `unk_surface`; ids outside the vocabulary are skipped. As in sentencepiece, a
    /// `▁` that was in the encoded text comes back as a space.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut text = String::new();
        let mut bytes = Vec::new();
        let strip_first = self.opts.add_dummy_prefix || self.opts.remove_extra_whitespaces;
        let (mut is_bos_ws, mut bos_ws_seen) = (true, false);
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else {
                continue;
            };
            if p.kind == PieceType::Byte {
                bytes.extend(byte_piece_value(&p.piece));
                continue;
            }
            push_bytes_lossy(&bytes, &mut text);
            bytes.clear();
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match p.kind {
                PieceType::Control if skip_special => {}
                PieceType::Control => text.push_str(&p.piece),
                PieceType::Unknown => text.push_str(&self.unk_surface),
                _ => {
                    let mut piece = p.piece.as_str();
                    if is_bos_ws && strip_first {
                        if let Some(rest) = piece.strip_prefix(SPACE) {
                            piece = rest;
                            bos_ws_seen = !self.opts.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&piece.replace(SPACE, " "));
                }
            }
        }
        push_bytes_lossy(&bytes, &mut text);
        match &self.denorm {
            Some(d) => normalize(d, &text, |_| None),
            None => text,
        }
    }

    /// The id of a piece (any type), if in the vocabulary.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.normal.get(piece))
            .copied()
    }

    /// The piece of an id.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The type of an id's piece.
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    /// The vocabulary, indexed by id.
    pub fn pieces(&self) -> &[SpmPiece] {
        &self.pieces
    }

    /// The model's options.
    pub fn options(&self) -> &SpmOptions {
        &self.opts
    }

    /// Number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Length of the longest user-defined symbol at the start of `s`.
    fn match_user_defined(&self, s: &str) -> Option<usize> {
        let ids = self.user_defined.get(&s.chars().next()?)?;
        ids.iter()
            .map(|&id| self.pieces[id as usize].piece.as_str())
            .find(|p| s.starts_with(p))
            .map(str::len)
    }

    /// sentencepiece's `PieceToId`: reserved pieces first, then the others, else unknown.
    fn lookup(&self, piece: &str) -> u32 {
        self.token_to_id(piece).unwrap_or(self.unk)
    }

    /// `bpe::Model::SampleEncode` without dropout, then the unknown / byte fallback handling
    /// of `SentencePieceProcessor::PopulateSentencePieceText`.
    fn bpe(&self, text: &str, out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        struct Sym {
            start: usize,
            len: usize,
            prev: usize,
            next: usize,
            freeze: bool,
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let (len, freeze) = match self.match_user_defined(rest) {
                Some(n) => (n, true),
                None => (rest.chars().next().map_or(1, char::len_utf8), false),
            };
            let i = syms.len();
            syms.push(Sym {
                start: pos,
                len,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if pos + len < text.len() { i + 1 } else { NONE },
                freeze,
            });
            pos += len;
        }
        let mut agenda = BinaryHeap::new();
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();
        let mut add_pair = |syms: &[Sym], agenda: &mut BinaryHeap<Pair>, l: usize, r: usize| {
            if l == NONE || r == NONE || syms[l].freeze || syms[r].freeze {
                return;
            }
            let (a, b) = (&syms[l], &syms[r]);
            let piece = &text[a.start..a.start + a.len + b.len];
            let Some(&id) = self.normal.get(piece) else {
                return;
            };
            let p = &self.pieces[id as usize];
            agenda.push((score_key(p.score), Reverse(l), r, piece.len()));
            if p.kind == PieceType::Unused {
                let left = &text[a.start..a.start + a.len];
                rev_merge.insert(piece, (left, &text[b.start..b.start + b.len]));
            }
        };
        for i in 1..syms.len() {
            add_pair(&syms, &mut agenda, i - 1, i);
        }
        while let Some((_, Reverse(l), r, size)) = agenda.pop() {
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != size {
                continue; // stale
            }
            syms[l].len += syms[r].len;
            syms[l].next = syms[r].next;
            if syms[r].next != NONE {
                let n = syms[r].next;
                syms[n].prev = l;
            }
            syms[r].len = 0;
            add_pair(&syms, &mut agenda, syms[l].prev, l);
            add_pair(&syms, &mut agenda, l, syms[l].next);
        }

        let mut prev_unk = false;
        let mut emit = |piece: &str, id: u32| {
            let is_unk = id == self.unk;
            if is_unk && self.opts.byte_fallback {
                out.extend(piece.bytes().map(|b| self.byte_ids[usize::from(b)]));
            } else if !(is_unk && prev_unk) {
                out.push(id);
            }
            prev_unk = is_unk;
        };
        let mut stack = Vec::new();
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            stack.push(&text[syms[i].start..syms[i].start + syms[i].len]);
            while let Some(w) = stack.pop() {
                let id = self.lookup(w);
                if self.has_unused && self.pieces[id as usize].kind == PieceType::Unused {
                    if let Some(&(a, b)) = rev_merge.get(w) {
                        stack.push(b);
                        stack.push(a);
                        continue;
                    }
                }
                emit(w, id);
            }
            i = syms[i].next;
        }
    }
}

/// A candidate merge (score key, leftmost first, right, merged size): the largest pops first.
type Pair = (u32, Reverse<usize>, usize, usize);

/// A score as an order-preserving integer: -0.0 equals 0.0 (as with C++ `<`), NaN lowest.
fn score_key(s: f32) -> u32 {
    let b = if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s + 0.0
    }
    .to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// `<0xXX>` (upper-case hex, as sentencepiece writes them) → the byte.
fn byte_piece_value(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    let ok = hex.len() == 2 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'));
    ok.then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// Appends bytes as UTF-8, each byte that does not start a valid character becoming U+FFFD
/// (sentencepiece's `DecodeUTF8`, which differs from `String::from_utf8_lossy`).
fn push_bytes_lossy(bytes: &[u8], out: &mut String) {
    let mut i = 0;
    while i < bytes.len() {
        let n = match bytes[i] {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 0,
        };
        match bytes.get(i..i + n).map(std::str::from_utf8) {
            Some(Ok(s)) if n > 0 => {
                out.push_str(s);
                i += n;
            }
            _ => {
                out.push('\u{FFFD}');
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Normalization

/// A normalizer (or denormalizer) spec.
#[derive(Debug, Clone)]
struct NormSpec {
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    charsmap: Option<CharsMap>,
}

impl NormSpec {
    /// `Normalizer::NormalizePrefix`: (replacement, bytes consumed) for the start of `s`.
    fn prefix<'a>(&'a self, s: &'a str, ud: &impl Fn(&str) -> Option<usize>) -> (&'a str, usize) {
        if let Some(n) = ud(s) {
            return (&s[..n], n);
        }
        if let Some(hit) = self.charsmap.as_ref().and_then(|c| c.longest_prefix(s)) {
            return hit;
        }
        let n = s.chars().next().map_or(0, char::len_utf8);
        (&s[..n], n)
    }
}

/// `Normalizer::Normalize` (the dummy prefix, never a suffix).
fn normalize(spec: &NormSpec, input: &str, ud: impl Fn(&str) -> Option<usize>) -> String {
    let mut input = input;
    if spec.remove_extra_whitespaces {
        while !input.is_empty() {
            let (s, n) = spec.prefix(input, &ud);
            if s != " " {
                break;
            }
            input = &input[n..];
        }
    }
    let mut out = String::with_capacity(input.len() * 3 / 2 + 4);
    if input.is_empty() {
        return out;
    }
    let space = if spec.escape_whitespaces { SPACE } else { " " };
    if spec.add_dummy_prefix {
        out.push_str(space);
    }
    let mut is_prev_space = spec.remove_extra_whitespaces;
    while !input.is_empty() {
        let (mut s, n) = spec.prefix(input, &ud);
        if is_prev_space {
            s = s.trim_start_matches(' ');
        }
        if !s.is_empty() {
            for (j, part) in s.split(' ').enumerate() {
                if j > 0 {
                    out.push_str(space);
                }
                out.push_str(part);
            }
            is_prev_space = s.ends_with(' ');
        }
        input = &input[n..];
        if !spec.remove_extra_whitespaces {
            is_prev_space = false;
        }
    }
    if spec.remove_extra_whitespaces {
        while out.ends_with(space) {
            out.truncate(out.len() - space.len());
        }
    }
    out
}

/// A `precompiled_charsmap`: `<u32 trie size><Darts double array><NUL-separated outputs>`.
#[derive(Debug, Clone)]
struct CharsMap {
    units: Vec<u32>,
    outputs: String,
}

impl CharsMap {
    fn parse(blob: &[u8]) -> std::result::Result<Self, String> {
        let head: [u8; 4] = blob
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or("too short")?;
        let size = u32::from_le_bytes(head) as usize;
        let trie = blob
            .get(4..4usize.saturating_add(size))
            .ok_or("trie size exceeds the blob")?;
        let units = trie
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let outputs = std::str::from_utf8(&blob[4 + size..])
            .map_err(|e| format!("normalized strings are not UTF-8: {e}"))?
            .to_string();
        Ok(Self { units, outputs })
    }

    /// Darts-clone `commonPrefixSearch` (at most 32 results, as sentencepiece), longest match:
    /// (replacement, bytes consumed).
    fn longest_prefix<'a>(&'a self, s: &str) -> Option<(&'a str, usize)> {
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut node = offset(*self.units.first()?);
        let (mut best, mut found) = (None, 0);
        for (i, &c) in s.as_bytes().iter().enumerate() {
            node ^= usize::from(c);
            let Some(&unit) = self.units.get(node) else {
                break;
            };
            if unit & ((1 << 31) | 0xFF) != u32::from(c) {
                break;
            }
            node ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                if found < 32 {
                    let value = self.units.get(node).map(|v| (v & 0x7FFF_FFFF) as usize);
                    best = value.map(|v| (v, i + 1));
                }
                found += 1;
            }
        }
        let (value, len) = best?;
        let rest = self.outputs.get(value..)?;
        let out = rest.split('\0').next().unwrap_or("");
        s.is_char_boundary(len).then_some((out, len))
    }
}

impl Default for NormSpec {
    fn default() -> Self {
        Self {
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            charsmap: None,
        }
    }
}
