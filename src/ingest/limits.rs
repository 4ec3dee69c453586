//! The bounds the readers keep to, whatever an export holds: memory follows these numbers, not the size a
//! file unpacks or parses to. A file or row beyond them is refused or quarantined with a reason that names
//! the limit; nothing is cut short silently.

/// The longest value, in characters, a field may hold: Excel's own limit for a cell. A longer cell is not
/// something a person typed; the row is quarantined (and no mapped resource holds a longer string).
pub const MAX_VALUE_CHARS: usize = 32_767;

/// The most bytes one XML event (a tag, a text, a comment) or one cell (everything between `<c>` and `</c>`,
/// or `<si>` and `</si>` in the shared strings) may take in an XLSX part. A cell of `MAX_VALUE_CHARS`
/// characters takes at most about 200 KiB even if every character is escaped.
pub const MAX_XML_CELL_BYTES: usize = 512 * 1024;

/// The most bytes the parts calamine reads whole when it opens a workbook (package and workbook
/// relationships, workbook, shared strings, styles, theme) may unpack to, together. The shared strings of
/// a 100,000-row export take a few MiB; calamine holds each string in about 5 times its XML size at worst.
pub const MAX_XLSX_OPEN_PARTS_BYTES: u64 = 32 * 1024 * 1024;

/// The most bytes all parts of an XLSX may unpack to, together: the sheet is read as a stream, so this
/// bounds time (a zip bomb), not memory. A 100,000-row, 30-column sheet unpacks to about 300 MiB.
pub const MAX_XLSX_UNPACKED_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The most bytes a part that is not XML (an image, a VBA project) may unpack to.
pub const MAX_XLSX_BINARY_PART_BYTES: u64 = 16 * 1024 * 1024;

/// The last column (XFD) and row of a spreadsheet, 1-based.
pub const MAX_XLSX_COLUMNS: u32 = 16_384;
pub const MAX_XLSX_ROWS: u32 = 1_048_576;

/// The most bytes one JSON record (an element of the records array, or an NDJSON line) or one JSON string
/// may take. The largest record in the partners' exports is a few KiB.
pub const MAX_JSON_RECORD_BYTES: usize = 1024 * 1024;
