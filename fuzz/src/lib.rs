//! Helpers shared by the fuzz targets: turning raw fuzzer bytes into the
//! text, numbers and headers the parsers read.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The input as text, invalid UTF-8 replaced (parsers only ever see `&str`).
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A `u64` from the first eight bytes (zero-padded) and the rest.
pub fn split_number(data: &[u8]) -> (u64, &[u8]) {
    let at = data.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..at].copy_from_slice(&data[..at]);
    (u64::from_le_bytes(bytes), &data[at..])
}

/// A `u64` from the first eight bytes and the rest as text.
pub fn number_and_text(data: &[u8]) -> (u64, String) {
    let (number, rest) = split_number(data);
    (number, text(rest))
}

/// Each line of the input as one value of header `name`, as a request with
/// that header repeated carries it; lines that are not header values are
/// dropped, as hyper would have refused them.
pub fn headers(name: HeaderName, data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(name.clone(), value);
        }
    }
    headers
}
