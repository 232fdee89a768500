//! Prometheus metrics, served by the admin listener at `GET /metrics` (prometheus-client's text
//! format). Counters are updated as requests go; the cache's sizes and its own counters are read
//! at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::cache::{Cache, Tier};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheStatusLabel {
    cache_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// `1xx` … `5xx`; for the origin's, `error` when no response came.
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabel {
    /// `url`, `tag`, `prefix` or `all`.
    by: &'static str,
    /// `hard` (deleted) or `soft` (marked stale).
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisconnectLabel {
    reason: &'static str,
}

/// Why edge closed a client connection, as `edge_client_disconnects_total` labels it.
#[derive(Clone, Copy, Debug)]
pub enum Disconnect {
    /// A keep-alive connection with nothing pending, or one that never sent a byte, for
    /// `client_header_timeout`.
    Idle,
    /// Its first bytes or a request head begun but not complete within `client_header_timeout`
    /// (slowloris).
    SlowHead,
    /// A response it took none of for `send_timeout` (slow read); on HTTP/2, the stream is reset
    /// and the connection goes on.
    SlowRead,
}

const DISCONNECTS: [&str; 3] = ["idle", "slow_head", "slow_read"];

/// What the client listeners' connections (listen and tls.listen) count.
#[derive(Clone, Default)]
pub struct ClientMetrics {
    connections: Gauge,
    disconnects: [Counter; DISCONNECTS.len()],
}

impl ClientMetrics {
    pub fn opened(&self) {
        self.connections.inc();
    }

    pub fn closed(&self) {
        self.connections.dec();
    }

    /// Client connections open now.
    pub fn open(&self) -> i64 {
        self.connections.get()
    }

    pub fn disconnected(&self, why: Disconnect) {
        self.disconnects[why as usize].inc();
    }
}

/// Every `cache_status` label [`crate::headers::CacheStatus::label`] gives.
const CACHE_STATUSES: [&str; 10] = [
    "hit",
    "stale",
    "revalidated",
    "miss",
    "pass",
    "bypass",
    "purge",
    "local",
    "error",
    "abandoned",
];

/// From 100 µs (a memory hit on a LAN is ~0.1 ms) to 13 s, doubling.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Origin status classes, by `status / 100`; `error` when no response came.
const ORIGIN_STATUSES: [&str; 6] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Which request-duration histogram (by `cache_status`) a request's time goes to, as
/// [`Metrics::request`] counted it.
#[derive(Clone, Copy)]
pub struct Timing(Option<usize>);

pub struct Metrics {
    registry: Registry,
    /// `process_*`, unprefixed.
    process: Registry,
    /// The counters of each label, made up front: a request does not look its label set up in
    /// the family's map (a SipHash and a lock per counter).
    requests: [Counter; CACHE_STATUSES.len()],
    /// By status class: `responses[0]` is 1xx.
    responses: [Counter; 5],
    origin_requests: [Counter; ORIGIN_STATUSES.len()],
    origin_seconds: Histogram,
    /// By the `cache_status` label, made up front as `requests` are.
    request_seconds: [Histogram; CACHE_STATUSES.len()],
    /// Memory, disk.
    tier_hits: [Counter; 2],
    origin_busy: Counter,
    bytes_served: Counter,
    collapsed: Counter,
    purges: Family<PurgeLabel, Counter>,
    purged_objects: Counter,
    pub clients: ClientMetrics,
}

impl Metrics {
    pub fn new(cache: Arc<Cache>) -> Self {
        let mut registry = Registry::with_prefix("edge");
        let requests = Family::<CacheStatusLabel, Counter>::default();
        registry.register(
            "requests",
            "Client requests by what the cache did (hit, stale, revalidated, miss, pass, bypass, purge, local, error, abandoned)",
            requests.clone(),
        );
        let responses = Family::<StatusLabel, Counter>::default();
        registry.register(
            "responses",
            "Responses to client requests (listen and tls.listen), by status class; edge's own answers, 408s for request heads not whole within client_header_timeout and 499s for clients that left included",
            responses.clone(),
        );
        let origin_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "origin_requests",
            "Requests sent to the origin, by response status class",
            origin_requests.clone(),
        );
        let origin_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "origin_response_seconds",
            "Time from sending a request to the origin to its response head, or to origin.timeout when none came; a connection refused or broken is counted in edge_origin_requests_total with status error, not timed",
            origin_seconds.clone(),
        );
        let request_seconds =
            Family::<CacheStatusLabel, Histogram>::new_with_constructor(request_histogram as _);
        registry.register(
            "request_duration_seconds",
            "Time from a client request's head to the end of its response body (sent whole, or cut off), by what the cache did; requests hyper refused as malformed are not timed",
            request_seconds.clone(),
        );
        let tier_hits = Family::<TierLabel, Counter>::default();
        registry.register(
            "tier_hits",
            "Requests answered from a stored response without asking the origin (hits, and stale ones served by stale-while-revalidate or max-stale), by the tier it was read from: memory, or disk (then promoted to memory)",
            tier_hits.clone(),
        );
        registry.register(
            "build",
            "The version of edge running",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let origin_busy = Counter::default();
        registry.register(
            "origin_busy",
            "Requests not sent to the origin: origin.max_connections were in flight for origin.connect_timeout (503)",
            origin_busy.clone(),
        );
        let bytes_served = Counter::default();
        registry.register(
            "served_bytes",
            "Response body bytes handed to client connections (a response cut short counts what was in send buffers too)",
            bytes_served.clone(),
        );
        let collapsed = Counter::default();
        registry.register(
            "collapsed_requests",
            "Requests answered by another request's origin fetch",
            collapsed.clone(),
        );
        let purges = Family::<PurgeLabel, Counter>::default();
        registry.register(
            "purges",
            "Purge requests, by what they named and how",
            purges.clone(),
        );
        let purged_objects = Counter::default();
        registry.register(
            "purged_objects",
            "Stored responses deleted or marked stale by purges",
            purged_objects.clone(),
        );
        let clients = ClientMetrics::default();
        registry.register(
            "client_connections",
            "Client connections open on listen and tls.listen",
            clients.connections.clone(),
        );
        let disconnects = Family::<DisconnectLabel, Counter>::default();
        registry.register(
            "client_disconnects",
            "Client connections (listen and tls.listen) edge closed on a limit: idle (client_header_timeout with nothing pending), slow_head (a request head not complete within client_header_timeout), slow_read (a response not taken for send_timeout; on HTTP/2 a stream reset)",
            disconnects.clone(),
        );
        let clients = ClientMetrics {
            disconnects: DISCONNECTS
                .map(|reason| (disconnects.get_or_create(&DisconnectLabel { reason })).clone()),
            ..clients
        };
        registry.register_collector(Box::new(CacheCollector(cache)));
        let mut process = Registry::with_prefix("process");
        process.register_collector(Box::new(ProcessCollector));
        let requests = CACHE_STATUSES.map(|cache_status| {
            (requests.get_or_create(&CacheStatusLabel { cache_status })).clone()
        });
        let request_seconds = CACHE_STATUSES.map(|cache_status| {
            (request_seconds.get_or_create(&CacheStatusLabel { cache_status })).clone()
        });
        let tier_hits = [Tier::Memory, Tier::Disk].map(|tier| {
            (tier_hits.get_or_create(&TierLabel {
                tier: tier.as_str(),
            }))
            .clone()
        });
        let responses = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|status| (responses.get_or_create(&StatusLabel { status })).clone());
        let origin_requests = ORIGIN_STATUSES
            .map(|status| (origin_requests.get_or_create(&StatusLabel { status })).clone());
        Self {
            registry,
            process,
            requests,
            responses,
            origin_requests,
            origin_seconds,
            request_seconds,
            tier_hits,
            origin_busy,
            bytes_served,
            collapsed,
            purges,
            purged_objects,
            clients,
        }
    }

    /// One client request: what the cache did, the status answered, and whether it was
    /// answered by another's fetch; where its time goes when its response ends.
    pub fn request(&self, cache_status: &'static str, status: u16, collapsed: bool) -> Timing {
        let i = CACHE_STATUSES.iter().position(|s| *s == cache_status);
        debug_assert!(i.is_some(), "{cache_status} is not in CACHE_STATUSES");
        if let Some(i) = i {
            self.requests[i].inc();
        }
        if let Some(class) = (usize::from(status / 100)).checked_sub(1)
            && let Some(responses) = self.responses.get(class)
        {
            responses.inc();
        }
        if collapsed {
            self.collapsed.inc();
        }
        Timing(i)
    }

    /// A request answered from a stored response read from `tier`.
    pub fn hit(&self, tier: Tier) {
        self.tier_hits[tier as usize].inc();
    }

    /// A client request's response ended, sent whole or not, `elapsed` after its head came.
    pub fn finished(&self, timing: Timing, elapsed: Duration) {
        if let Some(i) = timing.0 {
            self.request_seconds[i].observe(elapsed.as_secs_f64());
        }
    }

    /// One origin request: its status (`None` when it failed) and the time to its head (`None`
    /// for a failure that says nothing of the origin's time: a refused connection).
    pub fn origin(&self, status: Option<http::StatusCode>, elapsed: Option<Duration>) {
        let class = status.map_or(0, |s| usize::from(s.as_u16() / 100));
        let class = if class < ORIGIN_STATUSES.len() {
            class
        } else {
            0
        };
        self.origin_requests[class].inc();
        // A refused connection is not a response time: it would count as a fast answer, and an
        // outage look like a good spell.
        if let Some(elapsed) = elapsed {
            self.origin_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// A request not sent: `origin.max_connections` were in flight.
    pub fn origin_busy(&self) {
        self.origin_busy.inc();
    }

    pub fn served(&self, bytes: u64) {
        self.bytes_served.inc_by(bytes);
    }

    pub fn purge(&self, by: &'static str, soft: bool, objects: usize) {
        let mode = if soft { "soft" } else { "hard" };
        self.purges.get_or_create(&PurgeLabel { by, mode }).inc();
        self.purged_objects.inc_by(objects as u64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing to a String cannot fail. The process's figures go without edge's prefix, under
        // the names every Prometheus client library gives them.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        out
    }
}

/// The process's own figures, read from `/proc` at scrape time, as every Prometheus client
/// library exports them: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_threads`, `process_start_time_seconds`,
/// `process_open_fds` and `process_max_fds`. One that cannot be read is left out.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use procfs::WithCurrentSystemInfo;
        use prometheus_client::metrics::MetricType;
        let mut gauge = |name: &str, help: &str, value: i64| {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)
        };
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        let stat = me.stat().ok();
        if let Some(stat) = &stat {
            let rss = stat.rss_bytes().get() as i64;
            gauge(
                "resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            )?;
            let vsize = stat.vsize as i64;
            gauge(
                "virtual_memory_bytes",
                "Virtual memory size in bytes.",
                vsize,
            )?;
            let threads = stat.num_threads;
            gauge("threads", "Number of OS threads in the process.", threads)?;
        }
        if let Ok(open) = me.fd_count() {
            gauge("open_fds", "Number of open file descriptors.", open as i64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                "max_fds",
                "Maximum number of open file descriptors.",
                max as i64,
            )?;
        }
        if let Some(stat) = &stat {
            if let Ok(boot) = procfs::boot_time_secs() {
                let help = "Start time of the process since unix epoch in seconds.";
                let family = encoder.encode_descriptor(
                    "start_time_seconds",
                    help,
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks).encode(family)?;
            }
            let help = "Total user and system CPU time spent in seconds.";
            let family =
                encoder.encode_descriptor("cpu_seconds", help, None, MetricType::Counter)?;
            ConstCounter::new((stat.utime + stat.stime) as f64 / ticks).encode(family)?;
        }
        Ok(())
    }
}

/// Reads the tiers' sizes and counters at scrape time.
struct CacheCollector(Arc<Cache>);

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let tiers = [("memory", stats.memory), ("disk", stats.disk)];
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     value: &dyn Fn(&crate::cache::TierStats) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (tier, tier_stats) in &tiers {
                let metric = ConstGauge::new(value(tier_stats) as i64);
                metric.encode(family.encode_family(&[("tier", *tier)])?)?;
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "cache_entries",
            "Objects held per tier (memory: URIs with all their variants; disk: records).",
            &|s| s.entries,
        )?;
        gauge(
            &mut encoder,
            "cache_bytes",
            "Bytes held per tier (disk: its whole footprint as the budget counts it).",
            &|s| s.bytes,
        )?;
        gauge(
            &mut encoder,
            "cache_capacity_bytes",
            "Bytes a tier may hold now (disk: cache.disk.capacity, or less when its file system has less room than that beyond cache.disk.min_free).",
            &|s| s.capacity,
        )?;
        let mut family = encoder.encode_descriptor(
            "cache_evictions",
            "Objects evicted to keep a tier within its capacity.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (tier, tier_stats) in &tiers {
            let metric = ConstCounter::new(tier_stats.evictions);
            metric.encode(family.encode_family(&[("tier", *tier)])?)?;
        }
        let failures = ConstCounter::new(stats.integrity_failures);
        failures.encode(encoder.encode_descriptor(
            "disk_integrity_failures",
            "Disk records dropped because they failed verification.",
            None,
            failures.metric_type(),
        )?)?;
        let up = ConstGauge::new(i64::from(stats.disk_on));
        up.encode(encoder.encode_descriptor(
            "disk_up",
            "1 while the disk tier is on; 0 while its store, which failed a write (a full file system), is off and being reopened, or when it could not be opened at start-up (until a restart).",
            None,
            up.metric_type(),
        )?)?;
        let failures = ConstCounter::new(stats.disk_failures);
        failures.encode(encoder.encode_descriptor(
            "disk_failures",
            "Times the disk tier went off because its store failed a write.",
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}
