//! TensorBoard event files written directly: TFRecord framing (length, masked CRC32C of the length,
//! data, masked CRC32C of the data) around hand-encoded `Event` protobufs with scalar summaries.
//! The reader checks both CRCs; it exists to verify what we write.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time, step, file_version? , summary? }`.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // wall_time: field 1, fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // step: field 2, varint
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        field_bytes(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut val = Vec::new();
            field_bytes(1, tag.as_bytes(), &mut val); // Summary.Value.tag
            val.push(0x15); // simple_value: field 2, fixed32
            val.extend_from_slice(&value.to_le_bytes());
            field_bytes(1, &val, &mut summary); // Summary.value
        }
        field_bytes(5, &summary, &mut e); // Event.summary
    }
    e
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Start a new event file in `dir` (named so TensorBoard finds it).
    pub fn create(dir: &Path, wall_time: f64) -> Result<Self> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.toylens",
            wall_time as u64
        ));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file };
        w.write(&record(&event(wall_time, 0, Some("brain.Event:2"), &[])))?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Scalars (tag, value) at a step.
    pub fn scalars(&mut self, wall_time: f64, step: u64, scalars: &[(&str, f32)]) -> Result<()> {
        self.write(&record(&event(wall_time, step as i64, None, scalars)))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// A scalar read back: (step, tag, value).
pub type Scalar = (u64, String, f32);

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field: (field number, wire type, varint/fixed value, bytes of a length-delimited one).
type Field<'a> = (u32, u8, u64, &'a [u8]);

/// Fields of a protobuf message.
fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos)?;
        let (field, wt) = ((key >> 3) as u32, (key & 7) as u8);
        match wt {
            0 => out.push((field, wt, read_varint(b, &mut pos)?, &b[0..0])),
            1 => {
                let v = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?);
                pos += 8;
                out.push((field, wt, v, &b[0..0]));
            }
            2 => {
                let n = read_varint(b, &mut pos)? as usize;
                out.push((field, wt, 0, b.get(pos..pos + n)?));
                pos += n;
            }
            5 => {
                let v = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
                pos += 4;
                out.push((field, wt, u64::from(v), &b[0..0]));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Every record's payload of an event file, checking each record's CRCs.
fn records(path: &Path, b: &[u8]) -> Result<Vec<std::ops::Range<usize>>> {
    let bad = |msg: &str| Error::format(path, msg.to_string());
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let len_bytes = b
            .get(pos..pos + 8)
            .ok_or_else(|| bad("truncated record length"))?;
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(
            b.get(pos + 8..pos + 12)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .unwrap(),
        );
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let data = b
            .get(pos + 12..pos + 12 + len)
            .ok_or_else(|| bad("truncated record"))?;
        let crc = u32::from_le_bytes(
            b.get(pos + 12 + len..pos + 16 + len)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .unwrap(),
        );
        if crc != masked_crc(data) {
            return Err(bad("data CRC mismatch"));
        }
        out.push(pos + 12..pos + 12 + len);
        pos += 16 + len;
    }
    Ok(out)
}

/// Read every scalar of an event file, checking each record's CRCs.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::format(path, msg.to_string());
    let mut out = Vec::new();
    for r in records(path, &b)? {
        let ev = fields(&b[r]).ok_or_else(|| bad("malformed event"))?;
        let step = ev.iter().find(|f| f.0 == 2).map(|f| f.2).unwrap_or(0);
        for (_, _, _, summary) in ev.iter().filter(|f| f.0 == 5) {
            for (_, _, _, value) in fields(summary)
                .ok_or_else(|| bad("malformed summary"))?
                .iter()
                .filter(|f| f.0 == 1)
            {
                let vf = fields(value).ok_or_else(|| bad("malformed value"))?;
                let tag = vf
                    .iter()
                    .find(|f| f.0 == 1)
                    .map(|f| String::from_utf8_lossy(f.3).into_owned())
                    .unwrap_or_default();
                if let Some(v) = vf.iter().find(|f| f.0 == 2 && f.1 == 5) {
                    out.push((step, tag, f32::from_bits(v.2 as u32)));
                }
            }
        }
    }
    Ok(out)
}

/// The wall time (Unix seconds) of every event, in file order.
pub fn read_wall_times(path: &Path) -> Result<Vec<f64>> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    records(path, &b)?
        .into_iter()
        .map(|r| {
            let ev = fields(&b[r]).ok_or_else(|| Error::format(path, "malformed event"))?;
            Ok(ev
                .iter()
                .find(|f| f.0 == 1 && f.1 == 1)
                .map_or(f64::NAN, |f| f64::from_bits(f.2)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xe3069283 (the standard check value); masking as TensorFlow does.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}
