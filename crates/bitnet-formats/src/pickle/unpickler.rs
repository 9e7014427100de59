//! The restricted unpickler: a small stack machine over `data.pkl` that builds an arena of
//! [`Obj`]s, resolving only allow-listed globals and never importing or executing anything.

use std::collections::HashMap;
use std::path::Path;

use super::globals::{resolve_global, Global, StorageKind, TorchDtype};
use super::{PickleError, MAX_DEPTH, MAX_NDIM, MAX_STRING_BYTES};

/// A storage referenced by a persistent id.
#[derive(Clone, Debug)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) kind: StorageKind,
    pub(super) numel: u64,
}

/// A tensor view over a storage, in elements of `dtype`.
#[derive(Clone, Debug)]
pub(super) struct TensorRef {
    pub(super) storage: StorageRef,
    pub(super) dtype: Option<TorchDtype>,
    pub(super) offset: u64,
    pub(super) shape: Vec<u64>,
    pub(super) stride: Vec<u64>,
}

pub(super) type Id = usize;

/// An object built by the unpickler; containers refer to other objects by arena index, so
/// memo lookups never copy and cycles cannot leak.
#[derive(Debug)]
pub(super) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

/// Opcodes this unpickler implements, and their names in the same order.
const OPCODES: &[u8] =
    b"\x80\x95}])(suaeqr\x94hjX\x8c\x8dCB\x8eJKM\x8a\x8bGN\x88\x89t\x85\x86\x87c\x93RbQ\x81.";
const OPCODE_NAMES: &str = "PROTO FRAME EMPTY_DICT EMPTY_LIST EMPTY_TUPLE MARK SETITEM SETITEMS \
    APPEND APPENDS BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET BINUNICODE SHORT_BINUNICODE \
    BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT NONE \
    NEWTRUE NEWFALSE TUPLE TUPLE1 TUPLE2 TUPLE3 GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID NEWOBJ STOP";

fn opcode_name(op: u8) -> &'static str {
    let i = OPCODES.iter().position(|&b| b == op);
    i.and_then(|i| OPCODE_NAMES.split_whitespace().nth(i))
        .unwrap_or("unsupported")
}

/// Bytes of little-endian argument that follow an opcode.
fn arg_len(op: u8) -> u64 {
    match op {
        0x80 | b'q' | b'h' | 0x8c | b'C' | b'K' | 0x8a => 1,
        b'M' => 2,
        b'r' | b'j' | b'X' | b'B' | b'J' | 0x8b => 4,
        0x95 | 0x8d | 0x8e | b'G' => 8,
        _ => 0,
    }
}

pub(super) struct Unpickler<'a> {
    pub(super) path: &'a Path,
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    op: u8,
    pub(super) objs: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Bytes the parser may still allocate (objects, stack, memo, tensor metadata).
    pub(super) budget: u64,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(path: &'a Path, data: &'a [u8], budget: u64) -> Self {
        Unpickler {
            path,
            data,
            pos: 0,
            op_start: 0,
            op: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            budget,
        }
    }

    /// Accounts for `bytes` of parser memory.
    fn charge(&mut self, bytes: usize) -> Result<(), PickleError> {
        match self.budget.checked_sub(bytes as u64) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(self.err("allocation budget exceeded (8 x file size + 64 MiB)")),
        }
    }

    fn err(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Pickle {
            path: self.path.to_path_buf(),
            offset: self.op_start,
            opcode: if self.op_start >= self.data.len() {
                "(end of data, no STOP)".into()
            } else {
                format!("{} ({:#04x})", opcode_name(self.op), self.op)
            },
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.data.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(self.err(format!("truncated: needs {n} more bytes"))),
        }
    }

    fn alloc(&mut self, obj: Obj) -> Result<Id, PickleError> {
        // Each opcode creates at most one object, so this only guards future changes.
        if self.objs.len() > self.data.len() + 16 {
            return Err(self.err("too many objects for the pickle size"));
        }
        let heap = match &obj {
            Obj::Str(s) => s.len(),
            Obj::Tuple(v) | Obj::List(v) => 8 * v.len(),
            Obj::Tensor(t) => 128 + 16 * t.shape.len() + t.storage.key.len(),
            Obj::Storage(st) => 64 + st.key.len(),
            _ => 0,
        };
        self.charge(std::mem::size_of::<Obj>() + heap)?;
        self.objs.push(obj);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, obj: Obj) -> Result<(), PickleError> {
        let id = self.alloc(obj)?;
        self.push_id(id)
    }

    fn push_id(&mut self, id: Id) -> Result<(), PickleError> {
        if self.stack.len() > self.data.len() {
            return Err(self.err("stack too deep"));
        }
        self.charge(8)?;
        self.stack.push(id);
        Ok(())
    }

    /// Pops `n` items (oldest first), never reaching below the innermost MARK.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn top(&self) -> Result<Id, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn string(&mut self, len: u64) -> Result<String, PickleError> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(self.err(format!("string of {len} bytes exceeds the 1 MiB limit")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn bytes(&mut self, len: u64) -> Result<(), PickleError> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(self.err(format!(
                "byte string of {len} bytes exceeds the 1 MiB limit"
            )));
        }
        self.take(len)?;
        self.push(Obj::Bytes)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().take(256).position(|&b| b == b'\n');
        let n = n.ok_or_else(|| self.err("global name line missing or longer than 256 bytes"))?;
        let line =
            std::str::from_utf8(&rest[..n]).map_err(|_| self.err("global name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(line)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match resolve_global(module, name) {
            Some(g) => self.push(Obj::Global(g)),
            None => Err(PickleError::ForbiddenGlobal {
                path: self.path.to_path_buf(),
                offset: self.op_start,
                global: format!("{module}.{name}"),
            }),
        }
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() > self.data.len() {
            return Err(self.err("memo too large"));
        }
        self.charge(32)?;
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| self.err(format!("memo key {idx} missing")))?;
        self.push_id(id)
    }

    fn int(&self, id: Id, what: &str) -> Result<i64, PickleError> {
        match self.objs[id] {
            Obj::Int(v) => Ok(v),
            Obj::Bool(b) => Ok(b as i64),
            _ => Err(self.err(format!("{what} must be an int"))),
        }
    }

    fn uint(&self, id: Id, what: &str) -> Result<u64, PickleError> {
        let v = self.int(id, what)?;
        u64::try_from(v).map_err(|_| self.err(format!("{what} is negative ({v})")))
    }

    fn tuple(&self, id: Id, what: &str) -> Result<&[Id], PickleError> {
        match &self.objs[id] {
            Obj::Tuple(items) => Ok(items),
            _ => Err(self.err(format!("{what} must be a tuple"))),
        }
    }

    fn uints(&self, id: Id, what: &str) -> Result<Vec<u64>, PickleError> {
        let items = self.tuple(id, what)?;
        if items.len() > MAX_NDIM {
            return Err(self.err(format!("{what} has {} dims (max {MAX_NDIM})", items.len())));
        }
        items.iter().map(|&i| self.uint(i, what)).collect()
    }

    pub(super) fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            self.op_start = self.pos;
            self.op = 0;
            let op = self.take(1)?[0];
            self.op = op;
            let mut le = [0u8; 8];
            let n = arg_len(op);
            le[..n as usize].copy_from_slice(self.take(n)?);
            let arg = u64::from_le_bytes(le);
            match op {
                0x80 if arg > 5 => {
                    return Err(self.err(format!("pickle protocol {arg} not supported")))
                }
                0x80 => {}
                0x95 if arg > (self.data.len() - self.pos) as u64 => {
                    return Err(self.err("frame longer than the pickle"))
                }
                0x95 => {}
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                b']' => self.push(Obj::List(Vec::new()))?,
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b'(' if self.marks.len() >= MAX_DEPTH => {
                    return Err(self.err("MARKs nested too deeply"))
                }
                b'(' => self.marks.push(self.stack.len()),
                b's' | b'u' => {
                    let items = if op == b's' {
                        self.pop_n(2)?
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.err("odd number of items for SETITEMS"));
                    }
                    self.charge(8 * items.len())?;
                    let target = self.top()?;
                    match &mut self.objs[target] {
                        Obj::Dict(d) => d.extend(items.chunks_exact(2).map(|c| (c[0], c[1]))),
                        _ => return Err(self.err("SETITEM target is not a dict")),
                    }
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        self.pop_n(1)?
                    } else {
                        self.pop_mark()?
                    };
                    self.charge(8 * items.len())?;
                    let target = self.top()?;
                    match &mut self.objs[target] {
                        Obj::List(l) => l.extend(items),
                        _ => return Err(self.err("APPEND target is not a list")),
                    }
                }
                b'q' | b'r' => self.memo_put(arg as u32)?,
                0x94 => self.memo_put(u32::try_from(self.memo.len()).unwrap_or(u32::MAX))?,
                b'h' | b'j' => self.memo_get(arg as u32)?,
                b'X' | 0x8c | 0x8d => {
                    let s = self.string(arg)?;
                    self.push(Obj::Str(s))?;
                }
                b'C' | b'B' | 0x8e => self.bytes(arg)?,
                b'K' | b'M' => self.push(Obj::Int(arg as i64))?,
                b'J' => self.push(Obj::Int(i64::from(arg as u32 as i32)))?,
                0x8a | 0x8b if arg > 8 => {
                    return Err(self.err(format!("{arg}-byte integer does not fit in 64 bits")))
                }
                0x8a | 0x8b => {
                    let b = self.take(arg)?;
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut buf = [fill; 8];
                    buf[..b.len()].copy_from_slice(b);
                    self.push(Obj::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => self.push(Obj::Float)?,
                b'N' => self.push(Obj::None)?,
                0x88 | 0x89 => self.push(Obj::Bool(op == 0x88))?,
                b't' | 0x85..=0x87 => {
                    let items = if op == b't' {
                        self.pop_mark()?
                    } else {
                        self.pop_n(usize::from(op - 0x84))?
                    };
                    self.push(Obj::Tuple(items))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let items = self.pop_n(2)?;
                    match (&self.objs[items[0]], &self.objs[items[1]]) {
                        (Obj::Str(m), Obj::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let items = self.pop_n(2)?;
                    let obj = self.call(items[0], items[1], op == 0x81)?;
                    self.push_id(obj)?;
                }
                b'b' => {
                    self.pop_n(1)?;
                    // OrderedDict state (`_metadata`) is attribute data, not items: ignore it.
                    if !matches!(self.objs[self.top()?], Obj::Dict(_) | Obj::Tensor(_)) {
                        return Err(self.err("BUILD is only supported on dicts and tensors"));
                    }
                }
                b'Q' => {
                    let pid = self.pop_n(1)?[0];
                    let storage = self.persistent_load(pid)?;
                    self.push(Obj::Storage(Box::new(storage)))?;
                }
                b'.' => return self.top(),
                _ => return Err(self.err("opcode not supported by the restricted unpickler")),
            }
        }
    }

    fn persistent_load(&self, pid: Id) -> Result<StorageRef, PickleError> {
        let items = self.tuple(pid, "persistent id")?;
        let [tag, class, key, _location, numel] = items else {
            return Err(self.err("persistent id must be ('storage', class, key, location, numel)"));
        };
        if !matches!(&self.objs[*tag], Obj::Str(s) if s == "storage") {
            return Err(self.err("persistent id tag is not 'storage'"));
        }
        let Obj::Global(Global::Storage(kind)) = self.objs[*class] else {
            return Err(self.err("persistent id does not name a storage class"));
        };
        let key = match &self.objs[*key] {
            Obj::Str(k)
                if (1..=64).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                k.clone()
            }
            _ => return Err(self.err("storage key must be a short alphanumeric string")),
        };
        let numel = self.uint(*numel, "storage numel")?;
        Ok(StorageRef { key, kind, numel })
    }

    fn call(&mut self, callable: Id, args: Id, newobj: bool) -> Result<Id, PickleError> {
        let Obj::Global(g) = self.objs[callable] else {
            return Err(self.err("callable is not an allowed global"));
        };
        let a = self.tuple(args, "arguments")?;
        if a.len() > 8 {
            return Err(self.err(format!("{g:?} called with {} arguments", a.len())));
        }
        let a = a.to_vec();
        if newobj && g != Global::OrderedDict {
            return Err(self.err("NEWOBJ is only supported for OrderedDict"));
        }
        match g {
            // torch pickles OrderedDict as `OrderedDict()` followed by SETITEMS.
            Global::OrderedDict if a.is_empty() => self.alloc(Obj::Dict(Vec::new())),
            Global::OrderedDict => Err(self.err("OrderedDict() with arguments is not supported")),
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let ok = match g {
                    Global::RebuildTensor => a.len() == 4,
                    Global::RebuildTensorV2 => a.len() == 6 || a.len() == 7,
                    _ => a.len() == 7 || a.len() == 8,
                };
                if !ok {
                    return Err(self.err(format!("{g:?} got {} arguments", a.len())));
                }
                let Obj::Storage(storage) = &self.objs[a[0]] else {
                    return Err(self.err("tensor storage argument is not a storage"));
                };
                let storage = StorageRef::clone(storage);
                let offset = self.uint(a[1], "storage offset")?;
                let shape = self.uints(a[2], "size")?;
                let stride = self.uints(a[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err("size and stride lengths differ"));
                }
                let dtype = match (g, storage.kind) {
                    (Global::RebuildTensorV3, _) => match self.objs[a[6]] {
                        Obj::Global(Global::Dtype(d)) => Some(d),
                        _ => {
                            return Err(
                                self.err("_rebuild_tensor_v3 dtype argument is not a torch dtype")
                            )
                        }
                    },
                    (_, StorageKind::Typed(d)) => Some(d),
                    (_, StorageKind::Untyped) => None,
                };
                self.alloc(Obj::Tensor(Box::new(TensorRef {
                    storage,
                    dtype,
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                if a.len() != n || !matches!(self.objs[a[0]], Obj::Tensor(_)) {
                    return Err(self.err(format!(
                        "{g:?} expects {n} arguments starting with a tensor"
                    )));
                }
                Ok(a[0])
            }
            Global::Storage(_) | Global::Dtype(_) => {
                Err(self.err(format!("{g:?} is not callable here")))
            }
        }
    }
}
