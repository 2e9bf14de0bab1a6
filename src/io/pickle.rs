//! A restricted unpickler for PyTorch checkpoints: it builds data (dicts, lists, tuples, numbers,
//! strings, tensor references) and never runs anything. The only callables it accepts are
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and the typed
//! storage classes, interpreted here as data constructors; any other global is refused by name.

use std::collections::HashMap;
use std::fmt;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A tensor as the pickle describes it; its data lives in the archive under `data/{key}`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub dtype: StorageDtype,
    pub key: String,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// An unpickled value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Insertion-ordered (covers `OrderedDict`).
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
}

impl Value {
    /// `self[key]` for a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(x) => Some(x),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// String-keyed entries of a dict.
    pub fn entries(&self) -> Vec<(&str, &Value)> {
        match self {
            Value::Dict(items) => items
                .iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k, v)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PickleError(pub String);

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageDtype),
}

#[derive(Clone, Debug)]
enum Node {
    Value(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Global(Global),
    Storage(StorageDtype, String),
}

enum Item {
    Mark,
    Obj(usize),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Item>,
    memo: HashMap<u64, usize>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(msg.into()))
}

const MAX_NODES: usize = 50_000_000;

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.pos + n > self.data.len() {
            return err(format!(
                "pickle ends early (wanted {n} bytes at offset {})",
                self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PickleError("unterminated GLOBAL".into()))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| PickleError("invalid UTF-8 in a pickled string".into()))
    }
    fn push_node(&mut self, n: Node) -> Result<(), PickleError> {
        if self.nodes.len() >= MAX_NODES {
            return err("pickle too large");
        }
        self.nodes.push(n);
        self.stack.push(Item::Obj(self.nodes.len() - 1));
        Ok(())
    }
    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.push_node(Node::Value(v))
    }
    fn pop(&mut self) -> Result<usize, PickleError> {
        match self.stack.pop() {
            Some(Item::Obj(i)) => Ok(i),
            Some(Item::Mark) => err("unexpected MARK on the pickle stack"),
            None => err("pickle stack underflow"),
        }
    }
    fn top(&self) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Item::Obj(i)) => Ok(*i),
            _ => err("pickle stack underflow"),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Obj(i)) => items.push(i),
                Some(Item::Mark) => break,
                None => return err("MARK missing on the pickle stack"),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn global(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", cls) if StorageDtype::from_class(cls).is_some() => Ok(Global::Storage(StorageDtype::from_class(cls).unwrap())),
            _ => err(format!(
                "refusing pickle global `{module}.{name}`: only tensors, dicts, lists and numbers are loaded, nothing is executed"
            )),
        }
    }
    fn int_of(&self, i: usize) -> Result<i64, PickleError> {
        match &self.nodes[i] {
            Node::Value(Value::Int(x)) => Ok(*x),
            Node::Value(Value::Bool(b)) => Ok(i64::from(*b)),
            _ => err("expected an integer in a tensor description"),
        }
    }
    fn ints_of(&self, i: usize) -> Result<Vec<usize>, PickleError> {
        match &self.nodes[i] {
            Node::Tuple(items) | Node::List(items) => items
                .iter()
                .map(|&j| {
                    usize::try_from(self.int_of(j)?)
                        .map_err(|_| PickleError("negative size or stride".into()))
                })
                .collect(),
            _ => err("expected a tuple of sizes/strides"),
        }
    }
    fn append(&mut self, list: usize, items: &[usize]) -> Result<(), PickleError> {
        match &mut self.nodes[list] {
            Node::List(v) => {
                v.extend_from_slice(items);
                Ok(())
            }
            _ => err("APPEND to something that is not a list"),
        }
    }
    fn set_items(&mut self, dict: usize, items: &[usize]) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return err("odd number of items in SETITEMS");
        }
        match &mut self.nodes[dict] {
            Node::Dict(v) => {
                for kv in items.chunks(2) {
                    v.push((kv[0], kv[1]));
                }
                Ok(())
            }
            _ => err("SETITEM on something that is not a dict"),
        }
    }
    fn reduce(&mut self, callable: usize, args: usize) -> Result<Node, PickleError> {
        let Node::Global(g) = self.nodes[callable].clone() else {
            return err("REDUCE of something that is not an allowed callable");
        };
        let args = match &self.nodes[args] {
            Node::Tuple(a) => a.clone(),
            _ => return err("REDUCE arguments are not a tuple"),
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Node::Dict(Vec::new())),
            Global::RebuildTensor if args.len() >= 4 => {
                let Node::Storage(dtype, key) = self.nodes[args[0]].clone() else {
                    return err("tensor without a storage");
                };
                let offset = usize::try_from(self.int_of(args[1])?)
                    .map_err(|_| PickleError("negative storage offset".into()))?;
                let shape = self.ints_of(args[2])?;
                let stride = self.ints_of(args[3])?;
                if shape.len() != stride.len() {
                    return err("tensor size and stride differ in length");
                }
                Ok(Node::Value(Value::Tensor(TensorRef {
                    dtype,
                    key,
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter if !args.is_empty() => Ok(self.nodes[args[0]].clone()),
            _ => err(format!(
                "unsupported call of {g:?} with {} arguments",
                args.len()
            )),
        }
    }

    fn run(&mut self) -> Result<usize, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return err(format!("pickle protocol {proto} is not supported"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Item::Mark),
                b'}' => self.push_node(Node::Dict(Vec::new()))?,
                b']' => self.push_node(Node::List(Vec::new()))?,
                b')' => self.push_node(Node::Tuple(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Dict(Vec::new()))?;
                    let d = self.top()?;
                    self.set_items(d, &items)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_node(Node::Tuple(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, &[v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, &items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return err("integer too large for 64 bits");
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'q' | b'r' => {
                    let idx = if op == b'q' {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let t = self.top()?;
                    self.memo.insert(idx, t);
                }
                0x94 => {
                    let t = self.top()?;
                    let idx = self.memo.len() as u64;
                    self.memo.insert(idx, t);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = *self
                        .memo
                        .get(&idx)
                        .ok_or_else(|| PickleError(format!("memo entry {idx} missing")))?;
                    self.stack.push(Item::Obj(n));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.push_node(Node::Global(g))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Value(Value::Str(m)), Node::Value(Value::Str(n))) =
                        (&self.nodes[module], &self.nodes[name])
                    else {
                        return err("STACK_GLOBAL without strings");
                    };
                    let g = self.global(&m.clone(), &n.clone())?;
                    self.push_node(Node::Global(g))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let n = self.reduce(callable, args)?;
                    self.push_node(n)?
                }
                b'Q' => {
                    // Persistent id: ('storage', StorageClass, key, location, numel)
                    let pid = self.pop()?;
                    let Node::Tuple(items) = self.nodes[pid].clone() else {
                        return err("persistent id is not a tuple");
                    };
                    let tag = items.first().map(|&i| &self.nodes[i]);
                    if !matches!(tag, Some(Node::Value(Value::Str(s))) if s == "storage")
                        || items.len() < 3
                    {
                        return err("unsupported persistent id (expected a torch storage)");
                    }
                    let Node::Global(Global::Storage(dtype)) = self.nodes[items[1]] else {
                        return err("persistent id without a storage type");
                    };
                    let Node::Value(Value::Str(key)) = &self.nodes[items[2]] else {
                        return err("storage key is not a string");
                    };
                    let key = key.clone();
                    self.push_node(Node::Storage(dtype, key))?
                }
                b'b' => {
                    // BUILD: sets attributes (an OrderedDict's `_metadata`); the data is already there.
                    self.pop()?;
                    let t = self.top()?;
                    if !matches!(self.nodes[t], Node::Dict(_)) {
                        return err("BUILD on something other than a dict");
                    }
                }
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(Item::Obj(t));
                }
                _ => return err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
            }
        }
    }

    fn to_value(&self, i: usize, depth: usize, budget: &mut usize) -> Result<Value, PickleError> {
        if depth > 100 {
            return err("pickle nested too deeply");
        }
        if *budget == 0 {
            return err("pickle expands to too many objects");
        }
        *budget -= 1;
        Ok(match &self.nodes[i] {
            Node::Value(v) => v.clone(),
            Node::List(items) => Value::List(
                items
                    .iter()
                    .map(|&j| self.to_value(j, depth + 1, budget))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Tuple(items) => Value::Tuple(
                items
                    .iter()
                    .map(|&j| self.to_value(j, depth + 1, budget))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Dict(items) => Value::Dict(
                items
                    .iter()
                    .map(|&(k, v)| {
                        Ok((
                            self.to_value(k, depth + 1, budget)?,
                            self.to_value(v, depth + 1, budget)?,
                        ))
                    })
                    .collect::<Result<_, PickleError>>()?,
            ),
            Node::Global(g) => return err(format!("a bare reference to {g:?} is not data")),
            Node::Storage(..) => return err("a bare storage is not data"),
        })
    }
}

/// Parse a pickle into data.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let mut budget = MAX_NODES;
    m.to_value(root, 0, &mut budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_values() {
        // pickle.dumps({'a': [1, 2.5, None, True], 'b': (300, -5, 'x')}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03M,\x01J\xfb\xff\xff\xffX\x01\x00\x00\x00xq\x04\x87q\x05u.";
        let v = parse(p).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::None,
                Value::Bool(true)
            ]))
        );
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![
                Value::Int(300),
                Value::Int(-5),
                Value::Str("x".into())
            ]))
        );
    }

    #[test]
    fn refuses_code() {
        // pickle.dumps of os.system('echo hi'): GLOBAL 'posix system' + REDUCE
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let e = parse(p).unwrap_err();
        assert!(e.0.contains("posix.system"), "{e}");
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq";
        assert!(parse(p).is_err());
    }
}
