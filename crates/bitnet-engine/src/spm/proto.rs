//! The protobuf side of [`super`]: just enough of the wire format to read sentencepiece's
//! `ModelProto` (pieces, `TrainerSpec`, `NormalizerSpec`), every length checked against the
//! buffer.

use super::{CharsMap, NormSpec, PieceType, SpmPiece};

/// The `ModelProto` fields used.
#[derive(Default)]
pub(super) struct RawModel {
    pub(super) pieces: Vec<SpmPiece>,
    pub(super) trainer: RawTrainer,
    pub(super) normalizer: NormSpec,
    pub(super) denormalizer: Option<NormSpec>,
}

/// The `TrainerSpec` fields used; `None` = the proto default.
#[derive(Default)]
pub(super) struct RawTrainer {
    pub(super) model_type: Option<u64>,
    pub(super) byte_fallback: bool,
    pub(super) split_digits: bool,
    pub(super) split_by_whitespace: Option<bool>,
    pub(super) treat_whitespace_as_suffix: bool,
    pub(super) bos_piece: Option<String>,
    pub(super) eos_piece: Option<String>,
    pub(super) unk_surface: Option<String>,
}

pub(super) type PResult<T> = std::result::Result<T, String>;

/// A protobuf field value.
enum Val<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Val<'a> {
    fn varint(&self) -> PResult<u64> {
        match self {
            Val::Varint(v) => Ok(*v),
            _ => Err("expected a varint".into()),
        }
    }
    fn bool(&self) -> PResult<bool> {
        self.varint().map(|v| v != 0)
    }
    fn bytes(&self) -> PResult<&'a [u8]> {
        match self {
            Val::Bytes(b) => Ok(b),
            _ => Err("expected a length-delimited value".into()),
        }
    }
    fn string(&self) -> PResult<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".into())
    }
}

/// Calls `f(field number, value)` for each field of a message, checking every bound.
fn parse_message<'a>(
    buf: &'a [u8],
    what: &str,
    mut f: impl FnMut(u64, Val<'a>) -> PResult<()>,
) -> PResult<()> {
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: u64| -> PResult<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| pos.checked_add(n))
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| format!("{what}: truncated at byte {pos}"))?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    };
    let varint = |pos: &mut usize| -> PResult<u64> {
        let mut v = 0u64;
        for k in 0..10 {
            let b = *buf
                .get(*pos)
                .ok_or_else(|| format!("{what}: truncated varint at byte {pos}"))?;
            *pos += 1;
            v |= u64::from(b & 0x7F) << (7 * k);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("{what}: varint longer than 10 bytes at byte {pos}"))
    };
    while pos < buf.len() {
        let at = pos;
        let key = varint(&mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        if num == 0 {
            return Err(format!("{what}: field number 0 at byte {at}"));
        }
        let val = match wire {
            0 => Val::Varint(varint(&mut pos)?),
            1 => take(&mut pos, 8).map(|_| Val::Fixed64)?,
            2 => {
                let n = varint(&mut pos)?;
                Val::Bytes(take(&mut pos, n)?)
            }
            5 => {
                let b = take(&mut pos, 4)?;
                Val::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("{what}: unsupported wire type {w} at byte {at}")),
        };
        f(num, val).map_err(|e| format!("{what} field {num}: {e}"))?;
    }
    Ok(())
}

/// Parses a serialized `ModelProto`; the error names the message and field.
pub(super) fn parse_model(buf: &[u8]) -> PResult<RawModel> {
    let mut m = RawModel::default();
    parse_message(buf, "ModelProto", |num, v| {
        match num {
            1 => m.pieces.push(parse_piece(v.bytes()?)?),
            2 => parse_trainer(v.bytes()?, &mut m.trainer)?,
            3 => parse_normalizer(v.bytes()?, &mut m.normalizer)?,
            5 => parse_normalizer(
                v.bytes()?,
                m.denormalizer.get_or_insert_with(Default::default),
            )?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

fn parse_piece(buf: &[u8]) -> PResult<SpmPiece> {
    let mut p = SpmPiece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    parse_message(buf, "SentencePiece", |num, v| {
        match (num, v) {
            (1, v) => p.piece = v.string()?,
            (2, Val::Fixed32(b)) => p.score = f32::from_bits(b),
            (2, _) => return Err("expected a float".into()),
            (3, v) => {
                let n = v.varint()?;
                p.kind = PieceType::from_number(n).ok_or(format!("invalid piece type {n}"))?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(p)
}

fn parse_trainer(buf: &[u8], t: &mut RawTrainer) -> PResult<()> {
    parse_message(buf, "TrainerSpec", |num, v| {
        match num {
            3 => t.model_type = Some(v.varint()?),
            22 => t.split_by_whitespace = Some(v.bool()?),
            24 => t.treat_whitespace_as_suffix = v.bool()?,
            25 => t.split_digits = v.bool()?,
            35 => t.byte_fallback = v.bool()?,
            44 => t.unk_surface = Some(v.string()?),
            46 => t.bos_piece = Some(v.string()?),
            47 => t.eos_piece = Some(v.string()?),
            _ => {}
        }
        Ok(())
    })
}

fn parse_normalizer(buf: &[u8], n: &mut NormSpec) -> PResult<()> {
    parse_message(buf, "NormalizerSpec", |num, v| {
        match num {
            2 => {
                let b = v.bytes()?;
                let map = CharsMap::parse(b).map_err(|e| format!("precompiled_charsmap: {e}"));
                n.charsmap = if b.is_empty() { None } else { Some(map?) };
            }
            3 => n.add_dummy_prefix = v.bool()?,
            4 => n.remove_extra_whitespaces = v.bool()?,
            5 => n.escape_whitespaces = v.bool()?,
            _ => {}
        }
        Ok(())
    })
}
