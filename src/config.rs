//! Typed configuration: defaults, parsing of `edge.yaml`, and errors that name the key and its line.
//!
//! Every value is validated while it is deserialised, so that a bad value is reported with the
//! position of the key it came from, never later from somewhere deep in the proxy.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// The whole configuration of one edge node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on for client traffic.
    #[serde(default = "defaults::listen", deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Addresses of the load balancers or TLS terminators in front that open their connections to
    /// `listen` with a PROXY protocol header (HAProxy's, version 1 or 2): the client's address
    /// is taken from it. Connections from them without one are closed; other clients connect
    /// as usual, and cannot name an address.
    #[serde(default, deserialize_with = "networks")]
    pub proxy_protocol: Vec<ipnet::IpNet>,
    /// HTTPS for clients, on a listener of its own; none when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    pub origin: OriginConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub purge: PurgeConfig,
    #[serde(default)]
    pub explain: ExplainConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// How long shutdown waits for in-flight requests before cutting them off.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: Seconds,
    /// How long a client may take to send its first bytes, counted from when its connection was
    /// accepted; to send an HTTP/1 request's head, counted from its first bytes or the previous
    /// response; and to open an HTTP/2 stream when none is open. So also how long an idle
    /// keep-alive connection, of either version, stays open (nginx's `client_header_timeout`).
    #[serde(default = "defaults::client_header_timeout")]
    pub client_header_timeout: Seconds,
    /// How long an upload (a request body edge reads first or streams to the origin) may wait on
    /// its client between two reads (nginx's `client_body_timeout`): past it, 408 and the
    /// connection closed.
    #[serde(default = "defaults::client_body_timeout")]
    pub client_body_timeout: Seconds,
    /// The largest request body edge forwards (nginx's `client_max_body_size`): one announced
    /// longer gets 413 before the origin is asked, one that turns out longer is cut off there
    /// (413 if the origin has not answered yet). 0: no limit.
    #[serde(default)]
    pub client_max_body_size: ByteSize,
    /// Whether an upload over 64 KiB is written whole to a temporary file before the origin is
    /// asked (nginx's `proxy_request_buffering on`), rather than streamed to it as it comes.
    #[serde(default)]
    pub request_buffering: bool,
    /// How long a response may wait on a client that takes none of it (nginx's `send_timeout`):
    /// past it, with bytes ready for the client and none taken, the connection is closed.
    #[serde(default = "defaults::send_timeout")]
    pub send_timeout: Seconds,
}

/// Client addresses allowed to send `PURGE` on the main listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeConfig {
    #[serde(default = "defaults::loopback", deserialize_with = "networks")]
    pub allow: Vec<ipnet::IpNet>,
}

/// Client addresses whose `Edge-Debug: 1` request header gets explanation headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainConfig {
    #[serde(default = "defaults::loopback", deserialize_with = "networks")]
    pub allow: Vec<ipnet::IpNet>,
}

/// An IP address and port. A port alone, or a host name, is refused with an example: which
/// addresses a name or nothing would mean (nginx takes both) is better said in the file.
fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = match serde_yaml_ng::Value::deserialize(d)? {
        serde_yaml_ng::Value::String(text) => text,
        serde_yaml_ng::Value::Number(number) => number.to_string(),
        _ => String::new(),
    };
    text.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid address {text:?}: expected an IP address and a port (0.0.0.0:8080, 127.0.0.1:9090, [::]:8080)"
        ))
    })
}

/// A list of networks (`10.0.0.0/8`, `::1/128`), where an address alone (`10.0.0.1`) stands for
/// itself, as in nginx's `allow`.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    // Item by item, so that an error names the item (`purge.allow[1]`) and its line.
    struct Network(ipnet::IpNet);
    impl<'de> Deserialize<'de> for Network {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            let text = text.trim();
            let net = (text.parse::<ipnet::IpNet>())
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    de::Error::custom(format!(
                        "invalid address {text:?}: expected an address or a network (10.0.0.1, 10.0.0.0/8, ::1)"
                    ))
                })?;
            // `10.0.0.1/8` allows all of 10.0.0.0/8: likely one address was meant (nginx warns
            // of such "low address bits"; an allow list is no place to guess).
            if net.addr() != net.network() {
                let one = ipnet::IpNet::from(net.addr());
                return Err(de::Error::custom(format!(
                    "{text:?} has address bits past its /{}: write {} for the network, or {one} for the one address",
                    net.prefix_len(),
                    net.trunc(),
                )));
            }
            Ok(Network(net))
        }
    }
    // A key with nothing after it (its items commented out) is YAML's null: it could mean no
    // address or the default, and for `purge.allow` those are nobody and loopback.
    let Some(list) = Option::<Vec<Network>>::deserialize(d)? else {
        return Err(de::Error::custom(
            "no list given: write [] for no address at all, or leave the key out for its default",
        ));
    };
    Ok(list.into_iter().map(|Network(net)| net).collect())
}

/// Whether `addr` is in one of the networks of `allow`.
pub fn allowed(allow: &[ipnet::IpNet], addr: std::net::IpAddr) -> bool {
    let addr = addr.to_canonical();
    allow.iter().any(|net| net.contains(&addr))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (one line of key=value fields) or `json` (one object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `edge=debug`, `edge::access=off`); `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_filter")]
    pub filter: LogFilter,
    /// One line per request under the `edge::access` target.
    #[serde(default = "defaults::yes")]
    pub access: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Scheme, authority and optional path prefix of the origin.
    pub url: OriginUrl,
    /// Time allowed to open a TCP (and TLS) connection to the origin.
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "more_than_zero"
    )]
    pub connect_timeout: Seconds,
    /// Time allowed for the origin to start answering once it has the whole request, to take
    /// more of an upload, and between two reads of its body.
    #[serde(default = "defaults::timeout", deserialize_with = "more_than_zero")]
    pub timeout: Seconds,
    /// Most requests in flight to the origin at once, so most connections open to it; 0 is no
    /// limit. A request past it waits up to `connect_timeout` for one to finish, then gets 503.
    /// Uploads streaming from their clients hold at most half of them.
    #[serde(
        default = "defaults::max_connections",
        deserialize_with = "connection_limit"
    )]
    pub max_connections: usize,
    /// Certificates (PEM) trusted for an https origin instead of the built-in (Mozilla) roots.
    #[serde(default, deserialize_with = "ca_file")]
    pub ca_file: Option<CaFile>,
    /// `Host` sent to the origin, and the name its TLS certificate must bear, instead of `url`'s
    /// host and port (Varnish's `.host_header`).
    #[serde(default, deserialize_with = "host_header")]
    pub host_header: Option<HostHeader>,
    /// Query parameters taken out of every request before it is looked up and forwarded
    /// (tracking parameters: `utm_*`, `fbclid`), so that requests differing only by them share
    /// one stored response. A name ending in `*` stands for every name it begins.
    #[serde(default, deserialize_with = "parameter_names")]
    pub strip_query: Vec<String>,
    /// Query parameters put in order of their names (equal names keep their order), so that
    /// `?a=1&b=2` and `?b=2&a=1` share one stored response (Varnish's `std.querysort`).
    #[serde(default)]
    pub sort_query: bool,
}

/// Names of query parameters (`utm_source`, `utm_*`) as they are written in a query.
fn parameter_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Name(String);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let name = String::deserialize(d)?;
            let stem = name.strip_suffix('*').unwrap_or(&name);
            if stem.is_empty()
                || stem
                    .bytes()
                    .any(|b| b"&=#?* ".contains(&b) || !b.is_ascii_graphic())
            {
                return Err(de::Error::custom(format!(
                    "invalid query parameter name {name:?}: expected a name as it is written in a query (utm_source), or the start of names followed by * (utm_*)"
                )));
            }
            Ok(Name(name))
        }
    }
    Ok(Vec::<Name>::deserialize(d)?
        .into_iter()
        .map(|Name(name)| name)
        .collect())
}

/// `origin.host_header`: a host and optional port.
#[derive(Debug, Clone)]
pub struct HostHeader {
    pub value: http::HeaderValue,
    /// The host alone (an IP address without brackets): the TLS server name.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

fn host_header<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HostHeader>, D::Error> {
    let text = String::deserialize(d)?;
    let invalid = |why: &str| {
        de::Error::custom(format!(
            "invalid host {text:?}: {why} (expected a host and optional port, e.g. www.example.com)"
        ))
    };
    let authority: http::uri::Authority = text.parse().map_err(|_| invalid("not a host"))?;
    if authority.as_str().contains('@') || authority.as_str() != text {
        return Err(invalid("not a host alone"));
    }
    let host = authority.host();
    let host = (host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))).unwrap_or(host);
    let server_name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| invalid("not a host name or address"))?;
    let value =
        http::HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("not ASCII"))?;
    Ok(Some(HostHeader { value, server_name }))
}

/// `origin.ca_file`'s certificates, read and checked when the configuration is.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub roots: std::sync::Arc<rustls::RootCertStore>,
}

fn ca_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CaFile>, D::Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = PathBuf::deserialize(d)?;
    let shown = path.display();
    let pem = std::fs::read(&path)
        .map_err(|err| de::Error::custom(format!("cannot read {shown}: {err}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|err| {
            de::Error::custom(format!("{shown}: certificate {} is not PEM: {err}", i + 1))
        })?;
        roots.add(cert).map_err(|err| {
            de::Error::custom(format!(
                "{shown}: certificate {} is not usable: {err}",
                i + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(de::Error::custom(format!(
            "{shown} holds no certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(Some(CaFile {
        roots: std::sync::Arc::new(roots),
    }))
}

/// `tls`: a second client listener, served as `listen` is, after a TLS handshake (1.2 or 1.3)
/// with this certificate and key. Both files are read, and checked to belong together, with the
/// rest of the configuration (and again on reload).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// The certificate chain (PEM), the server's own certificate first.
    pub certificate: CertificateChain,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKey,
}

impl TlsConfig {
    /// The certificate and key, as handshakes present them.
    pub fn certified(&self) -> rustls::sign::CertifiedKey {
        rustls::sign::CertifiedKey::new(self.certificate.0.clone(), self.key.0.clone())
    }
}

/// `tls.certificate`'s certificates.
#[derive(Debug, Clone)]
pub struct CertificateChain(pub Vec<rustls_pki_types::CertificateDer<'static>>);

impl<'de> Deserialize<'de> for CertificateChain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let path = PathBuf::deserialize(d)?;
        let shown = path.display();
        let pem = std::fs::read(&path)
            .map_err(|err| de::Error::custom(format!("cannot read {shown}: {err}")))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| de::Error::custom(format!("{shown}: not PEM: {err}")))?;
        if chain.is_empty() {
            return Err(de::Error::custom(format!(
                "{shown} holds no certificate (-----BEGIN CERTIFICATE-----)"
            )));
        }
        Ok(Self(chain))
    }
}

/// `tls.key`'s private key, loaded for signing.
#[derive(Debug, Clone)]
pub struct PrivateKey(pub std::sync::Arc<dyn rustls::sign::SigningKey>);

impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::{self, PemObject};
        let path = PathBuf::deserialize(d)?;
        let shown = path.display();
        let pem = std::fs::read(&path)
            .map_err(|err| de::Error::custom(format!("cannot read {shown}: {err}")))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
            let encrypted = pem.windows(24).any(|w| w == b"ENCRYPTED PRIVATE KEY---")
                || pem.windows(17).any(|w| w == b"Proc-Type: 4,ENCR");
            de::Error::custom(match err {
                pem::Error::NoItemsFound if encrypted => format!(
                    "{shown} holds an encrypted private key, which edge cannot decrypt: write it out unencrypted (openssl pkey -in {shown} -out key.pem) and keep that file readable by edge alone"
                ),
                pem::Error::NoItemsFound => format!(
                    "{shown} holds no private key (-----BEGIN PRIVATE KEY-----, or RSA or EC PRIVATE KEY)"
                ),
                err => format!("{shown}: not PEM: {err}"),
            })
        })?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|err| {
            de::Error::custom(format!("{shown}: not a usable private key: {err}"))
        })?;
        Ok(Self(key))
    }
}

/// The most `origin.max_connections` may be: more would not be a limit on any machine
/// (each is a file descriptor).
const MAX_CONNECTIONS_CEILING: usize = 1 << 20;

fn connection_limit<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct Limit;
    impl de::Visitor<'_> for Limit {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(
                f,
                "a whole number from 0 (no limit) to {MAX_CONNECTIONS_CEILING}"
            )
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            match usize::try_from(v) {
                Ok(v) if v <= MAX_CONNECTIONS_CEILING => Ok(v),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
    }
    d.deserialize_any(Limit)
}

/// The disk tier's directory. One that exists must be a directory: edge would take a file there
/// for a broken store and move it aside.
fn store_directory<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_dir() => Err(de::Error::custom(format!(
            "{} is not a directory (the disk tier is kept in one)",
            path.display()
        ))),
        _ => Ok(path),
    }
}

/// A limit that cannot be turned off with `0s`: it would leave no time at all.
fn more_than_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
    let limit = Seconds::deserialize(d)?;
    if limit.0.is_zero() {
        return Err(de::Error::custom(
            "invalid duration: must be more than 0s (it is no limit to turn off)",
        ));
    }
    Ok(limit)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub disk: DiskConfig,
    /// Largest body that is stored; larger responses are streamed through uncached.
    #[serde(default = "defaults::max_object_size")]
    pub max_object_size: ByteSize,
    #[serde(default)]
    pub heuristic: HeuristicConfig,
    /// How long a request waits for another request's fetch of the same key before fetching on
    /// its own.
    #[serde(default = "defaults::collapse_wait")]
    pub collapse_wait: Seconds,
    /// How long a key whose response could not be stored skips request collapsing.
    #[serde(default = "defaults::hit_for_pass")]
    pub hit_for_pass: Seconds,
    /// Serve a stale response for up to this long past its freshness when the origin fails, even
    /// without `stale-if-error` (never for `no-cache` or `must-revalidate` responses). 0 = off.
    #[serde(default = "defaults::zero")]
    pub stale_if_error: Seconds,
    /// What a request's `no-cache`, `max-age` and `min-fresh` (a browser's reload) do.
    #[serde(default)]
    pub client_refresh: ClientRefresh,
}

/// `cache.client_refresh`: whether a request may have a fresh stored response validated with
/// the origin before it is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRefresh {
    /// RFC 9111 §5.2.1: the request's `no-cache`, `max-age` and `min-fresh` are honoured.
    #[default]
    Revalidate,
    /// As nginx, Varnish and most CDNs: they are ignored, and a fresh stored response answers.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    #[serde(default = "defaults::memory_capacity")]
    pub capacity: ByteSize,
    /// Larger responses are kept on disk only.
    #[serde(default = "defaults::memory_max_object_size")]
    pub max_object_size: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    #[serde(default = "defaults::disk_path", deserialize_with = "store_directory")]
    pub path: PathBuf,
    #[serde(default = "defaults::disk_capacity")]
    pub capacity: ByteSize,
    /// Free space the disk tier leaves on its file system: when there is less, it holds less
    /// than `capacity` (the oldest stores are evicted), as nginx's `min_free` does.
    #[serde(default = "defaults::disk_min_free")]
    pub min_free: ByteSize,
}

/// RFC 9111 §4.2.2 heuristic freshness for responses without explicit expiration.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeuristicConfig {
    /// Fraction of `Date − Last-Modified` used as the freshness lifetime (0 turns heuristics off).
    #[serde(default = "defaults::heuristic_fraction")]
    pub fraction: Fraction,
    /// Upper bound on a heuristic freshness lifetime.
    #[serde(default = "defaults::heuristic_max")]
    pub max: Seconds,
    /// Freshness of a 404 or 410 without explicit expiration (0 = only what RFC 9111 gives).
    #[serde(default = "defaults::zero")]
    pub negative_ttl: Seconds,
    /// Freshness of any other response without explicit expiration or `Last-Modified` that may
    /// be given one (0 = none).
    #[serde(default = "defaults::zero")]
    pub default_ttl: Seconds,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(
        default = "defaults::admin_listen",
        deserialize_with = "socket_address"
    )]
    pub listen: SocketAddr,
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub fn loopback() -> Vec<ipnet::IpNet> {
        vec![
            "127.0.0.0/8".parse().expect("valid network"),
            "::1/128".parse().expect("valid network"),
        ]
    }
    pub fn log_filter() -> LogFilter {
        LogFilter("info".to_owned())
    }
    pub fn yes() -> bool {
        true
    }
    pub fn client_header_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn client_body_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn send_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn shutdown_timeout() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    pub fn connect_timeout() -> Seconds {
        Seconds(Duration::from_secs(5))
    }
    pub fn timeout() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn memory_capacity() -> ByteSize {
        ByteSize(256 << 20)
    }
    pub fn memory_max_object_size() -> ByteSize {
        ByteSize(8 << 20)
    }
    pub fn disk_path() -> PathBuf {
        PathBuf::from("./var/edge")
    }
    pub fn disk_capacity() -> ByteSize {
        ByteSize(4 << 30)
    }
    pub fn disk_min_free() -> ByteSize {
        ByteSize(1 << 30)
    }
    pub fn max_object_size() -> ByteSize {
        ByteSize(64 << 20)
    }
    pub fn heuristic_fraction() -> Fraction {
        Fraction(0.1)
    }
    pub fn heuristic_max() -> Seconds {
        Seconds(Duration::from_secs(24 * 3600))
    }
    pub fn collapse_wait() -> Seconds {
        Seconds(Duration::from_secs(10))
    }
    pub fn hit_for_pass() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn zero() -> Seconds {
        Seconds(Duration::ZERO)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: MemoryConfig::default(),
            disk: DiskConfig::default(),
            max_object_size: defaults::max_object_size(),
            heuristic: HeuristicConfig::default(),
            collapse_wait: defaults::collapse_wait(),
            hit_for_pass: defaults::hit_for_pass(),
            stale_if_error: defaults::zero(),
            client_refresh: ClientRefresh::default(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: defaults::memory_capacity(),
            max_object_size: defaults::memory_max_object_size(),
        }
    }
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            path: defaults::disk_path(),
            capacity: defaults::disk_capacity(),
            min_free: defaults::disk_min_free(),
        }
    }
}

impl Default for HeuristicConfig {
    fn default() -> Self {
        Self {
            fraction: defaults::heuristic_fraction(),
            max: defaults::heuristic_max(),
            negative_ttl: defaults::zero(),
            default_ttl: defaults::zero(),
        }
    }
}

impl Default for PurgeConfig {
    fn default() -> Self {
        Self {
            allow: defaults::loopback(),
        }
    }
}

impl Default for ExplainConfig {
    fn default() -> Self {
        Self {
            allow: defaults::loopback(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: defaults::log_filter(),
            access: true,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
        }
    }
}

/// A configuration that could not be read, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    InvalidNoPosition {
        file: String,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let config = Self::deserialize_located(text, file)?;
        if clashing(config.listen, config.admin.listen) {
            let key = "admin.listen";
            let message = format!(
                "{} is where listen ({}) is too: the two listeners need addresses of their own",
                config.admin.listen, config.listen
            );
            let at = locate_key(text, key).or_else(|| locate_key(text, "listen"));
            return Err(ConfigError::at(file, at, key.to_owned(), message));
        }
        if let Some(tls) = &config.tls {
            let at = |key| locate_key(text, key).or_else(|| locate_key(text, "tls"));
            if clashing(tls.listen, config.listen) || clashing(tls.listen, config.admin.listen) {
                let message = format!(
                    "{} is where listen ({}) or admin.listen ({}) is too: each listener needs an address of its own",
                    tls.listen, config.listen, config.admin.listen
                );
                let key = "tls.listen";
                return Err(ConfigError::at(file, at(key), key.to_owned(), message));
            }
            use rustls::{Error, InconsistentKeys};
            let wrong = match tls.certified().keys_match() {
                // A key whose public half rustls cannot tell is taken, as rustls takes it.
                Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => None,
                Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Some((
                    "tls.key",
                    "not the key of tls.certificate's first certificate (the server's own)"
                        .to_owned(),
                )),
                Err(err) => Some((
                    "tls.certificate",
                    format!("its first certificate is not usable: {err}"),
                )),
            };
            if let Some((key, message)) = wrong {
                return Err(ConfigError::at(file, at(key), key.to_owned(), message));
            }
        }
        // Either tier may be turned off with 0, not both: every response would say `stored`
        // and be kept nowhere.
        if config.cache.memory.capacity.0 == 0 && config.cache.disk.capacity.0 == 0 {
            let key = "cache.disk.capacity";
            let message = "0 here and in cache.memory.capacity turns both tiers off, and \
                           nothing could be stored: give one of them room"
                .to_owned();
            let at = locate_key(text, key).or_else(|| locate_key(text, "cache.memory.capacity"));
            return Err(ConfigError::at(file, at, key.to_owned(), message));
        }
        Ok(config)
    }

    fn deserialize_located(text: &str, file: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = match err.path().to_string() {
                path if path == "." => "(top level)".to_owned(),
                path => path,
            };
            let inner = err.into_inner();
            let mut message = bare_message(&inner);
            // For a value edge rejects itself, the YAML parser points at the start of the
            // enclosing mapping; name the key's own line instead when it can be found. A key
            // written twice is named whole, on its second line.
            let mut key = key;
            let duplicate = message
                .strip_prefix("duplicate field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned());
            let found = match duplicate {
                Some(name) => {
                    if !key.starts_with('(') {
                        key = format!("{key}.{name}");
                    } else {
                        key = name;
                    }
                    let mut places = key_positions(text, &key);
                    let first = places.next();
                    message = match first {
                        Some((line, _)) => format!("written twice (first on line {line})"),
                        None => "written twice".to_owned(),
                    };
                    places.next()
                }
                None => locate(text, &key),
            };
            let mut location =
                found.or_else(|| inner.location().map(|at| (at.line(), at.column())));
            // A tab where YAML wants indentation: the parser stops on its line, under a key that
            // may be lines above; name the line, and say what is wrong with it.
            if let Some(at) = inner.location()
                && message.contains("cannot start any token")
                && (text.lines().nth(at.line().saturating_sub(1)))
                    .is_some_and(|row| row.trim_start_matches(' ').starts_with('\t'))
            {
                location = Some((at.line(), at.column()));
                message.push_str(" (a tab: YAML indents with spaces only)");
            }
            ConfigError::at(file, location, key, message)
        })
    }
}

impl ConfigError {
    /// An invalid value of `key`, at a line and column if known.
    fn at(file: &str, at: Option<(usize, usize)>, key: String, message: String) -> Self {
        let file = file.to_owned();
        match at {
            Some((line, column)) => Self::Invalid {
                file,
                line,
                column,
                key,
                message,
            },
            None => Self::InvalidNoPosition { file, key, message },
        }
    }
}

/// Whether two listeners' addresses would take the same port (port 0 takes a free one each). An
/// unspecified address takes it on every address of its family. (`::` may take IPv4's too, as
/// `net.ipv6.bindv6only` says: not judged here, binding tells.)
fn clashing(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && wild.is_ipv6() == other.is_ipv6()
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// The line and column of the key at `path` (`cache.memory.capacity`) in block-style YAML, if it
/// is written there; `None` for paths into sequences or flow mappings, which the parser's own
/// position describes better.
fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    key_positions(text, path).next()
}

/// The line and column of `path` in block-style YAML: a key (`cache.memory.capacity`), or an item
/// of a list under one (`purge.allow[1]`, on the item's own line, or the key's for a flow list).
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let Some((list, index)) = path
        .strip_suffix(']')
        .and_then(|rest| rest.rsplit_once('['))
        .and_then(|(list, index)| Some((list, index.parse::<usize>().ok()?)))
    else {
        return locate_key(text, path);
    };
    let (line, column) = locate_key(text, list)?;
    let key_indent = column - 1;
    let mut items = None;
    let mut seen = 0;
    for (number, row) in text.lines().enumerate().skip(line) {
        let content = row.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = row.len() - content.len();
        let item = content == "-" || content.starts_with("- ");
        if indent < key_indent || (indent == key_indent && !item) {
            break;
        }
        // The list's own items, not those of a list nested in one.
        if item && *items.get_or_insert(indent) == indent {
            if seen == index {
                return Some((number + 1, indent + 1));
            }
            seen += 1;
        }
    }
    Some((line, column))
}

/// Every place the key at `path` is written in block-style YAML, in order.
fn key_positions<'a>(text: &'a str, path: &str) -> impl Iterator<Item = (usize, usize)> + 'a {
    let wanted: Vec<String> = if path.contains('[') || path.starts_with('(') {
        Vec::new()
    } else {
        path.split('.').map(str::to_owned).collect()
    };
    let mut stack: Vec<(usize, &str)> = Vec::new();
    text.lines().enumerate().filter_map(move |(number, line)| {
        let content = line.trim_start();
        if wanted.is_empty()
            || content.is_empty()
            || content.starts_with('#')
            || content.starts_with('-')
        {
            return None;
        }
        let (key, _) = content.split_once(':')?;
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        let indent = line.len() - content.len();
        while stack.last().is_some_and(|&(i, _)| i >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        (stack.len() == wanted.len()
            && stack
                .iter()
                .map(|&(_, k)| k)
                .eq(wanted.iter().map(String::as_str)))
        .then_some((number + 1, indent + 1))
    })
}

/// serde_yaml_ng's message without the path prefix and position suffix it adds itself, since the
/// error we report carries both in a fixed place.
fn bare_message(err: &serde_yaml_ng::Error) -> String {
    let mut text = err.to_string();
    if let Some(at) = err.location() {
        let suffix = format!(" at line {} column {}", at.line(), at.column());
        if let Some(stripped) = text.strip_suffix(&suffix) {
            text = stripped.to_owned();
        }
    }
    // The prefix is a dotted path followed by ": "; messages themselves never start that way.
    if let Some((prefix, rest)) = text.split_once(": ")
        && !prefix.contains(' ')
        && !prefix.is_empty()
    {
        text = rest.to_owned();
    }
    // Name what YAML expected, not the Rust type behind it.
    match text.find("expected struct ") {
        Some(at) => format!("{}expected a mapping of keys", &text[..at]),
        None => text,
    }
}

/// A byte count, written as plain bytes or with a binary unit: `64MiB`, `4GiB`, `512KiB`, or as
/// nginx writes them, `64m`, `4g`, `512k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text).map(ByteSize).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid size {text:?}: expected bytes or a number with KiB, MiB, GiB or TiB (or k, m, g, t; e.g. 64MiB)"
            ))
        })
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" | "k" => 10,
        "MiB" | "M" | "m" => 20,
        "GiB" | "G" | "g" => 30,
        "TiB" | "T" | "t" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// A duration written with its unit: `500ms`, `5s`, `10m`, `1h`, `1d`; at most 100 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// The longest [`Seconds`]: longer is surely a typo, and some uses cannot hold it (moka refuses
/// a time-to-live over 1000 years; a deadline that far off overflows a clock reading).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(text.trim()).map_err(|_| {
            de::Error::custom(format!(
                "invalid duration {text:?}: expected a number with a unit (e.g. 500ms, 5s, 10m, 1h, 1d)"
            ))
        })?;
        if duration > MAX_DURATION {
            return Err(de::Error::custom(format!(
                "invalid duration {text:?}: at most 100 years"
            )));
        }
        Ok(Seconds(duration))
    }
}

/// A tracing filter directive list, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(pub String);

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        tracing_subscriber::EnvFilter::builder()
            .parse(&text)
            .map(|_| LogFilter(text.clone()))
            .map_err(|e| de::Error::custom(format!("invalid filter {text:?}: {e}")))
    }
}

/// A number between 0 and 1 inclusive, or a percentage (`10%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (text, value) = match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::Number(number) => (number.to_string(), number.as_f64()),
            serde_yaml_ng::Value::String(text) => {
                let percent = (text.trim().strip_suffix('%'))
                    .and_then(|number| number.trim().parse::<f64>().ok())
                    .map(|percent| percent / 100.0);
                (text, percent)
            }
            other => (format!("{other:?}"), None),
        };
        match value {
            Some(value) if (0.0..=1.0).contains(&value) => Ok(Fraction(value)),
            _ => Err(de::Error::custom(format!(
                "invalid fraction {text:?}: expected a number from 0 to 1 (0.1) or a percentage (10%)"
            ))),
        }
    }
}

/// The origin: `http` or `https`, a host, an optional port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl(pub url::Url);

impl<'de> Deserialize<'de> for OriginUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // A password is never echoed, whether the URL parses or not.
        let shown = match text.split_once("://") {
            Some((scheme, rest)) => match rest.split('/').next().and_then(|a| a.rsplit_once('@')) {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => text.clone(),
            },
            None => text.clone(),
        };
        let url = url::Url::parse(text.trim())
            .map_err(|e| de::Error::custom(format!("invalid URL {shown:?}: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            // Not echoed: the text holds a password.
            return Err(de::Error::custom(
                "invalid URL: user:password@ is not taken (edge sends the origin no credentials of its own)",
            ));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(de::Error::custom(format!(
                "invalid URL {text:?}: the scheme must be http or https"
            )));
        }
        if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(de::Error::custom(format!(
                "invalid URL {text:?}: expected scheme://host[:port][/prefix] without query or fragment"
            )));
        }
        // The URL parser takes some characters in a host name (`{`, `}`, `` ` ``) that an HTTP
        // request's target and Host field cannot carry; edge builds both from it.
        let root = &url[..url::Position::AfterPort];
        let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
        if root.parse::<http::Uri>().is_err() || http::HeaderValue::from_str(authority).is_err() {
            return Err(de::Error::custom(format!(
                "invalid URL {text:?}: the host {authority:?} cannot be sent in an HTTP request"
            )));
        }
        Ok(OriginUrl(url))
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_units_and_plain_bytes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("64 Mx"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }

    #[test]
    fn query_parameter_names_are_names_or_stems() {
        let text = "origin:\n  url: http://o\n  strip_query: [utm_*, fbclid]\n  sort_query: true\n";
        let config = Config::parse(text, "t.yaml").unwrap();
        assert_eq!(config.origin.strip_query, ["utm_*", "fbclid"]);
        assert!(config.origin.sort_query);
        for bad in ["\"\"", "\"*\"", "utm_*x", "a=b", "\"a b\""] {
            let text = format!("origin:\n  url: http://o\n  strip_query:\n    - x\n    - {bad}\n");
            let err = Config::parse(&text, "t.yaml").unwrap_err().to_string();
            assert!(
                err.contains("origin.strip_query[1]") && err.contains("t.yaml:5:"),
                "{bad}: {err}"
            );
        }
    }

    /// An address alone is a network of itself (nginx's `allow 10.0.0.1;`): it was refused as
    /// `invalid IP address syntax`.
    #[test]
    fn allow_lists_take_addresses_and_networks() {
        let text = "origin:\n  url: http://o\npurge:\n  allow: [\"10.0.0.1\", \"192.168.0.0/16\", \"::1\"]\n";
        let config = Config::parse(text, "t.yaml").unwrap();
        let ip = |text: &str| text.parse().unwrap();
        assert!(allowed(&config.purge.allow, ip("10.0.0.1")));
        assert!(!allowed(&config.purge.allow, ip("10.0.0.2")));
        assert!(allowed(&config.purge.allow, ip("192.168.4.4")));
        assert!(allowed(&config.purge.allow, ip("::1")));
        let text = "proxy_protocol: [\"10.1.2.3\"]\norigin:\n  url: http://o\n";
        let config = Config::parse(text, "t.yaml").unwrap();
        assert!(allowed(&config.proxy_protocol, ip("10.1.2.3")));
        assert!(!allowed(&config.proxy_protocol, ip("10.1.2.4")));
        let text = "origin:\n  url: http://o\n";
        assert!(
            Config::parse(text, "t.yaml")
                .unwrap()
                .proxy_protocol
                .is_empty()
        );
        let text = "origin:\n  url: http://o\nproxy_protocol:\n  - 10.0.0.1/8\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.contains("proxy_protocol[0]") && err.contains("t.yaml:4:"),
            "{err}"
        );
        let text = "origin:\n  url: http://o\nexplain:\n  allow:\n    - 10.0.0.300\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.contains("explain.allow") && err.contains("\"10.0.0.300\""),
            "{err}"
        );
        // Its items commented out, the key says nothing: not taken for [] (nobody), which the
        // loopback default would not be either.
        let text = "origin:\n  url: http://o\npurge:\n  allow:\n  #  - 10.0.0.0/8\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.contains("purge.allow") && err.contains("t.yaml:4:") && err.contains("[]"),
            "{err}"
        );
        let text = "origin:\n  url: http://o\npurge:\n  allow: []\n";
        assert!(
            Config::parse(text, "t.yaml")
                .unwrap()
                .purge
                .allow
                .is_empty()
        );
    }

    #[test]
    fn fractions_take_numbers_and_percentages() {
        let parse = |value: &str| {
            let text =
                format!("origin:\n  url: http://o\ncache:\n  heuristic:\n    fraction: {value}\n");
            Config::parse(&text, "t.yaml").map(|c| c.cache.heuristic.fraction.0)
        };
        assert_eq!(parse("0.25").unwrap(), 0.25);
        assert_eq!(parse("1").unwrap(), 1.0);
        assert_eq!(parse("10%").unwrap(), 0.1);
        for bad in ["1.5", "150%", "-0.1", "ten", "\"\""] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("t.yaml:5:5: cache.heuristic.fraction: invalid fraction")
                    && !err.contains("f64"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_listen_address_without_an_ip_gets_an_example() {
        for value in ["8080", "localhost:8080", "\"\""] {
            let text = format!("listen: {value}\norigin:\n  url: http://o\n");
            let err = Config::parse(&text, "t.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with("t.yaml:1:1: listen: invalid address")
                    && err.contains("0.0.0.0:8080"),
                "{err}"
            );
        }
        let text =
            "listen: \"[::1]:8080\"\norigin:\n  url: http://o\nadmin:\n  listen: 127.0.0.1:1\n";
        let config = Config::parse(text, "t.yaml").unwrap();
        assert_eq!(config.listen, "[::1]:8080".parse().unwrap());
        assert_eq!(config.admin.listen, "127.0.0.1:1".parse().unwrap());
    }

    /// `0s` turns the client limits off; the origin's would leave it no time at all (every
    /// request was a 504 after `edge check` had passed the file).
    #[test]
    fn origin_timeouts_of_zero_are_refused() {
        for key in ["timeout", "connect_timeout"] {
            let text = format!("origin:\n  url: http://o\n  {key}: 0s\n");
            let err = Config::parse(&text, "t.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("t.yaml:3:3: origin.{key}: "))
                    && err.contains("more than 0s"),
                "{err}"
            );
        }
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = Config::parse("origin:\n  url: http://127.0.0.1:9000\n", "t.yaml").unwrap();
        assert_eq!(config.listen, defaults::listen());
        assert_eq!(config.cache.max_object_size, ByteSize(64 << 20));
        assert_eq!(config.origin.timeout.0, Duration::from_secs(30));
        assert_eq!(config.origin.max_connections, 1024);
        assert_eq!(config.client_max_body_size, ByteSize(0), "no limit");
    }

    #[test]
    fn client_max_body_size_is_a_size() {
        let text = "origin:\n  url: http://o\nclient_max_body_size: 10m\n";
        let config = Config::parse(text, "t.yaml").unwrap();
        assert_eq!(config.client_max_body_size, ByteSize(10 << 20));
        let text = "origin:\n  url: http://o\nclient_max_body_size: -1\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.yaml:3:") && err.contains("client_max_body_size: invalid size"),
            "{err}"
        );
    }

    #[test]
    fn errors_for_values_edge_checks_name_the_key_line() {
        let text = "origin:\n  url: http://o\nlog:\n  access: true\n  format: human\n  filter: \"edge=nope\"\nshutdown_timeout: soon\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.yaml:6:3: log.filter: invalid filter"),
            "{err}"
        );
        let text = "origin:\n  url: http://o\nshutdown_timeout: soon\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.yaml:3:1: shutdown_timeout: invalid duration"),
            "{err}"
        );
        assert_eq!(locate_key("a:\n  b: 1\nc:\n  b: 2\n", "c.b"), Some((4, 3)));
        assert_eq!(locate_key("a: {b: 1}\n", "a.b"), None);
    }

    /// The certificate and key files are read with the configuration: one missing, one that
    /// holds no certificate or no key, or a key that is not the certificate's, is an error that
    /// names the key and its line.
    #[test]
    fn tls_files_are_read_and_checked_with_the_configuration() {
        let dir = tempfile::TempDir::new().unwrap();
        let write = |name: &str| {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let (certificate, key) = (
                dir.path().join(format!("{name}.crt")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&certificate, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
            (certificate.display().to_string(), key.display().to_string())
        };
        let (a_crt, a_key) = write("a");
        let (_, b_key) = write("b");
        let parse = |certificate: &str, key: &str| {
            let text = format!(
                "origin:\n  url: http://o\ntls:\n  listen: 127.0.0.1:8443\n  certificate: {certificate}\n  key: {key}\n"
            );
            Config::parse(&text, "t.yaml")
        };
        let tls = parse(&a_crt, &a_key).unwrap().tls.unwrap();
        assert_eq!(tls.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(tls.certificate.0.len(), 1);
        assert!(tls.certified().keys_match().is_ok());
        assert!(
            Config::parse("origin:\n  url: http://o\n", "t.yaml")
                .unwrap()
                .tls
                .is_none()
        );

        let error = |certificate: &str, key: &str| parse(certificate, key).unwrap_err().to_string();
        let missing = dir.path().join("missing.crt").display().to_string();
        let err = error(&missing, &a_key);
        assert!(
            err.starts_with("t.yaml:5:3: tls.certificate: cannot read"),
            "{err}"
        );
        let err = error(&a_crt, &missing);
        assert!(err.starts_with("t.yaml:6:3: tls.key: cannot read"), "{err}");
        let err = error(&a_key, &a_key);
        assert!(
            err.starts_with("t.yaml:5:3: tls.certificate: ")
                && err.contains("holds no certificate"),
            "{err}"
        );
        let err = error(&a_crt, &a_crt);
        assert!(
            err.starts_with("t.yaml:6:3: tls.key: ") && err.contains("holds no private key"),
            "{err}"
        );
        let err = error(&a_crt, &b_key);
        assert!(
            err.starts_with("t.yaml:6:3: tls.key: not the key of tls.certificate"),
            "{err}"
        );
        // An encrypted key (openssl's `-----BEGIN ENCRYPTED PRIVATE KEY-----`) is named as such.
        let encrypted = dir.path().join("encrypted.key");
        let body = "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI";
        let pem = format!(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\n"
        );
        std::fs::write(&encrypted, pem).unwrap();
        let err = error(&a_crt, &encrypted.display().to_string());
        assert!(
            err.starts_with("t.yaml:6:3: tls.key: ")
                && err.contains("holds an encrypted private key"),
            "{err}"
        );

        let text = format!(
            "listen: 0.0.0.0:8443\norigin:\n  url: http://o\ntls:\n  listen: 127.0.0.1:8443\n  certificate: {a_crt}\n  key: {a_key}\n"
        );
        let err = Config::parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:5:3: tls.listen: "), "{err}");
        let text =
            format!("origin:\n  url: http://o\ntls:\n  certificate: {a_crt}\n  key: {a_key}\n");
        let err = Config::parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(err.contains("tls: missing field `listen`"), "{err}");
    }

    #[test]
    fn errors_name_the_full_key_and_line() {
        let text = "origin:\n  url: http://o\ncache:\n  memory:\n    capacity: lots\n";
        let err = Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:5:"), "{err}");
        assert!(
            err.contains("cache.memory.capacity: invalid size \"lots\""),
            "{err}"
        );
    }
}
