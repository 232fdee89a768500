//! The stored record of one response and its versioned binary encoding.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "EDG" version:u8 | body_in_file:u8 | status:u16 | request_time_ms:u64 | response_time_ms:u64
//! url_len:u32 url | header_count:u32 (name_len:u16 name value_len:u32 value)*
//! vary_count:u16 (name_len:u16 name present:u8 value_len:u32 value)*
//! body_len:u64 | blake3(body):[u8;32] | blake3(everything before):[u8;32] | body (if not in a file)
//! ```
//!
//! A record whose version, lengths or either checksum do not match is rejected as a whole: a
//! reader gets the response as it was stored, or nothing. The metadata checksum means a flipped
//! byte in a header is caught as surely as one in the body. (The disk tier checks the checksums
//! the first time it reads a record after a start-up, not on every read: see
//! [`StoredEntry::decode_checked`].)

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::key::Variance;
use super::policy::{CacheControl, Freshness};
use crate::config::HeuristicConfig;

const MAGIC: &[u8; 3] = b"EDG";
/// A Vary marker: the request header names the variants of a URI are selected by.
const VARY_MAGIC: &[u8; 3] = b"EDV";
/// Version 5: the request values a variant was stored under keep the letter case of a
/// parameter's value, read a list's lines as one value, and take in lines spelled with `_`
/// (version 4 lowercased parameter values, so that a variant stored for `version=A` answered
/// `version=a`). Version 4: they are normalised as lists only for the `Accept*` fields, `Cookie`
/// by its pairs, any other field as sent, its lines kept apart (version 3 normalised every field
/// as a list; version 2 sorted `Accept-Language` members and split on any whitespace). An earlier
/// entry that varies is read as a miss (its values may match requests it does not answer);
/// others are read as before, and so are earlier Vary markers.
const VERSION: u8 = 5;
const EARLIER: [u8; 3] = [2, 3, 4];
/// Where a record's body is: in the record, or in a file of the disk tier.
const BODY_INLINE: u8 = 0;
const BODY_IN_FILE: u8 = 1;

/// What the disk tier holds under one key: a response, or (at a URI's own key, when its
/// responses vary) the names of the request headers that select among them.
#[derive(Debug, Clone)]
pub enum Record {
    Entry(Arc<StoredEntry>),
    Vary(Arc<[HeaderName]>),
}

impl Record {
    /// The record's bytes; an entry's body is left out when `body_inline` is false.
    pub fn encode(&self, body_inline: bool) -> Vec<u8> {
        match self {
            Record::Entry(entry) => entry.encode(body_inline),
            Record::Vary(names) => {
                let mut out = Vec::with_capacity(64);
                out.extend_from_slice(VARY_MAGIC);
                out.push(VERSION);
                out.extend_from_slice(&(names.len() as u16).to_be_bytes());
                for name in names.iter() {
                    put_bytes16(&mut out, name.as_str().as_bytes());
                }
                let checksum = blake3::hash(&out);
                out.extend_from_slice(checksum.as_bytes());
                out
            }
        }
    }

    /// Decodes a record; an entry whose body is in a file comes back as
    /// [`Decoded::BodyElsewhere`], to be completed with [`StoredEntry::attach`].
    pub fn decode(record: Bytes, heuristic: &HeuristicConfig) -> Result<Decoded, DecodeError> {
        Self::decode_checked(record, heuristic, true)
    }

    /// [`Record::decode`], an entry's checksums left unchecked when `check` is false (see
    /// [`StoredEntry::decode_checked`]). A `Vary` marker, a few bytes, is always verified.
    pub fn decode_checked(
        record: Bytes,
        heuristic: &HeuristicConfig,
        check: bool,
    ) -> Result<Decoded, DecodeError> {
        if !record.starts_with(VARY_MAGIC) {
            return StoredEntry::decode_checked(record, heuristic, check);
        }
        let checked = record.len().checked_sub(32).ok_or(DecodeError::Truncated)?;
        if blake3::hash(&record[..checked]).as_bytes() != &record[checked..] {
            return Err(DecodeError::Checksum);
        }
        let mut r = Reader {
            buf: &record[..checked],
            pos: 3,
        };
        let version = r.u8()?;
        if version != VERSION && !EARLIER.contains(&version) {
            return Err(DecodeError::Version);
        }
        let count = r.u16()? as usize;
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u16()? as usize;
            names.push(HeaderName::from_bytes(r.take(len)?).map_err(|_| DecodeError::Invalid)?);
        }
        Ok(Decoded::Record(Record::Vary(names.into())))
    }
}

/// The most header fields (and `Vary` fields) a stored record may have. Edge stores what hyper
/// parsed from an origin, at most 100 fields plus the few edge adds.
const MAX_FIELDS: usize = 1024;

/// A decoded record.
#[derive(Debug)]
pub enum Decoded {
    Record(Record),
    /// An entry whose body is kept in a file: its length and blake3.
    BodyElsewhere(Box<StoredEntry>, BodyRef),
}

/// What a record says of a body it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub len: u64,
    pub checksum: [u8; 32],
}

/// A stored header section: every value a slice of one buffer, and per field the end of its value
/// and its name as an index into [`KNOWN`] (or, for the rare name not there, into `custom`). Three
/// allocations of ~8 bytes per field beside the values, where a `(HeaderName, u32)` per field took
/// 40 (a detached `HeaderMap` of 8 fields reserves 12 buckets of ~104 bytes). A `HeaderMap` is
/// built from it, without copying a value or a name, per response served.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    /// The values, back to back.
    buf: Bytes,
    /// Per field: the end of its value in `buf` (the top bit marks a sensitive value), and its
    /// name: an index into [`KNOWN`], or `KNOWN.len()` + an index into `custom`.
    fields: Box<[(u32, u16)]>,
    /// Names not in [`KNOWN`]; empty (no allocation) for most responses.
    custom: Box<[HeaderName]>,
}

const SENSITIVE: u32 = 1 << 31;

/// The names a stored field refers to by index: every standard name of the `http` crate.
static KNOWN: [HeaderName; 81] = {
    use http::header::*;
    [
        ACCEPT,
        ACCEPT_CHARSET,
        ACCEPT_ENCODING,
        ACCEPT_LANGUAGE,
        ACCEPT_RANGES,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_MAX_AGE,
        ACCESS_CONTROL_REQUEST_HEADERS,
        ACCESS_CONTROL_REQUEST_METHOD,
        AGE,
        ALLOW,
        ALT_SVC,
        AUTHORIZATION,
        CACHE_CONTROL,
        CACHE_STATUS,
        CDN_CACHE_CONTROL,
        CONNECTION,
        CONTENT_DISPOSITION,
        CONTENT_ENCODING,
        CONTENT_LANGUAGE,
        CONTENT_LENGTH,
        CONTENT_LOCATION,
        CONTENT_RANGE,
        CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY_REPORT_ONLY,
        CONTENT_TYPE,
        COOKIE,
        DNT,
        DATE,
        ETAG,
        EXPECT,
        EXPIRES,
        FORWARDED,
        FROM,
        HOST,
        IF_MATCH,
        IF_MODIFIED_SINCE,
        IF_NONE_MATCH,
        IF_RANGE,
        IF_UNMODIFIED_SINCE,
        LAST_MODIFIED,
        LINK,
        LOCATION,
        MAX_FORWARDS,
        ORIGIN,
        PRAGMA,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        PUBLIC_KEY_PINS,
        PUBLIC_KEY_PINS_REPORT_ONLY,
        RANGE,
        REFERER,
        REFERRER_POLICY,
        REFRESH,
        RETRY_AFTER,
        SEC_WEBSOCKET_ACCEPT,
        SEC_WEBSOCKET_EXTENSIONS,
        SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_VERSION,
        SERVER,
        SET_COOKIE,
        STRICT_TRANSPORT_SECURITY,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        USER_AGENT,
        UPGRADE,
        UPGRADE_INSECURE_REQUESTS,
        VARY,
        VIA,
        WARNING,
        WWW_AUTHENTICATE,
        X_CONTENT_TYPE_OPTIONS,
        X_DNS_PREFETCH_CONTROL,
        X_FRAME_OPTIONS,
        X_XSS_PROTECTION,
    ]
};

/// Each name of [`KNOWN`] to its index: a search of the list cost ~600 instructions a field, a
/// tenth of a disk-tier hit (callgrind).
static KNOWN_INDEX: LazyLock<HashMap<HeaderName, u16, foldhash::fast::FixedState>> =
    LazyLock::new(|| {
        (0..)
            .zip(KNOWN.iter())
            .map(|(index, name)| (name.clone(), index))
            .collect()
    });

impl StoredHeaders {
    /// A copy of `headers` that owns its bytes: hyper parses values as slices of its read
    /// buffer, which a stored copy must not keep alive.
    pub fn from_map(headers: &HeaderMap) -> Self {
        let mut buf = Vec::with_capacity(headers.iter().map(|(_, v)| v.len()).sum());
        let mut fields = Vec::with_capacity(headers.len());
        let mut custom = Vec::new();
        for (name, value) in headers {
            buf.extend_from_slice(value.as_bytes());
            let end = u32::try_from(buf.len())
                .unwrap_or(SENSITIVE - 1)
                .min(SENSITIVE - 1);
            let flag = if value.is_sensitive() { SENSITIVE } else { 0 };
            let index = match KNOWN_INDEX.get(name) {
                Some(&known) => usize::from(known),
                None => {
                    custom.push(name.clone());
                    KNOWN.len() + custom.len() - 1
                }
            };
            // More distinct custom names than fit an index are not kept (hyper parses at most
            // 100 fields).
            if let Ok(index) = u16::try_from(index) {
                fields.push((end | flag, index));
            }
        }
        Self {
            buf: Bytes::from(buf),
            fields: fields.into_boxed_slice(),
            custom: custom.into_boxed_slice(),
        }
    }

    fn name(&self, index: u16) -> Option<&HeaderName> {
        let index = usize::from(index);
        match KNOWN.get(index) {
            Some(known) => Some(known),
            None => self.custom.get(index - KNOWN.len()),
        }
    }

    /// The fields, in order: name, value bytes, sensitive.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8], bool)> {
        let mut start = 0;
        self.fields.iter().filter_map(move |&(end, index)| {
            let stop = (end & !SENSITIVE) as usize;
            let value = self.buf.get(start..stop)?;
            start = stop;
            Some((self.name(index)?, value, end & SENSITIVE != 0))
        })
    }

    /// The values of every field named `name`.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _, _)| *n == name)
            .map(|(_, value, _)| value)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// A `HeaderMap` of the fields, with room for `extra` more; the values are slices of the
    /// stored buffer, not copies.
    pub fn to_map_with(&self, extra: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + extra);
        let mut start = 0;
        for &(end, index) in self.fields.iter() {
            let stop = (end & !SENSITIVE) as usize;
            // Stored values were valid header values; a damaged one is left out, not a panic.
            if start <= stop
                && stop <= self.buf.len()
                && let Some(name) = self.name(index)
                && let Ok(mut value) = HeaderValue::from_maybe_shared(self.buf.slice(start..stop))
            {
                value.set_sensitive(end & SENSITIVE != 0);
                map.append(name.clone(), value);
            }
            start = stop;
        }
        map
    }

    pub fn to_map(&self) -> HeaderMap {
        self.to_map_with(0)
    }
}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v, _)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// One stored response: what the origin sent (less hop-by-hop fields), when, and for which
/// request header values.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub url: String,
    pub status: StatusCode,
    pub headers: StoredHeaders,
    pub variance: Variance,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub body: Bytes,
    /// A body too large to hold in memory, served from its file instead of `body`.
    pub spilled: Option<Spilled>,
    /// Derived from the fields above; recomputed when a record is decoded.
    pub freshness: Freshness,
}

/// A verified body file, kept open: it is read as it is served, and stays readable when the
/// file is replaced or evicted meanwhile.
#[derive(Debug, Clone)]
pub struct Spilled {
    pub file: Arc<std::fs::File>,
    pub len: u64,
    /// The body's blake3, as its record has it: a record refreshed by a 304 names the same body.
    pub checksum: [u8; 32],
}

impl Spilled {
    /// `len` bytes from `offset`.
    pub fn read_at(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        read_at(&self.file, offset, len)
    }
}

/// `len` bytes of `file` from `offset`, read into memory that is not zeroed first.
pub fn read_at(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // `pread` fills the whole spare capacity, and `Vec::with_capacity` gives exactly `len`, so no
    // read goes past the bytes asked for.
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let at = offset + out.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut out), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Bytes::from(out))
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown record format or version")]
    Version,
    #[error("record is truncated")]
    Truncated,
    #[error("record holds an invalid field")]
    Invalid,
    #[error("body length does not match the record")]
    Length,
    #[error("body checksum does not match")]
    Checksum,
    /// Sound, but written by an earlier version in a way no longer read (see [`VERSION`]).
    #[error("record of an earlier version, no longer read")]
    Obsolete,
}

impl StoredEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: String,
        status: StatusCode,
        headers: HeaderMap,
        variance: Variance,
        request_time: SystemTime,
        response_time: SystemTime,
        body: Bytes,
        heuristic: &HeuristicConfig,
    ) -> Self {
        let freshness = Freshness::of(
            status,
            &headers,
            &CacheControl::governing(&headers),
            request_time,
            response_time,
            heuristic,
        );
        Self {
            url,
            status,
            headers: StoredHeaders::from_map(&headers),
            variance,
            request_time,
            response_time,
            body,
            spilled: None,
            freshness,
        }
    }

    /// Frames a response from it with the body's length: none for a 204, which may not carry
    /// one (RFC 9110 §8.6; an HTTP/2 client rejects the response).
    pub fn set_length(&self, headers: &mut HeaderMap) {
        if self.status == StatusCode::NO_CONTENT {
            // One stored from the origin before it was taken out on the way in.
            headers.remove(http::header::CONTENT_LENGTH);
        } else {
            headers.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(self.content_length()),
            );
        }
    }

    /// The length of the body, wherever it is.
    pub fn content_length(&self) -> u64 {
        self.spilled
            .as_ref()
            .map_or(self.body.len() as u64, |spilled| spilled.len)
    }

    /// Approximate bytes this entry holds in memory, for the memory tier's weigher.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v, _)| n.as_str().len() + v.len() + 32)
            .sum();
        // The request header values the variant was selected by: a client chooses them (up to a
        // request head's size each), so they are weighed like the rest.
        let variance: usize = self
            .variance
            .fields()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, String::len) + 32)
            .sum();
        let total = self.body.len() + headers + variance + self.url.len() + 256;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The record's bytes; the body is left out when `body_inline` is false (the disk tier keeps
    /// it in a file), but its length and checksum are always in.
    pub fn encode(&self, body_inline: bool) -> Vec<u8> {
        let body = BodyRef {
            len: self.body.len() as u64,
            checksum: *blake3::hash(&self.body).as_bytes(),
        };
        self.encode_parts(body, body_inline.then_some(&self.body[..]))
    }

    /// The record of an entry whose body, described by `body`, is in a file.
    pub fn encode_detached(&self, body: BodyRef) -> Vec<u8> {
        self.encode_parts(body, None)
    }

    fn encode_parts(&self, body: BodyRef, inline: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(inline.map_or(0, <[u8]>::len) + 512);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(if inline.is_some() {
            BODY_INLINE
        } else {
            BODY_IN_FILE
        });
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&millis(self.request_time).to_be_bytes());
        out.extend_from_slice(&millis(self.response_time).to_be_bytes());
        put_bytes32(&mut out, self.url.as_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value, _) in self.headers.iter() {
            put_bytes16(&mut out, name.as_str().as_bytes());
            put_bytes32(&mut out, value);
        }
        out.extend_from_slice(&(self.variance.fields().len() as u16).to_be_bytes());
        for (name, value) in self.variance.fields() {
            put_bytes16(&mut out, name.as_str().as_bytes());
            out.push(u8::from(value.is_some()));
            put_bytes32(&mut out, value.as_deref().unwrap_or("").as_bytes());
        }
        out.extend_from_slice(&body.len.to_be_bytes());
        out.extend_from_slice(&body.checksum);
        let meta_checksum = blake3::hash(&out);
        out.extend_from_slice(meta_checksum.as_bytes());
        if let Some(inline) = inline {
            out.extend_from_slice(inline);
        }
        out
    }

    /// The URL an entry record holds, read without decoding the rest of it or checking its
    /// checksums: for a scan of the disk tier by URL, which checks it against the record's key.
    pub fn url_in(record: &[u8]) -> Option<&str> {
        let mut r = Reader {
            buf: record,
            pos: 0,
        };
        if r.take(3).ok()? != MAGIC {
            return None;
        }
        // Version, body placement, status, request and response times.
        r.take(1 + 1 + 2 + 8 + 8).ok()?;
        let len = r.u32().ok()? as usize;
        std::str::from_utf8(r.take(len).ok()?).ok()
    }

    /// Decodes an entry record; the body is a slice of `record`, not a copy. Its checksum (and an
    /// inline body's) is verified unless `check` is false: for a record verified before and unchanged since, read from a body
    /// file of the same length and modification time, or from the index under the same sequence
    /// number (sled checks its own CRC of what it reads back from disk). The checksums took ~3.5k
    /// instructions of a 16 KiB disk-tier hit (a tenth), and 10.7k of a 1 KiB one (a quarter).
    /// Every bound is still checked.
    pub fn decode_checked(
        record: Bytes,
        heuristic: &HeuristicConfig,
        check: bool,
    ) -> Result<Decoded, DecodeError> {
        let mut r = Reader {
            buf: &record,
            pos: 0,
        };
        if r.take(3)? != MAGIC {
            return Err(DecodeError::Version);
        }
        let version = r.u8()?;
        if version != VERSION && !EARLIER.contains(&version) {
            return Err(DecodeError::Version);
        }
        let placement = r.u8()?;
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid)?;
        let request_time = from_millis(r.u64()?);
        let response_time = from_millis(r.u64()?);
        let url_len = r.u32()? as usize;
        let url = std::str::from_utf8(r.take(url_len)?)
            .map_err(|_| DecodeError::Invalid)?
            .to_owned();
        // Checked before the checksum, which comes after them: a crafted record must not make
        // a header map grow past what `http` allows (it panics), nor allocate much.
        let header_count = r.u32()? as usize;
        if header_count > MAX_FIELDS {
            return Err(DecodeError::Invalid);
        }
        let mut headers = HeaderMap::with_capacity(header_count);
        for _ in 0..header_count {
            let name_len = r.u16()? as usize;
            let name =
                HeaderName::from_bytes(r.take(name_len)?).map_err(|_| DecodeError::Invalid)?;
            let value_len = r.u32()? as usize;
            // A slice of the record: `StoredEntry::new` copies the values into one buffer.
            let at = r.pos;
            r.take(value_len)?;
            let value = HeaderValue::from_maybe_shared(record.slice(at..at + value_len))
                .map_err(|_| DecodeError::Invalid)?;
            headers.append(name, value);
        }
        let vary_count = r.u16()? as usize;
        if vary_count > MAX_FIELDS {
            return Err(DecodeError::Invalid);
        }
        if EARLIER.contains(&version) && vary_count > 0 {
            return Err(DecodeError::Obsolete);
        }
        let mut vary = Vec::with_capacity(vary_count);
        for _ in 0..vary_count {
            let name_len = r.u16()? as usize;
            let name =
                HeaderName::from_bytes(r.take(name_len)?).map_err(|_| DecodeError::Invalid)?;
            let present = r.u8()? != 0;
            let value_len = r.u32()? as usize;
            let value =
                std::str::from_utf8(r.take(value_len)?).map_err(|_| DecodeError::Invalid)?;
            vary.push((name, present.then(|| value.to_owned())));
        }
        let body_len = r.u64()?;
        let checksum: [u8; 32] = r.take(32)?.try_into().map_err(|_| DecodeError::Truncated)?;
        let meta_end = r.pos;
        let stored = r.take(32)?;
        if check && stored != blake3::hash(&record[..meta_end]).as_bytes() {
            return Err(DecodeError::Checksum);
        }
        let entry = Self::new(
            url,
            status,
            headers,
            Variance::from_parts(vary),
            request_time,
            response_time,
            Bytes::new(),
            heuristic,
        );
        let body_ref = BodyRef {
            len: body_len,
            checksum,
        };
        match placement {
            BODY_INLINE if !check => entry
                .attach_verified(record.slice(r.pos..), body_ref)
                .map(|entry| Decoded::Record(Record::Entry(Arc::new(entry)))),
            BODY_INLINE => entry
                .attach(record.slice(r.pos..), body_ref)
                .map(|entry| Decoded::Record(Record::Entry(Arc::new(entry)))),
            BODY_IN_FILE if r.pos == record.len() => {
                Ok(Decoded::BodyElsewhere(Box::new(entry), body_ref))
            }
            _ => Err(DecodeError::Invalid),
        }
    }

    /// Completes an entry with its body, if the body is the one the record describes.
    /// Like [`StoredEntry::attach`] for a body whose checksum was verified before (the same
    /// file, unchanged): only its length is checked.
    pub fn attach_verified(mut self, body: Bytes, expected: BodyRef) -> Result<Self, DecodeError> {
        if body.len() as u64 != expected.len {
            return Err(DecodeError::Length);
        }
        self.body = body;
        Ok(self)
    }

    pub fn attach(mut self, body: Bytes, expected: BodyRef) -> Result<Self, DecodeError> {
        if body.len() as u64 != expected.len {
            return Err(DecodeError::Length);
        }
        if *blake3::hash(&body).as_bytes() != expected.checksum {
            return Err(DecodeError::Checksum);
        }
        self.body = body;
        Ok(self)
    }
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?
                .try_into()
                .map_err(|_| DecodeError::Truncated)?,
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| DecodeError::Truncated)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| DecodeError::Truncated)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_at_reads_exactly_the_bytes_asked_for_and_fails_past_the_end() {
        use std::io::Write;
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        for (offset, len) in [(0, 0), (0, 1), (65_530, 70_000), (199_999, 1), (0, 200_000)] {
            let read = read_at(&file, offset, len).unwrap();
            assert_eq!(read[..], bytes[offset as usize..(offset + len) as usize]);
        }
        let past = read_at(&file, 199_990, 11).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// Variants stored before version 5 were selected by values normalised differently (a
    /// parameter's value lowercased; before 4, every field as a list; before 3, `Accept-Language`
    /// members sorted): such a record is read as a miss, not as a variant for requests it does
    /// not answer.
    #[test]
    fn an_earlier_entry_that_varies_is_not_read() {
        let heuristic = HeuristicConfig::default();
        let record = sample().encode(true);
        assert!(StoredEntry::decode_checked(Bytes::from(record.clone()), &heuristic, true).is_ok());
        assert_eq!(record[3], VERSION);
        for earlier in EARLIER {
            let mut record = record.clone();
            record[3] = earlier;
            assert!(matches!(
                StoredEntry::decode_checked(Bytes::from(record), &heuristic, true),
                Err(DecodeError::Obsolete)
            ));
        }
    }

    fn sample() -> StoredEntry {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let variance = Variance::from_parts(vec![(HeaderName::from_static("accept"), None)]);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        StoredEntry::new(
            "http://o/a".into(),
            StatusCode::OK,
            headers,
            variance,
            t,
            t,
            Bytes::from_static(b"hello body"),
            &HeuristicConfig::default(),
        )
    }

    fn whole(decoded: Decoded) -> Arc<StoredEntry> {
        match decoded {
            Decoded::Record(Record::Entry(entry)) => entry,
            other => panic!("expected a whole entry, got {other:?}"),
        }
    }

    /// Standard and custom names, repeated fields, empty and sensitive values all come back in
    /// order.
    #[test]
    fn stored_headers_keep_every_field_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("x-custom", HeaderValue::from_static("1"));
        headers.append("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("x-custom", HeaderValue::from_static(""));
        headers.append("x-other", HeaderValue::from_static("o"));
        let mut secret = HeaderValue::from_static("s=1");
        secret.set_sensitive(true);
        headers.append("set-cookie", secret);
        let stored = StoredHeaders::from_map(&headers);
        let map = stored.to_map();
        assert_eq!(map, headers);
        assert!(map.get("set-cookie").unwrap().is_sensitive());
        let names: Vec<_> = stored.iter().map(|(n, _, _)| n.as_str()).collect();
        let expected: Vec<_> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected);
        let name = HeaderName::from_static("x-custom");
        let custom: Vec<_> = stored.get_all(&name).collect();
        assert_eq!(custom, [&b"1"[..], &b""[..]]);
    }

    #[test]
    fn record_round_trips() {
        let entry = sample();
        let decoded = whole(
            StoredEntry::decode_checked(
                entry.encode(true).into(),
                &HeuristicConfig::default(),
                true,
            )
            .unwrap(),
        );
        assert_eq!(decoded.body, entry.body);
        assert_eq!(decoded.headers, entry.headers);
        assert_eq!(decoded.headers.to_map(), entry.headers.to_map());
        assert_eq!(decoded.variance, entry.variance);
        assert_eq!(decoded.freshness, entry.freshness);
        assert_eq!(decoded.url, entry.url);
    }

    #[test]
    fn the_url_is_read_from_a_record_without_decoding_it() {
        let entry = sample();
        for inline in [true, false] {
            let record = entry.encode(inline);
            assert_eq!(StoredEntry::url_in(&record), Some(&*entry.url));
            assert_eq!(StoredEntry::url_in(&record[..30]), None, "cut short");
        }
        let vary = Record::Vary(vec![http::header::ACCEPT].into()).encode(true);
        assert_eq!(StoredEntry::url_in(&vary), None);
    }

    #[test]
    fn a_record_without_its_body_is_completed_only_by_that_body() {
        let entry = sample();
        let decoded = StoredEntry::decode_checked(
            entry.encode(false).into(),
            &HeuristicConfig::default(),
            true,
        )
        .unwrap();
        let Decoded::BodyElsewhere(meta, body_ref) = decoded else {
            panic!("body should be elsewhere")
        };
        assert!(
            meta.clone()
                .attach(Bytes::from_static(b"hello bodY"), body_ref)
                .is_err()
        );
        assert!(
            meta.clone()
                .attach(Bytes::from_static(b"hello bod"), body_ref)
                .is_err()
        );
        assert_eq!(
            meta.attach(entry.body.clone(), body_ref).unwrap().body,
            entry.body
        );
    }

    #[test]
    fn any_flipped_or_missing_byte_is_rejected() {
        let record = sample().encode(true);
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x40;
            let decoded =
                StoredEntry::decode_checked(bad.into(), &HeuristicConfig::default(), true);
            assert!(decoded.is_err(), "a flip at byte {i} went unnoticed");
        }
        let truncated = record[..record.len() - 1].to_vec();
        assert_eq!(
            StoredEntry::decode_checked(truncated.into(), &HeuristicConfig::default(), true)
                .unwrap_err(),
            DecodeError::Length
        );
    }

    /// A crafted record (found by fuzzing) naming more distinct fields than a header map can hold
    /// made `HeaderMap::append` panic before the checksum, which follows them, was compared.
    #[test]
    fn a_record_with_too_many_fields_is_rejected_not_a_panic() {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[VERSION, BODY_INLINE]);
        out.extend_from_slice(&200u16.to_be_bytes());
        out.extend_from_slice(&[0; 16]);
        put_bytes32(&mut out, b"/a");
        out.extend_from_slice(&33_000u32.to_be_bytes());
        for i in 0..33_000 {
            put_bytes16(&mut out, format!("h{i}").as_bytes());
            put_bytes32(&mut out, b"");
        }
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&[0; 64]);
        let decoded = Record::decode(out.into(), &HeuristicConfig::default());
        assert_eq!(decoded.unwrap_err(), DecodeError::Invalid);
    }
}
