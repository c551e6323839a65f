//! Regions: the pieces of a file that are parsed (and checkpointed) as one
//! unit, and reading them into typed rows.
//!
//! **Splitting.** A plain file is mapped with `memmap2` and walked once with
//! the same reader that parses it, in skip mode (no values are built): the
//! CSV reader's row ends, or the SQL reader's statement ends. A region is cut
//! at the first row (statement) end past `region_size` bytes, so a boundary
//! is always where the parser itself ends a row and never inside a quoted
//! field, even when fields hold newlines. The cost is one sequential scan per
//! file at memory speed, done in parallel across files; TiDB Lightning
//! instead splits CSV at raw newlines only when told fields hold none
//! (`strict-format`), which is faster but wrong on such data. Since regions
//! are recorded in the checkpoint, a resumed run does not scan again.
//!
//! **Compressed files** (`.gz`, `.zst`) are read as streams, one region
//! each: blocks are decompressed into a buffer, the reader in skip mode finds
//! the last complete row (statement) in it, that part is parsed and dropped,
//! and the rest waits for the next block. Offsets in their errors are offsets
//! in the decompressed stream.
//!
//! **Reading.** Rows come out in batches of typed [`Value`]s in the column
//! order of the file (the CSV header or `[import.csv] columns`, the INSERT's
//! column list, or else the table's columns), typed by the target column's
//! [`ColumnSpec`]. A malformed row, a wrong number of values, or a value the
//! column cannot hold is an error naming the file, the byte offset and the
//! line of the row; nothing is skipped.

use std::io::Read;
use std::sync::Arc;

use wraith_backend::{ColumnKind, ColumnSpec, Row, Value};

use super::config::ImportFormat;
use super::csv::{CsvDialect, CsvParser};
use super::files::{DataFile, FileCompression};
use super::sql::SqlParser;
use super::{ImportError, RawValue, SyntaxError};

/// Rows handed over at once.
pub const BATCH_ROWS: usize = 2000;
/// Decompressed bytes read per step from a stream.
const STREAM_BLOCK: usize = 4 << 20;

/// The insertable columns of a target table as values are read from files.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub table: String,
    /// Every column that takes values (generated columns left out), with
    /// the charset of the file's text for textual columns.
    pub columns: Vec<ColumnSpec>,
}

impl TableShape {
    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The specs of `names`, in that order.
    pub fn specs_of(&self, names: &[String]) -> Result<Vec<ColumnSpec>, String> {
        names
            .iter()
            .map(|n| {
                self.columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(n))
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "column `{n}` is not a column of table {} that takes values",
                            self.table
                        )
                    })
            })
            .collect()
    }
}

/// Everything needed to read one file's regions.
#[derive(Debug, Clone)]
pub struct FileReader {
    pub file: DataFile,
    pub dialect: CsvDialect,
    /// CSV: the first row of the file is a header.
    pub header: bool,
    /// CSV: the columns of each line (from config or the header); `None` = all.
    pub csv_columns: Option<Vec<String>>,
    pub shape: Arc<TableShape>,
}

/// Rows of one column list.
#[derive(Debug)]
pub struct Batch {
    pub columns: Arc<Vec<String>>,
    pub rows: Vec<Row>,
    /// Where each row starts: its byte offset in the file (in the
    /// decompressed stream for compressed files), so a value the server
    /// rejects is reported at its row ([`line_of`] gives the line).
    pub offsets: Vec<u64>,
    /// Input bytes this batch covers (plain files only; 0 for streams).
    pub bytes: u64,
}

/// The line (from 1) at byte `offset` of the file (of the decompressed
/// stream for compressed files). Reads the file up to there: for error
/// messages only.
pub fn line_of(file: &DataFile, offset: u64) -> Result<u64, ImportError> {
    let mut input = open_stream(file)?.take(offset);
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 1u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| ImportError::io("reading", &file.path, e))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

fn syntax(
    file: &DataFile,
    data_before: &[u8],
    lines_before: u64,
    e: SyntaxError,
    base: u64,
) -> ImportError {
    let offset = base + e.offset as u64;
    let upto = e.offset.min(data_before.len());
    let line =
        lines_before + 1 + data_before[..upto].iter().filter(|&&b| b == b'\n').count() as u64;
    ImportError::Parse {
        file: file.name.clone(),
        offset,
        line,
        message: e.message,
    }
}

fn open_stream(file: &DataFile) -> Result<Box<dyn Read + Send>, ImportError> {
    let f =
        std::fs::File::open(&file.path).map_err(|e| ImportError::io("opening", &file.path, e))?;
    let r = std::io::BufReader::new(f);
    Ok(match file.compression {
        FileCompression::None => Box::new(r),
        FileCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        FileCompression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| ImportError::io("opening a zstd stream", &file.path, e))?,
        ),
    })
}

fn map_file(file: &DataFile) -> Result<Option<memmap2::Mmap>, ImportError> {
    let f =
        std::fs::File::open(&file.path).map_err(|e| ImportError::io("opening", &file.path, e))?;
    let len = f
        .metadata()
        .map_err(|e| ImportError::io("reading the size of", &file.path, e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the dump files are not modified while wraith reads them; the
    // checkpoint's fingerprint of names and sizes notices a rewritten dump.
    let map =
        unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ImportError::io("mapping", &file.path, e))?;
    Ok(Some(map))
}

/// Ends of the complete rows (CSV) or statements (SQL) in `data`, in order.
/// `on_row_end` is called with each end; returning `false` stops the walk.
fn walk_units(
    format: ImportFormat,
    dialect: &CsvDialect,
    data: &[u8],
    mut on_end: impl FnMut(usize) -> bool,
) -> Result<(), SyntaxError> {
    if format == ImportFormat::Sql {
        let mut p = SqlParser::new(data);
        while let Some(end) = p.skip_statement()? {
            if !on_end(end) {
                break;
            }
        }
    } else {
        let mut p = CsvParser::new(data, dialect);
        while p.read_row(None)? {
            if !on_end(p.position()) {
                break;
            }
        }
    }
    Ok(())
}

/// Cuts a file into regions `[start, end)` of at least `region_size` bytes
/// (the last may be smaller). A compressed file is one region over its
/// compressed bytes.
pub fn plan_regions(reader: &FileReader, region_size: u64) -> Result<Vec<(u64, u64)>, ImportError> {
    let file = &reader.file;
    if file.compression != FileCompression::None {
        return Ok(vec![(0, file.size)]);
    }
    let Some(map) = map_file(file)? else {
        return Ok(Vec::new());
    };
    let data: &[u8] = &map;
    let mut regions = Vec::new();
    let mut start = 0usize;
    walk_units(file.format, &reader.dialect, data, |end| {
        if (end - start) as u64 >= region_size {
            regions.push((start as u64, end as u64));
            start = end;
        }
        true
    })
    .map_err(|e| syntax(file, data, 0, e, 0))?;
    if start < data.len() {
        regions.push((start as u64, data.len() as u64));
    }
    Ok(regions)
}

/// The whole (decompressed) content of a small file, e.g. a schema file.
pub fn read_small_file(file: &DataFile) -> Result<Vec<u8>, ImportError> {
    let mut out = Vec::new();
    open_stream(file)?
        .read_to_end(&mut out)
        .map_err(|e| ImportError::io("reading", &file.path, e))?;
    Ok(out)
}

/// The first row of a CSV file: its header's column names.
pub fn read_header(file: &DataFile, dialect: &CsvDialect) -> Result<Vec<String>, ImportError> {
    let mut head = Vec::new();
    open_stream(file)?
        .take(1 << 20)
        .read_to_end(&mut head)
        .map_err(|e| ImportError::io("reading the header of", &file.path, e))?;
    let mut p = CsvParser::new(&head, dialect);
    let mut row = Vec::new();
    if !p
        .read_row(Some(&mut row))
        .map_err(|e| syntax(file, &head, 0, e, 0))?
    {
        return Err(ImportError::Parse {
            file: file.name.clone(),
            offset: 0,
            line: 1,
            message: "the file is empty but [import.csv] header = true expects a header line"
                .into(),
        });
    }
    row.into_iter()
        .map(|v| match v {
            RawValue::Text(t) => Ok(String::from_utf8_lossy(&t).trim().to_string()),
            _ => Err(ImportError::Parse {
                file: file.name.clone(),
                offset: 0,
                line: 1,
                message: "the header line holds a NULL where a column name should be".into(),
            }),
        })
        .collect()
}

/// The charset a SQL dump's `SET NAMES` declares before its first INSERT.
pub fn sql_names(file: &DataFile) -> Result<Option<String>, ImportError> {
    let mut head = Vec::new();
    open_stream(file)?
        .take(64 << 10)
        .read_to_end(&mut head)
        .map_err(|e| ImportError::io("reading the head of", &file.path, e))?;
    let mut p = SqlParser::new(&head);
    let mut row = Vec::new();
    // A parse error in a truncated head is not this function's business.
    let _ = p.read_row(&mut row);
    Ok(p.names().map(str::to_string))
}

/// Types one raw value by its column.
pub fn to_value(raw: RawValue, spec: &ColumnSpec) -> Result<Value, String> {
    use mysql_async::Value as M;
    let from_text = |b: Vec<u8>| Value::from_text(M::Bytes(b), spec).map_err(|e| e.to_string());
    match raw {
        RawValue::Null => Ok(Value::Null),
        RawValue::Text(b) => match spec.kind {
            ColumnKind::Bit if b.starts_with(b"b'") => Err(format!(
                "column `{}`: a bit literal must not be quoted",
                spec.name
            )),
            _ => from_text(b),
        },
        RawValue::Number(b) => match spec.kind {
            ColumnKind::Bit => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map(Value::Bit)
                .ok_or_else(|| {
                    format!(
                        "column `{}` (Bit): cannot read value {}: not a bit value",
                        spec.name,
                        String::from_utf8_lossy(&b)
                    )
                }),
            _ => from_text(b),
        },
        RawValue::Hex(b) => match spec.kind {
            ColumnKind::Bit => from_text(b),
            ColumnKind::Int => {
                if b.len() > 8 {
                    return Err(format!(
                        "column `{}`: hex literal wider than 64 bits",
                        spec.name
                    ));
                }
                let u = b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
                if spec.unsigned {
                    Ok(Value::UInt(u))
                } else {
                    i64::try_from(u)
                        .map(Value::Int)
                        .map_err(|_| format!("column `{}`: hex literal out of range", spec.name))
                }
            }
            _ => from_text(b),
        },
        RawValue::Bits(u) => match spec.kind {
            ColumnKind::Bit => Ok(Value::Bit(u)),
            ColumnKind::Int if spec.unsigned => Ok(Value::UInt(u)),
            ColumnKind::Int => i64::try_from(u)
                .map(Value::Int)
                .map_err(|_| format!("column `{}`: bit literal out of range", spec.name)),
            _ => Err(format!(
                "column `{}` ({:?}): a bit literal b'…' only goes into BIT or integer columns",
                spec.name, spec.kind
            )),
        },
    }
}

/// Typed rows in one column list, gathered into batches.
struct BatchBuilder<'a> {
    reader: &'a FileReader,
    columns: Arc<Vec<String>>,
    specs: Vec<ColumnSpec>,
    rows: Vec<Row>,
    offsets: Vec<u64>,
    /// Offset of the parsed data in the file (stream).
    base: u64,
    last_flush: usize,
}

impl<'a> BatchBuilder<'a> {
    fn new(
        reader: &'a FileReader,
        columns: Vec<String>,
        base: u64,
    ) -> Result<BatchBuilder<'a>, String> {
        let specs = reader.shape.specs_of(&columns)?;
        Ok(BatchBuilder {
            reader,
            columns: Arc::new(columns),
            specs,
            rows: Vec::with_capacity(BATCH_ROWS),
            offsets: Vec::with_capacity(BATCH_ROWS),
            base,
            last_flush: 0,
        })
    }

    fn switch(&mut self, columns: &[String]) -> Result<bool, String> {
        if self.columns.as_slice() == columns {
            return Ok(false);
        }
        self.specs = self.reader.shape.specs_of(columns)?;
        self.columns = Arc::new(columns.to_vec());
        Ok(true)
    }

    /// Adds the row that starts at `at` (in the parsed data).
    fn push(&mut self, raw: &mut Vec<RawValue>, at: usize) -> Result<(), String> {
        if raw.len() != self.specs.len() {
            return Err(format!(
                "the row has {} values but {} columns are expected ({})",
                raw.len(),
                self.specs.len(),
                self.columns.join(", ")
            ));
        }
        let row = raw
            .drain(..)
            .zip(&self.specs)
            .map(|(v, s)| to_value(v, s))
            .collect::<Result<Row, String>>()?;
        self.rows.push(row);
        self.offsets.push(self.base + at as u64);
        Ok(())
    }

    fn take(&mut self, pos: usize) -> Batch {
        let bytes = (pos - self.last_flush) as u64;
        self.last_flush = pos;
        Batch {
            columns: self.columns.clone(),
            rows: std::mem::replace(&mut self.rows, Vec::with_capacity(BATCH_ROWS)),
            offsets: std::mem::replace(&mut self.offsets, Vec::with_capacity(BATCH_ROWS)),
            bytes,
        }
    }
}

/// Parses `data` (which starts at a row or statement boundary) into
/// batches. `first` says whether `data` starts the file (CSV header).
/// Returns the rows read; `emit` returning `false` stops early.
fn parse_slice(
    reader: &FileReader,
    data: &[u8],
    base: u64,
    first: bool,
    err: &dyn Fn(SyntaxError) -> ImportError,
    emit: &mut dyn FnMut(Batch) -> bool,
    bytes_of_batches: bool,
) -> Result<(u64, bool), ImportError> {
    let mut rows = 0u64;
    let mut raw = Vec::new();
    let default_columns = match &reader.csv_columns {
        Some(c) => c.clone(),
        None => reader.shape.names(),
    };
    let mut batch = BatchBuilder::new(reader, default_columns.clone(), base)
        .map_err(|m| err(SyntaxError::new(0, m)))?;
    let value_err = |at: usize, m: String| err(SyntaxError::new(at, m));
    let mut flush = |batch: &mut BatchBuilder<'_>, pos: usize| -> bool {
        let mut b = batch.take(pos);
        if !bytes_of_batches {
            b.bytes = 0;
        }
        emit(b)
    };
    if reader.file.format == ImportFormat::Sql {
        let mut p = SqlParser::new(data);
        loop {
            let row_start = p.position();
            if !p.read_row(&mut raw).map_err(err)? {
                break;
            }
            let cols = p.columns().map(<[String]>::to_vec);
            let wanted = cols.as_deref().unwrap_or(&default_columns);
            if batch.columns.as_slice() != wanted {
                if !batch.rows.is_empty() && !flush(&mut batch, row_start) {
                    return Ok((rows, false));
                }
                batch.switch(wanted).map_err(|m| value_err(row_start, m))?;
            }
            let at = skip_space_at(data, row_start);
            batch
                .push(&mut raw, p.row_start())
                .map_err(|m| value_err(at, m))?;
            rows += 1;
            if batch.rows.len() >= BATCH_ROWS && !flush(&mut batch, p.position()) {
                return Ok((rows, false));
            }
        }
    } else {
        let mut p = CsvParser::new(data, &reader.dialect);
        if first && reader.header {
            p.read_row(None).map_err(err)?;
            batch.last_flush = p.position();
        }
        loop {
            let row_start = p.position();
            if !p.read_row(Some(&mut raw)).map_err(err)? {
                break;
            }
            batch
                .push(&mut raw, row_start)
                .map_err(|m| value_err(row_start, m))?;
            rows += 1;
            if batch.rows.len() >= BATCH_ROWS && !flush(&mut batch, p.position()) {
                return Ok((rows, false));
            }
        }
    }
    if (!batch.rows.is_empty() || batch.last_flush < data.len()) && !flush(&mut batch, data.len()) {
        return Ok((rows, false));
    }
    Ok((rows, true))
}

fn skip_space_at(data: &[u8], mut at: usize) -> usize {
    while data
        .get(at)
        .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
    {
        at += 1;
    }
    at
}

/// Reads region `[start, end)` of the file, handing batches to `emit`.
/// Returns the rows read. Stops early (without error) when `emit` returns
/// `false`.
pub fn read_region(
    reader: &FileReader,
    start: u64,
    end: u64,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<u64, ImportError> {
    let file = &reader.file;
    if file.compression != FileCompression::None {
        return read_stream(reader, emit);
    }
    let Some(map) = map_file(file)? else {
        return Ok(0);
    };
    let all: &[u8] = &map;
    let (s, e) = (start as usize, (end as usize).min(all.len()));
    if s > e {
        return Err(ImportError::Plan(format!(
            "region {start}..{end} of {} lies outside the file ({} bytes): the file changed since the checkpoint; rerun with --fresh",
            file.name,
            all.len()
        )));
    }
    let data = &all[s..e];
    let err =
        |se: SyntaxError| syntax(file, all, 0, SyntaxError::new(s + se.offset, se.message), 0);
    let (rows, _) = parse_slice(reader, data, s as u64, s == 0, &err, emit, true)?;
    Ok(rows)
}

fn read_stream(
    reader: &FileReader,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<u64, ImportError> {
    let file = &reader.file;
    let mut input = open_stream(file)?;
    let mut buf: Vec<u8> = Vec::with_capacity(STREAM_BLOCK * 2);
    let mut base = 0u64;
    let mut lines_before = 0u64;
    let mut rows = 0u64;
    let mut first = true;
    let mut eof = false;
    while !eof {
        let want = buf.len() + STREAM_BLOCK;
        while buf.len() < want {
            let old = buf.len();
            buf.resize(want, 0);
            let n = input
                .read(&mut buf[old..])
                .map_err(|e| ImportError::io("decompressing", &file.path, e))?;
            buf.truncate(old + n);
            if n == 0 {
                eof = true;
                break;
            }
        }
        // The last complete row or statement (a unit ending exactly at the
        // buffer's end may be cut short, unless the stream ended).
        let cut = if eof {
            buf.len()
        } else {
            let mut last = 0;
            let _ = walk_units(file.format, &reader.dialect, &buf, |end| {
                if end < buf.len() {
                    last = end;
                }
                true
            });
            last
        };
        if cut == 0 && !eof {
            continue;
        }
        let data = &buf[..cut];
        let err = |se: SyntaxError| syntax(file, data, lines_before, se, base);
        let (n, go_on) = parse_slice(reader, data, base, first, &err, emit, false)?;
        rows += n;
        if !go_on {
            return Ok(rows);
        }
        first = false;
        lines_before += data.iter().filter(|&&b| b == b'\n').count() as u64;
        base += cut as u64;
        buf.drain(..cut);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn shape() -> Arc<TableShape> {
        let mut id = ColumnSpec::new("id", ColumnKind::Int);
        id.unsigned = false;
        let mut v = ColumnSpec::new("v", ColumnKind::Text);
        v.charset = Some("utf8mb4".into());
        Arc::new(TableShape {
            table: "t".into(),
            columns: vec![id, v, ColumnSpec::new("b", ColumnKind::Bit)],
        })
    }

    fn reader(
        dir: &std::path::Path,
        name: &str,
        body: &[u8],
        format: ImportFormat,
        compression: FileCompression,
    ) -> FileReader {
        let path = dir.join(name);
        match compression {
            FileCompression::None => std::fs::write(&path, body).unwrap(),
            FileCompression::Zstd => {
                std::fs::write(&path, zstd::encode_all(body, 1).unwrap()).unwrap()
            }
            FileCompression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(body).unwrap();
                std::fs::write(&path, e.finish().unwrap()).unwrap()
            }
        }
        let size = std::fs::metadata(&path).unwrap().len();
        FileReader {
            file: DataFile {
                name: name.into(),
                path,
                table: "t".into(),
                format,
                compression,
                size,
            },
            dialect: CsvDialect::csv(),
            header: true,
            csv_columns: None,
            shape: shape(),
        }
    }

    fn all_rows(r: &FileReader, regions: &[(u64, u64)]) -> Vec<Row> {
        let mut out = Vec::new();
        for &(s, e) in regions {
            read_region(r, s, e, &mut |b| {
                out.extend(b.rows);
                true
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn csv_regions_never_split_quoted_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = b"id,v,b\n".to_vec();
        for i in 0..3000 {
            body.extend_from_slice(
                format!("{i},\"line\nbreak {i}, \"\"q\"\"\",{}\r\n", i % 2).as_bytes(),
            );
        }
        let mut r = reader(
            dir.path(),
            "t.csv",
            &body,
            ImportFormat::Csv,
            FileCompression::None,
        );
        r.csv_columns = Some(read_header(&r.file, &r.dialect).unwrap());
        let regions = plan_regions(&r, 4096).unwrap();
        assert!(regions.len() > 10, "{}", regions.len());
        assert_eq!(regions.last().unwrap().1, body.len() as u64);
        let rows = all_rows(&r, &regions);
        assert_eq!(rows.len(), 3000);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row[0], Value::Int(i as i64));
            assert_eq!(
                row[1],
                Value::Bytes(format!("line\nbreak {i}, \"q\"").into_bytes())
            );
        }
        // The same through both kinds of streams.
        for c in [FileCompression::Zstd, FileCompression::Gzip] {
            let mut z = reader(dir.path(), "t.csv.z", &body, ImportFormat::Csv, c);
            z.csv_columns = r.csv_columns.clone();
            let regions = plan_regions(&z, 4096).unwrap();
            assert_eq!(regions.len(), 1);
            assert_eq!(all_rows(&z, &regions), rows);
        }
    }

    #[test]
    fn sql_regions_and_streams_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = b"/*!40101 SET NAMES binary*/;\n".to_vec();
        for s in 0..200 {
            body.extend_from_slice(b"INSERT INTO `t` VALUES ");
            for i in 0..20 {
                let id = s * 20 + i;
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(format!("({id},'a;\\'b\\n{id}',b'1')").as_bytes());
            }
            body.extend_from_slice(b";\n");
        }
        let r = reader(
            dir.path(),
            "db.t.sql",
            &body,
            ImportFormat::Sql,
            FileCompression::None,
        );
        assert_eq!(sql_names(&r.file).unwrap().as_deref(), Some("binary"));
        let regions = plan_regions(&r, 8192).unwrap();
        assert!(regions.len() > 5);
        let rows = all_rows(&r, &regions);
        assert_eq!(rows.len(), 4000);
        assert_eq!(rows[7][1], Value::Bytes(b"a;'b\n7".to_vec()));
        assert_eq!(rows[7][2], Value::Bit(1));
        let z = reader(
            dir.path(),
            "db.t.sql.zst",
            &body,
            ImportFormat::Sql,
            FileCompression::Zstd,
        );
        assert_eq!(all_rows(&z, &[(0, z.file.size)]), rows);
    }

    #[test]
    fn errors_name_file_offset_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"id,v,b\n1,a,1\n2,b\n";
        let mut r = reader(
            dir.path(),
            "t.csv",
            body,
            ImportFormat::Csv,
            FileCompression::None,
        );
        r.csv_columns = Some(read_header(&r.file, &r.dialect).unwrap());
        let e = read_region(&r, 0, body.len() as u64, &mut |_| true).unwrap_err();
        match e {
            ImportError::Parse {
                file,
                offset,
                line,
                message,
            } => {
                assert_eq!((file.as_str(), offset, line), ("t.csv", 13, 3));
                assert!(message.contains("2 values but 3 columns"), "{message}");
            }
            other => panic!("{other}"),
        }
        let body = b"id,v,b\n1,a,1\nx2,b,0\n";
        let r2 = reader(
            dir.path(),
            "u.csv",
            body,
            ImportFormat::Csv,
            FileCompression::None,
        );
        let e = read_region(&r2, 0, body.len() as u64, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("u.csv") && e.contains("offset 13") && e.contains("line 3"),
            "{e}"
        );
        assert!(e.contains("not an integer"), "{e}");
        let z = reader(
            dir.path(),
            "u.csv.zst",
            body,
            ImportFormat::Csv,
            FileCompression::Zstd,
        );
        let e = read_region(&z, 0, 1, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("offset 13") && e.contains("line 3"), "{e}");
    }
}
