//! GGML tensor types and GGUF metadata values.

/// GGML tensor types this project reads and writes (one table: id, name, block, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit K-quant.
    Q4K,
    /// 6-bit K-quant.
    Q6K,
    /// bfloat16.
    BF16,
    /// Ternary, base-3 packed (llama.cpp).
    TQ1_0,
    /// Ternary, 2-bit (llama.cpp).
    TQ2_0,
    /// Ternary, 2-bit with one per-tensor f32 scale (microsoft/BitNet, id 36).
    I2S,
}

struct TypeInfo {
    t: GgmlType,
    id: u32,
    name: &'static str,
    block: usize,
    bytes: usize,
}

const TYPES: [TypeInfo; 9] = [
    TypeInfo {
        t: GgmlType::F32,
        id: 0,
        name: "F32",
        block: 1,
        bytes: 4,
    },
    TypeInfo {
        t: GgmlType::F16,
        id: 1,
        name: "F16",
        block: 1,
        bytes: 2,
    },
    TypeInfo {
        t: GgmlType::Q8_0,
        id: 8,
        name: "Q8_0",
        block: 32,
        bytes: 34,
    },
    TypeInfo {
        t: GgmlType::Q4K,
        id: 12,
        name: "Q4_K",
        block: 256,
        bytes: 144,
    },
    TypeInfo {
        t: GgmlType::Q6K,
        id: 14,
        name: "Q6_K",
        block: 256,
        bytes: 210,
    },
    TypeInfo {
        t: GgmlType::BF16,
        id: 30,
        name: "BF16",
        block: 1,
        bytes: 2,
    },
    TypeInfo {
        t: GgmlType::TQ1_0,
        id: 34,
        name: "TQ1_0",
        block: 256,
        bytes: 54,
    },
    TypeInfo {
        t: GgmlType::TQ2_0,
        id: 35,
        name: "TQ2_0",
        block: 256,
        bytes: 66,
    },
    // I2_S: 4 values per byte plus a 32-byte tail holding the f32 scale (see `nbytes`).
    TypeInfo {
        t: GgmlType::I2S,
        id: 36,
        name: "I2_S",
        block: 128,
        bytes: 32,
    },
];

impl GgmlType {
    fn info(self) -> &'static TypeInfo {
        TYPES
            .iter()
            .find(|i| i.t == self)
            .expect("every type is in the table")
    }
    /// From a GGUF type id.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|i| i.id == id).map(|i| i.t)
    }
    /// From a name such as `tq2_0` or `Q6_K` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|i| i.name.eq_ignore_ascii_case(name))
            .map(|i| i.t)
    }
    /// GGUF type id.
    pub fn id(self) -> u32 {
        self.info().id
    }
    /// GGML name.
    pub fn name(self) -> &'static str {
        self.info().name
    }
    /// Values per block; row lengths must be multiples of it.
    pub fn block_size(self) -> usize {
        self.info().block
    }
    /// Bytes of a tensor of `n` values, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn nbytes(self, n: u64) -> Option<usize> {
        let i = self.info();
        let n = usize::try_from(n).ok()?;
        if n % i.block != 0 {
            return None;
        }
        let body = (n / i.block).checked_mul(i.bytes)?;
        if self == GgmlType::I2S {
            body.checked_add(32)
        } else {
            Some(body)
        }
    }
    /// Every known type, as `NAME (id)`.
    pub fn known() -> String {
        TYPES
            .iter()
            .map(|i| format!("{} ({})", i.name, i.id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// GGUF metadata value type ids 0..12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MetaValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte)
    Bool = 7,
    /// u64 length + UTF-8 bytes
    String = 8,
    /// u32 element type + u64 count + elements
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl MetaValueType {
    /// From the id.
    pub fn from_id(id: u32) -> Option<Self> {
        use MetaValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
    /// Smallest encoded size of one value (for bounding counts by the bytes left).
    pub fn min_size(self) -> usize {
        use MetaValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    String(String),
    /// array of one element type
    Array(MetaValueType, Vec<MetaValue>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl MetaValue {
    /// The value's type id.
    pub fn value_type(&self) -> MetaValueType {
        use MetaValue::*;
        match self {
            U8(_) => MetaValueType::U8,
            I8(_) => MetaValueType::I8,
            U16(_) => MetaValueType::U16,
            I16(_) => MetaValueType::I16,
            U32(_) => MetaValueType::U32,
            I32(_) => MetaValueType::I32,
            F32(_) => MetaValueType::F32,
            Bool(_) => MetaValueType::Bool,
            String(_) => MetaValueType::String,
            Array(..) => MetaValueType::Array,
            U64(_) => MetaValueType::U64,
            I64(_) => MetaValueType::I64,
            F64(_) => MetaValueType::F64,
        }
    }
    /// Any integer type as u64 (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        use MetaValue::*;
        match *self {
            U8(v) => Some(v as u64),
            U16(v) => Some(v as u64),
            U32(v) => Some(v as u64),
            U64(v) => Some(v),
            I8(v) => u64::try_from(v).ok(),
            I16(v) => u64::try_from(v).ok(),
            I32(v) => u64::try_from(v).ok(),
            I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any float or integer type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// An array's elements.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, v) => Some(v),
            _ => None,
        }
    }
}
