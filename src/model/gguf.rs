//! Reader for GGUF model files (versions 2 and 3): metadata, tensor directory and
//! tensor data, dequantized to f32 on request.

use super::quant::{self, GgmlType};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (floats and integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Directory entry of one tensor.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Byte offset from the start of the file.
    offset: usize,
    nbytes: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Shape in PyTorch order (outermost first), e.g. `[out, in]` for a weight matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An opened GGUF file (memory-mapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    map: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .with_context(|| {
                format!(
                    "file is truncated: needed {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let n = usize::try_from(n).ok().filter(|&n| n <= self.buf.len());
        n.with_context(|| format!("corrupt {what} length at offset {}", self.pos - 8))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let at = self.pos;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| anyhow::anyhow!("string at offset {at} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    bail!("metadata arrays nested too deeply");
                }
                let item_ty = self.u32()?;
                let n = self.len("array")?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => bail!(
                "unknown metadata value type {other} at offset {}",
                self.pos - 4
            ),
        })
    }
}

impl GgufFile {
    /// Open and parse the header, metadata and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the file is opened read-only and the map lives as long as GgufFile;
        // concurrent modification of a model file while it is loaded is not supported.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Self::parse(path, map).with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> Result<GgufFile> {
        let mut c = Cursor { buf: &map, pos: 0 };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            bail!("bad magic (expected \"GGUF\")");
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (supported: 2, 3)");
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c
                .value(ty, 0)
                .with_context(|| format!("metadata key {key:?}"))?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                bail!("tensor {name:?} has {n_dims} dimensions");
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.len("dimension")?);
            }
            let ty =
                GgmlType::from_id(c.u32()?).map_err(|e| anyhow::anyhow!("tensor {name:?}: {e}"))?;
            let offset = c.len("tensor offset")?;
            infos.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => {
                v.as_u64()
                    .filter(|&a| a > 0 && a.is_power_of_two())
                    .context("general.alignment is not a power of two")? as usize
            }
            None => 32,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty, rel) in infos {
            let numel = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .with_context(|| format!("tensor {name:?}: size overflows"))?;
            let nbytes = ty
                .bytes_for(numel)
                .map_err(|e| anyhow::anyhow!("tensor {name:?}: {e}"))?;
            let offset = data_start
                .checked_add(rel)
                .filter(|o| o.checked_add(nbytes).is_some_and(|e| e <= map.len()))
                .with_context(|| {
                    format!("tensor {name:?}: data lies outside the file (truncated?)")
                })?;
            let info = TensorInfo {
                name: name.clone(),
                dims,
                ty,
                offset,
                nbytes,
            };
            if tensors.insert(name.clone(), info).is_some() {
                bail!("tensor {name:?} appears twice");
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// A required integer key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key).with_context(|| {
            format!(
                "{}: metadata key {key:?} is missing or not an integer",
                self.path.display()
            )
        })
    }

    /// A string array key (e.g. the vocabulary).
    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("{}: metadata key {key:?} is missing", self.path.display()))?;
        arr.iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{}: {key:?} is not a string array", self.path.display()))
    }

    /// Dequantize tensor `name` to f32, checking its shape (PyTorch order).
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: tensor {name:?} is missing", self.path.display()))?;
        if info.shape() != shape {
            bail!(
                "{}: tensor {name:?} has shape {:?}, expected {shape:?}",
                self.path.display(),
                info.shape()
            );
        }
        let bytes = &self.map[info.offset..info.offset + info.nbytes];
        let mut out = vec![0f32; info.numel()];
        quant::dequantize(info.ty, bytes, &mut out)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name:?}: {e}", self.path.display()))?;
        Ok(out)
    }
}
