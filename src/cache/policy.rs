//! The RFC 9111 rules of a shared cache, in one place: which responses may be stored (§3), how long
//! they stay fresh (§4.2.1, §4.2.2), how old they are (§4.2.3), and whether a request may be
//! answered with a stored response (§4, §5.2.1).
//!
//! Every function takes `now` (or the times it needs) as an argument; nothing here reads a clock.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use crate::cache::key::Variance;
use crate::config::HeuristicConfig;

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent is taken as 2^31.
const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// `Surrogate-Control` (Edge Architecture Specification 1.0): directives for surrogates such as
/// edge, which consume it; it is never forwarded.
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// `CDN-Cache-Control` (RFC 9213 §3): directives for every CDN on the path; forwarded as it is.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Parsed `Cache-Control` directives (RFC 9111 §5.2), names lowercased, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    directives: Vec<(String, Option<String>)>,
    /// The directives came from a targeted field, so `Expires` is ignored (RFC 9213 §2.2).
    targeted: bool,
}

impl CacheControl {
    /// The directives that govern how edge caches a response: those of the first targeted field
    /// edge recognises that is present, valid and not empty — `Surrogate-Control`, then
    /// `CDN-Cache-Control` — otherwise `Cache-Control` (RFC 9213 §2.2).
    pub fn governing(response: &HeaderMap) -> Self {
        // Targeted fields are rare: look for them by name before hashing them.
        let targeted = [&SURROGATE_CONTROL, &CDN_CACHE_CONTROL];
        if !response.keys().any(|name| targeted.contains(&name)) {
            return Self::of(response);
        }
        // Surrogate-Control predates structured fields and has Cache-Control's syntax.
        let surrogate = Some(Self::from_field(response, &SURROGATE_CONTROL));
        for field in [surrogate, Self::from_targeted(response, &CDN_CACHE_CONTROL)] {
            if let Some(mut targeted) = field.filter(|field| !field.is_empty()) {
                targeted.targeted = true;
                return targeted;
            }
        }
        Self::of(response)
    }

    /// Parses a targeted field (RFC 9213 §2.1): a Structured Field Dictionary (RFC 9651), all its
    /// lines as one. `None` if it does not parse, or if a directive that takes delta-seconds has
    /// anything but a non-negative Integer (`max-age="60"`, `max-age=1.5`): such a field is
    /// ignored rather than half understood, as §2.1 asks, and the next field governs.
    fn from_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut text = String::new();
        for value in headers.get_all(name) {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(value.to_str().ok()?);
        }
        let dictionary: sfv::Dictionary = sfv::Parser::new(&text).parse().ok()?;
        let mut directives = Vec::with_capacity(dictionary.len());
        for (key, member) in &dictionary {
            let key = key.as_str();
            let delta_seconds = matches!(member, sfv::ListEntry::Item(item)
                if matches!(item.bare_item, sfv::BareItem::Integer(n) if i64::from(n) >= 0));
            if DELTA_SECONDS_DIRECTIVES.contains(&key) && !delta_seconds {
                return None;
            }
            let value = match member {
                sfv::ListEntry::Item(item) => match &item.bare_item {
                    sfv::BareItem::Integer(n) => Some(n.to_string()),
                    sfv::BareItem::Boolean(true) => None,
                    sfv::BareItem::Boolean(false) => continue,
                    sfv::BareItem::String(text) => Some(text.as_str().to_owned()),
                    sfv::BareItem::Token(token) => Some(token.as_str().to_owned()),
                    // No directive edge knows takes any other type.
                    _ => Some(String::new()),
                },
                sfv::ListEntry::InnerList(_) => Some(String::new()),
            };
            directives.push((key.to_owned(), value));
        }
        Some(Self {
            directives,
            targeted: false,
        })
    }

    /// Parses every `Cache-Control` line of `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        Self::from_field(headers, &header::CACHE_CONTROL)
    }

    /// A request's directives as edge heeds them when it looks for a stored response to use:
    /// without `no-cache`, `max-age` and `min-fresh` if `refresh` says to ignore them.
    pub fn of_request(headers: &HeaderMap, refresh: crate::config::ClientRefresh) -> Self {
        let mut cc = Self::of(headers);
        if refresh == crate::config::ClientRefresh::Ignore {
            (cc.directives)
                .retain(|(name, _)| !matches!(&**name, "no-cache" | "max-age" | "min-fresh"));
        }
        cc
    }

    /// Parses every line of the field `name`, with `Cache-Control` syntax.
    pub fn from_field(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut directives = Vec::new();
        for value in headers.get_all(name) {
            // A quoted argument may hold bytes outside ASCII (obs-text, RFC 9110 §5.6.4): the
            // line is read whole all the same, or a `private` or `no-store` beside such an
            // argument would go unseen.
            match value.to_str() {
                Ok(text) => parse_directives(text, &mut directives),
                Err(_) => {
                    parse_directives(&String::from_utf8_lossy(value.as_bytes()), &mut directives)
                }
            }
        }
        Self {
            directives,
            targeted: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.directives.is_empty()
    }

    /// Whether the directive is present, with or without an argument.
    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|(n, _)| n == name)
    }

    /// The argument of the first occurrence of `name`: `None` if absent, `Some(None)` without one.
    pub fn argument(&self, name: &str) -> Option<Option<&str>> {
        self.directives
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// A delta-seconds directive (`max-age=60`): `None` if absent, `Some(None)` if its argument is
    /// not a valid delta-seconds (RFC 9111 §1.2.2). The first occurrence wins (§4.2.1).
    pub fn seconds(&self, name: &str) -> Option<Option<u64>> {
        self.argument(name)
            .map(|arg| arg.and_then(parse_delta_seconds))
    }
}

/// The response directives whose argument is delta-seconds (RFC 9111 §5.2.2, RFC 5861).
const DELTA_SECONDS_DIRECTIVES: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Splits a Cache-Control field value into directives, honouring quoted strings (which may hold
/// commas and `\` escapes, RFC 9110 §5.6.4).
fn parse_directives(text: &str, out: &mut Vec<(String, Option<String>)>) {
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return;
        }
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = rest[..name_end].trim().to_ascii_lowercase();
        rest = &rest[name_end..];
        let mut value = None;
        if let Some(after_eq) = rest.strip_prefix('=') {
            let after_eq = after_eq.trim_start();
            if let Some(quoted) = after_eq.strip_prefix('"') {
                let mut unquoted = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                unquoted.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => unquoted.push(c),
                    }
                }
                value = Some(unquoted);
                rest = &quoted[end.min(quoted.len())..];
                // Skip anything between the closing quote and the next comma.
                rest = &rest[rest.find(',').unwrap_or(rest.len())..];
            } else {
                let end = after_eq.find(',').unwrap_or(after_eq.len());
                value = Some(after_eq[..end].trim().to_owned());
                rest = &after_eq[end..];
            }
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
}

/// RFC 9111 §1.2.2: one or more digits; anything else is invalid.
fn parse_delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX)),
    )
}

/// Parses an HTTP-date in any of the three formats of RFC 9110 §5.6.7.
pub fn parse_http_date(value: Option<&http::HeaderValue>) -> Option<SystemTime> {
    http_date(value?.to_str().ok()?)
}

/// An HTTP-date in any of the three formats of RFC 9110 §5.6.7, whatever day of the week it
/// names: the day name adds nothing to the date, and nginx, for one, does not check it (httpdate
/// does, and refused `Mon, 01 Dec 2026 …`, a Tuesday, so that such a `Last-Modified` was no
/// validator, and such an `Expires` expired).
pub fn http_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(date) = httpdate::parse_http_date(text) {
        return Some(date);
    }
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    // The day name is the first word, three letters in IMF-fixdate and asctime, whole in
    // rfc850-date; put each day in its place, the one that is the date's parses.
    let (named, rest) = text.split_at(text.find([',', ' '])?);
    let long = named.len() > 3;
    if !DAYS.iter().any(|day| {
        let day = if long { day } else { &day[..3] };
        day == named
    }) {
        return None;
    }
    DAYS.iter().find_map(|day| {
        let day = if long { day } else { &day[..3] };
        httpdate::parse_http_date(&format!("{day}{rest}")).ok()
    })
}

/// Why a response was not stored; rendered as the `detail` of `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The request method is not one a cache stores (only GET here).
    Method,
    /// `no-store` in the response (RFC 9111 §5.2.2.5).
    NoStore,
    /// `no-store` in the request (RFC 9111 §5.2.1.5).
    RequestNoStore,
    /// `private` in the response: a shared cache must not store it (§5.2.2.7).
    Private,
    /// The request carried `Authorization` and the response did not allow sharing it (§3.5).
    Authorization,
    /// The response sets a cookie; edge never hands one client's cookie to another.
    SetCookie,
    /// `Proxy-Authenticate` or `Proxy-Authentication-Info`: fields for the proxy edge forwards
    /// through, which a cache must not store (§3.1).
    ProxyAuthenticate,
    /// A status that may not be stored (1xx, 206, 304), or one without explicit freshness that is
    /// not heuristically cacheable (§3, RFC 9110 §15.1).
    Status,
    /// `Vary: *` can never be matched (§4.1).
    VaryStar,
    /// `Vary` names `X-Forwarded-For`: the origin chose by the client's address, which edge adds
    /// to the field itself, so the client's own value (none, for most) would select it for other
    /// clients.
    VaryClient,
    /// Neither fresh for any time nor revalidatable: storing it would serve nobody.
    NoFreshness,
    /// Fresh only by `cache.heuristic.default_ttl`, and the request carried `Cookie`: the origin
    /// said nothing of caching a response that may be that client's own.
    Cookie,
    /// The body is larger than `cache.max_object_size`.
    TooLarge,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::NoStore | NotStored::RequestNoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::Cookie => "cookie",
            NotStored::ProxyAuthenticate => "proxy-authenticate",
            NotStored::Status => "status",
            NotStored::VaryStar => "vary-star",
            NotStored::VaryClient => "vary-client",
            NotStored::NoFreshness => "no-freshness",
            NotStored::TooLarge => "too-large",
        }
    }
}

/// An answer that says the origin is failing (RFC 5861 §4's errors) or shedding load (429, RFC
/// 6585 §4), not what the resource is.
pub fn origin_failing(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// RFC 9110 §15.1: status codes that are heuristically cacheable.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose semantics edge implements, for `must-understand` (RFC 9111 §5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 410
            | 414
            | 451
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

/// RFC 9111 §3: may a shared cache store this response to this request? `authorized`: the request
/// carried `Authorization`.
pub fn check_storable(
    method: &Method,
    authorized: bool,
    request_cc: &CacheControl,
    status: StatusCode,
    response: &HeaderMap,
    response_cc: &CacheControl,
) -> Result<(), NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    // The status must be final; 206 and 304 are not understood as whole representations here, and
    // codes above 599 are not defined (RFC 9110 §15).
    if status.is_informational() || matches!(status.as_u16(), 206 | 304 | 600..) {
        return Err(NotStored::Status);
    }
    // §5.2.2.3: a cache that understands the status code ignores no-store under must-understand.
    if response_cc.has("must-understand") {
        if !understood(status) {
            return Err(NotStored::Status);
        }
    } else if response_cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    if request_cc.has("no-store") {
        return Err(NotStored::RequestNoStore);
    }
    if response_cc.has("private") {
        return Err(NotStored::Private);
    }
    // §3.5: only these directives let a shared cache store an answer to an authenticated request.
    if authorized
        && !(response_cc.has("public")
            || response_cc.has("s-maxage")
            || response_cc.has("must-revalidate"))
    {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    // They are for the client of the proxy that sent them, which is edge; stored without them, a
    // 407 would be one that asks for nothing.
    if response.contains_key(header::PROXY_AUTHENTICATE)
        || response.contains_key("proxy-authentication-info")
    {
        return Err(NotStored::ProxyAuthenticate);
    }
    match Variance::names(response) {
        None => return Err(NotStored::VaryStar),
        Some(names) if names.iter().any(|n| n == "x-forwarded-for") => {
            return Err(NotStored::VaryClient);
        }
        Some(_) => {}
    }
    let explicit = (response.contains_key(header::EXPIRES) && !response_cc.targeted)
        || response_cc.has("max-age")
        || response_cc.has("s-maxage")
        || response_cc.has("public");
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStored::Status);
    }
    Ok(())
}

/// Where a freshness lifetime came from, in RFC 9111 §4.2.1's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    SMaxAge,
    MaxAge,
    Expires,
    Heuristic,
    /// The operator's `cache.heuristic.negative_ttl`, for a 404 or 410.
    Negative,
    /// The operator's `cache.heuristic.default_ttl`: no explicit expiration, no `Last-Modified`.
    Default,
    /// No explicit expiration and no heuristic applies: stale from the start.
    None,
    /// A soft purge made it stale.
    Purged,
}

/// What a stored response says about its own freshness, computed once when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub source: LifetimeSource,
    /// §4.2.3 `corrected_initial_age`.
    pub initial_age: Duration,
    /// When the response was received (§4.2.3 `response_time`).
    pub response_time: SystemTime,
    /// Unqualified or qualified `no-cache`: never used without validation (§5.2.2.4). Edge treats
    /// the qualified form like the unqualified one, as §5.2.2.4 notes most caches do.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: a stale copy is never served, whatever
    /// the request's `max-stale` says (§5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub forbids_stale: bool,
    /// `must-revalidate` or `proxy-revalidate` alone: not even the origin's own
    /// `stale-while-revalidate` / `stale-if-error`, nor the operator's stale-on-error, serve it stale.
    pub must_revalidate: bool,
    /// RFC 5861 §3 `stale-while-revalidate` window.
    pub stale_while_revalidate: Option<Duration>,
    /// RFC 5861 §4 `stale-if-error` window.
    pub stale_if_error: Option<Duration>,
}

impl Freshness {
    /// Computes the lifetime and initial age of a response received between `request_time` and
    /// `response_time`.
    pub fn of(
        status: StatusCode,
        response: &HeaderMap,
        response_cc: &CacheControl,
        request_time: SystemTime,
        response_time: SystemTime,
        heuristic: &HeuristicConfig,
    ) -> Self {
        let date = parse_http_date(response.get(header::DATE)).unwrap_or(response_time);
        let (lifetime, source) = lifetime(status, response, response_cc, date, heuristic);
        Self {
            lifetime,
            source,
            initial_age: initial_age(response, date, request_time, response_time),
            response_time,
            no_cache: response_cc.has("no-cache"),
            forbids_stale: response_cc.has("must-revalidate")
                || response_cc.has("proxy-revalidate")
                || response_cc.has("s-maxage"),
            must_revalidate: response_cc.has("must-revalidate")
                || response_cc.has("proxy-revalidate"),
            stale_while_revalidate: window(response_cc, "stale-while-revalidate"),
            stale_if_error: window(response_cc, "stale-if-error"),
        }
    }

    /// How long ago the response became stale; zero while it is fresh.
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.current_age(now).saturating_sub(self.lifetime)
    }

    /// RFC 5861 §3: may this stale response be served while it is revalidated in the background?
    /// Never when the response demands validation, and never for a request that asked for
    /// something fresher than the stored copy (`no-cache`, `max-age`, `min-fresh`).
    ///
    /// The explicit permission wins over the proxy-revalidate semantics that `s-maxage` implies
    /// (§5.2.2.10): `s-maxage=60, stale-while-revalidate=30` is how origins ask CDNs for exactly
    /// this.
    pub fn may_serve_while_revalidating(&self, request_cc: &CacheControl, now: SystemTime) -> bool {
        let asks_fresher =
            request_cc.has("no-cache") || request_cc.has("max-age") || request_cc.has("min-fresh");
        !self.no_cache
            && !self.must_revalidate
            && !asks_fresher
            && self
                .stale_while_revalidate
                .is_some_and(|window| self.staleness(now) <= window)
    }

    /// RFC 5861 §4: may this stale response be served because the origin failed? Never for
    /// `no-cache`, `must-revalidate` or `proxy-revalidate` responses (RFC 9111 §4.2.4). Within
    /// that, the response's own `stale-if-error` window applies "regardless of other freshness
    /// information"; the request's window (RFC 5861 §4 defines it for requests too) and the
    /// operator's `cache.stale_if_error` are no permission from the origin, so they also yield to
    /// the proxy-revalidate semantics of `s-maxage` (§5.2.2.10).
    pub fn may_serve_on_error(
        &self,
        request_cc: &CacheControl,
        operator: Duration,
        now: SystemTime,
    ) -> bool {
        if self.no_cache || self.must_revalidate {
            return false;
        }
        let granted = self.stale_if_error.unwrap_or_default();
        let asked = if self.forbids_stale || self.never_fresh() {
            Duration::ZERO
        } else {
            window(request_cc, "stale-if-error")
                .unwrap_or_default()
                .max(operator)
        };
        let allowed = granted.max(asked);
        !allowed.is_zero() && self.staleness(now) <= allowed
    }

    /// Whether the response had no freshness lifetime at all (no explicit one, `max-age=0`, an
    /// `Expires` not after its `Date`, and no heuristic): stored only for its validator, to ask
    /// the origin with. It answered the cookies and credentials of the request it was fetched
    /// for, so only the origin's own `stale-while-revalidate` / `stale-if-error` serve it stale,
    /// never a client's `max-stale` or request `stale-if-error` nor the operator's
    /// `cache.stale_if_error` (RFC 9111 allows them; nginx and Varnish would not have stored it).
    pub fn never_fresh(&self) -> bool {
        self.lifetime.is_zero() && self.source != LifetimeSource::Purged
    }

    /// Makes the response stale from `at` on, if it would be fresh longer (a soft purge): its
    /// next use revalidates it, and its stale-while-revalidate / stale-if-error windows count
    /// from `at`.
    pub fn expire(&mut self, at: SystemTime) {
        self.lifetime = self.lifetime.min(self.current_age(at));
        self.source = LifetimeSource::Purged;
    }

    /// §4.2.3 `current_age`.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let resident = now.duration_since(self.response_time).unwrap_or_default();
        self.initial_age + resident
    }

    /// Remaining freshness in whole seconds; negative once stale (RFC 9211 `ttl`).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        secs_i64(self.lifetime) - secs_i64(self.current_age(now))
    }

    /// Whether the response may be stored at all: some freshness, or a validator to revalidate
    /// with.
    pub fn worth_storing(&self, response: &HeaderMap) -> bool {
        !self.lifetime.is_zero() || has_validator(response)
    }
}

/// Whether `response` can be revalidated: it has an `ETag`, or a `Last-Modified` that is an
/// HTTP-date (RFC 9110 §8.8.2). Any other `Last-Modified` is no validator: an origin must ignore
/// it sent back as `If-Modified-Since` (§13.1.3), so every use would fetch the whole response.
pub fn has_validator(response: &HeaderMap) -> bool {
    response.contains_key(header::ETAG)
        || parse_http_date(response.get(header::LAST_MODIFIED)).is_some()
}

/// A delta-seconds directive as a window; invalid arguments count as absent.
fn window(cc: &CacheControl, name: &str) -> Option<Duration> {
    cc.seconds(name).flatten().map(Duration::from_secs)
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// RFC 9111 §4.2.1 and §4.2.2.
fn lifetime(
    status: StatusCode,
    response: &HeaderMap,
    cc: &CacheControl,
    date: SystemTime,
    heuristic: &HeuristicConfig,
) -> (Duration, LifetimeSource) {
    // An invalid argument makes the response stale rather than falling through to a weaker rule.
    if let Some(s_maxage) = cc.seconds("s-maxage") {
        return (
            Duration::from_secs(s_maxage.unwrap_or(0)),
            LifetimeSource::SMaxAge,
        );
    }
    if let Some(max_age) = cc.seconds("max-age") {
        return (
            Duration::from_secs(max_age.unwrap_or(0)),
            LifetimeSource::MaxAge,
        );
    }
    if let Some(expires) = response.get(header::EXPIRES).filter(|_| !cc.targeted) {
        // §5.3: an invalid Expires, such as "0", means already expired.
        let lifetime = parse_http_date(Some(expires))
            .and_then(|expires| expires.duration_since(date).ok())
            .unwrap_or_default();
        return (lifetime, LifetimeSource::Expires);
    }
    // §4.2.2: heuristics only where the status allows it, or `public` marks it cacheable.
    // The operator's default lifetime for "not found" answers (nginx's proxy_cache_valid 404).
    if matches!(status.as_u16(), 404 | 410) && !heuristic.negative_ttl.0.is_zero() {
        return (heuristic.negative_ttl.0, LifetimeSource::Negative);
    }
    // Not for an answer that says the origin is failing or shedding load (429, 500, 502, 503,
    // 504), which `public` alone, added by some servers to every answer, would keep for up to
    // `heuristic.max` after the origin recovered (as for the operator's default below).
    if (heuristically_cacheable(status) || (cc.has("public") && !origin_failing(status)))
        && let Some(last_modified) = parse_http_date(response.get(header::LAST_MODIFIED))
        && let Ok(since_modified) = date.duration_since(last_modified)
    {
        let lifetime = since_modified
            .mul_f64(heuristic.fraction.0)
            .min(heuristic.max.0);
        let whole_seconds = Duration::from_secs(lifetime.as_secs());
        return (whole_seconds, LifetimeSource::Heuristic);
    }
    // The operator's default (nginx's proxy_cache_valid, Varnish's default_ttl), still a
    // heuristic to RFC 9111 §4.2.2, so only where one is allowed; and only for a response without
    // a validator. One with a validator and no freshness is stored to be revalidated on every use,
    // perhaps from a request with cookies: freshness is worked out again when a record is read
    // from disk, and the default would make such a stored page fresh for everyone.
    // Nor for an answer that says the origin is failing or shedding load (as a fill takes a 429,
    // 500, 502, 503 or 504), not what the resource is: `public` alone, which some servers add to
    // every answer, would have one error served to everyone for `default_ttl`.
    if (heuristically_cacheable(status) || cc.has("public"))
        && !origin_failing(status)
        && !heuristic.default_ttl.0.is_zero()
        && !has_validator(response)
    {
        return (heuristic.default_ttl.0, LifetimeSource::Default);
    }
    (Duration::ZERO, LifetimeSource::None)
}

/// RFC 9111 §4.2.3 `corrected_initial_age`.
fn initial_age(
    response: &HeaderMap,
    date: SystemTime,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    // §5.1: of a list (`Age: 7200, 0`), the first member.
    let age_value = response
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_delta_seconds(v.split(',').next()?.trim()))
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent_age = response_time.duration_since(date).unwrap_or_default();
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent_age.max(age_value + response_delay)
}

/// Why a stored response could not be used and the request went to the origin; rendered as the
/// `fwd` parameter of `Cache-Status` (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The request method's semantics require it to go to the origin (a method edge does not
    /// cache).
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// Something stored for the URI, but not for these `Vary` request headers.
    VaryMiss,
    /// The stored response is stale (or must be validated).
    Stale,
    /// The stored response is fresh, but the request's directives rule it out.
    Request,
}

impl Forward {
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
        }
    }
}

/// RFC 9111 §4 and §5.2.1: may this request be answered with the stored response now?
/// `Ok(ttl)` to use it (a negative ttl means stale, allowed by `max-stale`), `Err` to go forward.
pub fn decide(
    stored: &Freshness,
    request_cc: &CacheControl,
    now: SystemTime,
) -> Result<i64, Forward> {
    let age = stored.current_age(now);
    let fresh = stored.lifetime > age && !stored.no_cache;
    let refused = if fresh {
        Forward::Request
    } else {
        Forward::Stale
    };
    // §5.2.1.4; request Pragma is deliberately ignored (§5.4 deprecates it).
    if request_cc.has("no-cache") {
        return Err(refused);
    }
    // §5.2.1.1: an invalid argument is ignored, as an unknown directive would be.
    if let Some(Some(max_age)) = request_cc.seconds("max-age")
        && age > Duration::from_secs(max_age)
    {
        return Err(refused);
    }
    let ttl = stored.ttl(now);
    // §5.2.1.3
    if let Some(Some(min_fresh)) = request_cc.seconds("min-fresh")
        && ttl < i64::try_from(min_fresh).unwrap_or(i64::MAX)
    {
        return Err(refused);
    }
    if fresh {
        return Ok(ttl);
    }
    // §5.2.1.2 and §4.2.4: max-stale never revives what the response forbids serving stale, nor
    // (edge's choice) what was never fresh.
    if stored.no_cache || stored.forbids_stale || stored.never_fresh() {
        return Err(Forward::Stale);
    }
    match request_cc.argument("max-stale") {
        Some(None) => Ok(ttl),
        Some(Some(arg)) => match parse_delta_seconds(arg) {
            Some(max_stale) if -ttl <= i64::try_from(max_stale).unwrap_or(i64::MAX) => Ok(ttl),
            _ => Err(Forward::Stale),
        },
        None => Err(Forward::Stale),
    }
}

/// RFC 9111 §4.3.4: does a 304 select the stored response? A validator the 304 carries must be
/// the stored one: a strong entity-tag only the same strong tag, a weak one by weak comparison
/// (§8.8.3.2 of RFC 9110); a 304 that carries no validator is taken to answer the conditional
/// request edge sent. A 304 whose `Vary` names other fields does not: the stored response would
/// be chosen by fields it no longer varies on (§4.1), and edge holds only the values of the old
/// ones.
pub fn not_modified_matches(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn tag(h: &HeaderMap) -> Option<&str> {
        h.get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }
    let validator = match (tag(stored), tag(not_modified)) {
        (old, Some(new)) => old.is_some_and(|old| match new.strip_prefix("W/") {
            Some(weak) => old.trim_start_matches("W/") == weak,
            None => old == new,
        }),
        (_, None) => match not_modified.get(header::LAST_MODIFIED) {
            Some(new) => stored.get(header::LAST_MODIFIED) == Some(new),
            None => true,
        },
    };
    validator
        && (!not_modified.contains_key(header::VARY)
            || Variance::names(not_modified) == Variance::names(stored))
}

/// RFC 9111 §3.2: the stored header section updated with a 304's fields. Each field the 304
/// carries replaces the stored one, except `Content-Length` (the stored body is what is served)
/// and the fields describing the body's encoding or range.
pub fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    const KEEP: [HeaderName; 4] = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
    ];
    let mut headers = stored.clone();
    for name in not_modified.keys() {
        if KEEP.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A date is read whatever day of the week it names, in each of the three formats; a day
    /// name that is none is not.
    #[test]
    fn a_date_naming_the_wrong_weekday_is_read_all_the_same() {
        let tuesday = http_date("Tue, 01 Dec 2026 10:00:00 GMT").unwrap();
        for text in [
            "Mon, 01 Dec 2026 10:00:00 GMT",
            "Sunday, 01-Dec-26 10:00:00 GMT",
            "Fri Dec  1 10:00:00 2026",
            " Wed, 01 Dec 2026 10:00:00 GMT ",
        ] {
            assert_eq!(http_date(text), Some(tuesday), "{text}");
        }
        for text in [
            "Xyz, 01 Dec 2026 10:00:00 GMT",
            "mon, 01 Dec 2026 10:00:00 GMT",
            "garbage",
            "",
        ] {
            assert_eq!(http_date(text), None, "{text}");
        }
    }
    use http::HeaderValue;

    fn cc(text: &str) -> CacheControl {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(text).unwrap());
        CacheControl::of(&headers)
    }

    #[test]
    fn parses_directives_with_quoted_commas() {
        let parsed = cc(r#"private="set-cookie, x-a", Max-Age=60 , no-transform"#);
        assert_eq!(parsed.argument("private"), Some(Some("set-cookie, x-a")));
        assert_eq!(parsed.seconds("max-age"), Some(Some(60)));
        assert!(parsed.has("no-transform"));
    }

    #[test]
    fn delta_seconds_are_digits_and_overflow_to_two_to_the_31() {
        assert_eq!(cc("max-age=abc").seconds("max-age"), Some(None));
        assert_eq!(cc("max-age=-1").seconds("max-age"), Some(None));
        assert_eq!(cc("max-age=\"30\"").seconds("max-age"), Some(Some(30)));
        assert_eq!(
            cc("max-age=99999999999999999999").seconds("max-age"),
            Some(Some(DELTA_SECONDS_MAX))
        );
        assert_eq!(
            cc("max-age=5, max-age=10").seconds("max-age"),
            Some(Some(5))
        );
    }

    #[test]
    fn age_takes_the_larger_of_apparent_and_corrected_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::DATE,
            HeaderValue::from_str(&httpdate::fmt_http_date(t0)).unwrap(),
        );
        headers.insert(header::AGE, HeaderValue::from_static("10"));
        // Sent at t0, received 3 s later: apparent age 3, corrected age 10 + 3.
        let age = initial_age(&headers, t0, t0, t0 + Duration::from_secs(3));
        assert_eq!(age, Duration::from_secs(13));
    }

    #[test]
    fn a_strong_tag_in_a_304_selects_only_the_same_strong_tag() {
        let etag = |tag| HeaderMap::from_iter([(header::ETAG, HeaderValue::from_static(tag))]);
        let matches =
            |stored, not_modified| not_modified_matches(&etag(stored), &etag(not_modified));
        assert!(matches("\"v1\"", "\"v1\""));
        assert!(!matches("W/\"v1\"", "\"v1\""));
        assert!(matches("W/\"v1\"", "W/\"v1\""));
        assert!(matches("\"v1\"", "W/\"v1\""));
        assert!(!matches("\"v1\"", "W/\"v2\""));
    }
}
