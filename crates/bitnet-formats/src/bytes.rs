//! A file's bytes: memory-mapped, or owned (in-memory images, converted tensors).

use memmap2::Mmap;

/// Read-only bytes of a model file.
pub enum Bytes {
    /// A read-only memory map.
    Mmap(Mmap),
    /// Bytes held in memory.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
