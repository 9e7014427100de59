//! The allow-list of pickle globals: tensor-rebuild functions, `OrderedDict`, storage classes
//! and `torch.<dtype>` names. Anything else is never resolved.

use crate::raw::RawDtype;

/// Element type named by a storage class or a `torch.<dtype>` global.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum TorchDtype {
    Supported(RawDtype),
    Unsupported(&'static str),
}

/// Storage kind from a persistent id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum StorageKind {
    Typed(TorchDtype),
    Untyped,
}

/// An allow-listed global.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
    Dtype(TorchDtype),
}

/// Supported element types: `torch.<X>Storage` base name, `torch.<dtype>` names.
const DTYPES: [(RawDtype, &str, &str); 10] = [
    (RawDtype::F32, "Float", "float32 float"),
    (RawDtype::F16, "Half", "float16 half"),
    (RawDtype::BF16, "BFloat16", "bfloat16"),
    (RawDtype::F64, "Double", "float64 double"),
    (RawDtype::U8, "Byte", "uint8"),
    (RawDtype::I8, "Char", "int8"),
    (RawDtype::I16, "Short", "int16 short"),
    (RawDtype::I32, "Int", "int32 int"),
    (RawDtype::I64, "Long", "int64 long"),
    (RawDtype::Bool, "Bool", "bool"),
];
/// Storage classes and dtypes torch may emit that [`RawDtype`] cannot hold (reported per tensor).
const UNSUPPORTED_STORAGES: &str =
    "ComplexFloat ComplexDouble QInt8 QUInt8 QInt32 QUInt4x2 QUInt2x4";
const UNSUPPORTED_DTYPES: &str = "uint16 uint32 uint64 complex32 complex64 complex128 cfloat \
    cdouble float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu \
    float4_e2m1fn_x2 qint8 quint8 qint32 quint4x2";

/// `torch.<name>` as a storage class (`storage`) or as a dtype.
fn torch_dtype(name: &str, storage: bool) -> Option<TorchDtype> {
    let base = if storage {
        name.strip_suffix("Storage")?
    } else {
        name
    };
    let found = DTYPES.iter().find(|(_, s, d)| {
        if storage {
            *s == base
        } else {
            d.split(' ').any(|x| x == base)
        }
    });
    if let Some((d, ..)) = found {
        return Some(TorchDtype::Supported(*d));
    }
    let list = if storage {
        UNSUPPORTED_STORAGES
    } else {
        UNSUPPORTED_DTYPES
    };
    list.split_whitespace()
        .find(|x| *x == base)
        .map(TorchDtype::Unsupported)
}

pub(super) fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch" | "torch.storage", "UntypedStorage") => {
            Some(Global::Storage(StorageKind::Untyped))
        }
        ("torch", _) => torch_dtype(name, true)
            .map(|d| Global::Storage(StorageKind::Typed(d)))
            .or_else(|| torch_dtype(name, false).map(Global::Dtype)),
        _ => None,
    }
}
