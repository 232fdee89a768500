//! What an operator sees of the real `edge` binary: the access log (human and JSON), log
//! filtering, SIGHUP reload, graceful shutdown and `shutdown_timeout`, `edge health`, and config
//! errors for the operations keys. Each test runs the binary as a child process with its own
//! temporary directory and config file, in front of a fixture origin run in this process on a
//! system clock.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Origin, Reply, Running, free_port};
use edge::clock::Clock;
use tempfile::TempDir;

/// A config file for one edge process.
struct Conf {
    listen: u16,
    admin: u16,
    origin: String,
    store: PathBuf,
    /// `cache.memory.capacity` (a keep-on-reload setting, so it stays the same unless a test
    /// breaks it on purpose).
    capacity: String,
    origin_timeout: String,
    /// More `origin.` keys, YAML text indented under `origin:`.
    origin_extra: String,
    /// More top-level keys (`log:`, `shutdown_timeout:`, …), YAML text.
    extra: String,
    /// The user (and group) id edge runs as: this process's unless set.
    user: Option<u32>,
    /// `cache.disk.min_free`, when set.
    min_free: Option<String>,
    /// A soft limit on open files to start edge with (`ulimit -S -n`), when set.
    soft_open_files: Option<u64>,
    /// The `TMPDIR` to start edge with, when set.
    temp_dir: Option<PathBuf>,
}

impl Conf {
    fn new(dir: &Path, origin: &Origin) -> Self {
        Self {
            listen: free_port(),
            admin: free_port(),
            origin: origin.url(),
            store: dir.join("store"),
            capacity: "256MiB".to_owned(),
            origin_timeout: "10s".to_owned(),
            origin_extra: String::new(),
            extra: String::new(),
            user: None,
            min_free: None,
            soft_open_files: None,
            temp_dir: None,
        }
    }

    fn extra(mut self, extra: &str) -> Self {
        self.extra = extra.to_owned();
        self
    }

    fn yaml(&self) -> String {
        format!(
            "listen: 127.0.0.1:{}\n\
             origin:\n  url: {}\n  connect_timeout: 2s\n  timeout: {}\n{}\
             cache:\n  disk:\n    path: {}\n{}  memory:\n    capacity: {}\n\
             admin:\n  listen: 127.0.0.1:{}\n{}",
            self.listen,
            self.origin,
            self.origin_timeout,
            self.origin_extra,
            self.store.display(),
            (self.min_free.as_ref()).map_or(String::new(), |m| format!("    min_free: {m}\n")),
            self.capacity,
            self.admin,
            self.extra
        )
    }
}

/// One running `edge` process with its stderr captured in a file.
struct Edge {
    process: Running,
    _dir: TempDir,
    config: PathBuf,
    log: PathBuf,
    listen: u16,
    admin: u16,
    client: reqwest::Client,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Edge {
    /// Starts edge on `conf` (written to `<dir>/edge.yaml`) and waits until its admin listener
    /// answers. `rust_log` is the `RUST_LOG` the process gets (none otherwise).
    /// Starts edge on `conf` (written to `<dir>/edge.yaml`) and waits until its admin listener
    /// answers. `rust_log` is the `RUST_LOG` the process gets (none otherwise). If a port from
    /// `free_port()` was taken in the meantime (by a parallel test), `conf` gets new ports and
    /// edge is started again.
    async fn start(dir: TempDir, conf: &mut Conf, rust_log: Option<&str>) -> Edge {
        let config = dir.path().join("edge.yaml");
        let log = dir.path().join("stderr.log");
        let spawn = |conf: &Conf| {
            std::fs::write(&config, conf.yaml()).unwrap();
            let mut command = match conf.soft_open_files {
                // The shell lowers the limit and becomes edge (same process id).
                Some(limit) => {
                    let mut command = Command::new("sh");
                    command.args([
                        "-c",
                        &format!("ulimit -S -n {limit} && exec \"$0\" \"$@\""),
                        env!("CARGO_BIN_EXE_edge"),
                    ]);
                    command
                }
                None => Command::new(env!("CARGO_BIN_EXE_edge")),
            };
            command
                .args(["--config", config.to_str().unwrap()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .env_remove("RUST_LOG");
            if let Some(filter) = rust_log {
                command.env("RUST_LOG", filter);
            }
            if let Some(temp_dir) = &conf.temp_dir {
                command.env("TMPDIR", temp_dir);
            }
            if let Some(id) = conf.user {
                std::os::unix::process::CommandExt::uid(&mut command, id);
                std::os::unix::process::CommandExt::gid(&mut command, id);
            }
            Running(command.spawn().unwrap())
        };
        let mut process = spawn(conf);
        for attempt in 1.. {
            match wait_ready(&mut process, conf.admin, &log).await {
                Ok(()) => break,
                Err(stderr) if attempt < 3 && stderr.contains("cannot listen on") => {
                    drop(process);
                    (conf.listen, conf.admin) = (free_port(), free_port());
                    process = spawn(conf);
                }
                Err(stderr) => panic!("edge did not start: {stderr}"),
            }
        }
        Edge {
            process,
            _dir: dir,
            config,
            log,
            listen: conf.listen,
            admin: conf.admin,
            client: client(),
        }
    }

    fn pid(&self) -> String {
        self.process.0.id().to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    /// What the admin listener's `/metrics` says.
    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let response = self.client.get(url).send().await.unwrap();
        response.text().await.unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let cache_status = response
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.text().await.unwrap();
        (status, cache_status, body)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lines(&self) -> Vec<String> {
        self.stderr().lines().map(str::to_owned).collect()
    }

    /// Waits (at most 10 s) until `count` lines of stderr satisfy `pred`; returns those lines.
    async fn wait_lines(&self, count: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self.lines().into_iter().filter(|l| pred(l)).collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {count} matching log line(s), found {}:\n{}",
                found.len(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_line(&self, needle: &str) -> String {
        self.wait_lines(1, |l| l.contains(needle)).await.remove(0)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most `limit`) for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "edge did not exit within {limit:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Waits until the admin listener on `admin` answers; the log if edge exits first.
async fn wait_ready(process: &mut Running, admin: u16, log: &Path) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{admin}/healthz");
    let client = client();
    let stderr = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            return Err(format!("exited ({status}):\n{}", stderr()));
        }
        match client.get(&url).send().await {
            Ok(response) if response.status() == 200 => return Ok(()),
            _ if Instant::now() > deadline => {
                panic!("edge did not come up in 20 s:\n{}", stderr())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn origin() -> Origin {
    Origin::start(Clock::system()).await
}

fn cacheable(body: &str) -> Reply {
    Reply::ok(body.to_owned()).header("cache-control", "max-age=600")
}

/// The value of `key=` in a human-format log line (quoted values keep their quotes).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"')? + 2
    } else {
        rest.find(' ').unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

fn is_access(line: &str) -> bool {
    line.contains(" edge::access: ")
}

/// 1. Human access log: one line per request, written when its body is done, with the cache
/// outcome, the bytes sent and the timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_human_has_one_line_per_request_with_its_outcome() {
    let origin = origin().await;
    let body = "hello from the access log test\n";
    origin.reply("/a?q=1", cacheable(body));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let edge = Edge::start(dir, &mut conf, None).await;

    let response = client()
        .get(edge.url("/a?q=1"))
        .header("referer", "https://example.com/from")
        .header("user-agent", "curl/8.0 (test)")
        .send()
        .await
        .unwrap();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.text().await.unwrap(), body);
    assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
    edge.wait_lines(1, is_access).await;
    let (status, cache_status, got) = edge.get("/a?q=1").await;
    assert_eq!((status, got.as_str()), (200, body));
    assert!(cache_status.contains("hit"), "{cache_status}");
    edge.wait_lines(2, is_access).await;
    // Nothing else comes late: give a third line the chance to appear.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let access: Vec<String> = edge.lines().into_iter().filter(|l| is_access(l)).collect();
    assert_eq!(access.len(), 2, "two access lines: {access:#?}");
    let bytes = body.len().to_string();
    for (line, cache) in access.iter().zip(["\"miss\"", "\"hit\""]) {
        assert!(line.contains(" INFO "), "{line}");
        assert_eq!(field(line, "method"), Some("GET"), "{line}");
        assert_eq!(field(line, "uri"), Some("/a?q=1"), "{line}");
        assert_eq!(field(line, "status"), Some("200"), "{line}");
        assert_eq!(field(line, "cache"), Some(cache), "{line}");
        assert_eq!(field(line, "bytes"), Some(bytes.as_str()), "{line}");
        let duration = field(line, "duration_ms").unwrap_or_else(|| panic!("{line}"));
        assert!(duration.parse::<f64>().unwrap() >= 0.0, "{line}");
    }
    // As nginx's `combined` format: the protocol, Host, Referer and User-Agent.
    let first = &access[0];
    let host = format!("\"127.0.0.1:{}\"", edge.listen);
    assert_eq!(field(first, "proto"), Some("HTTP/1.1"), "{first}");
    assert_eq!(field(first, "host"), Some(host.as_str()), "{first}");
    assert_eq!(
        field(first, "referer"),
        Some("\"https://example.com/from\""),
        "{first}"
    );
    assert_eq!(
        field(first, "user_agent"),
        Some("\"curl/8.0 (test)\""),
        "{first}"
    );
    let origin_ms = field(&access[0], "origin_ms").unwrap_or_else(|| panic!("{}", access[0]));
    assert!(origin_ms.parse::<f64>().unwrap() >= 0.0, "{}", access[0]);
    assert_eq!(field(&access[1], "origin_ms"), None, "{}", access[1]);
    assert_eq!(origin.hits("/a?q=1"), 1);

    // Over HTTP/2 the target is `:scheme`, `:authority` and `:path`: the line names the path, as
    // nginx's does, not an absolute URI whose host the client chose.
    let response = common::h2_client()
        .get(edge.url("/a?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), body);
    let access = edge.wait_lines(3, is_access).await;
    assert_eq!(field(&access[2], "uri"), Some("/a?q=1"), "{}", access[2]);
    assert_eq!(
        field(&access[2], "proto"),
        Some("HTTP/2.0"),
        "{}",
        access[2]
    );
    assert_eq!(
        field(&access[2], "host"),
        Some(host.as_str()),
        "{}",
        access[2]
    );
}

/// 1b. The access line's `complete` field says whether the whole body was sent: also for a miss
/// streamed from its fill with a `Content-Length`, whose body hyper stops polling once that many
/// bytes are written (a hit from memory is one `Full` body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_says_a_fully_sent_response_is_complete() {
    let origin = origin().await;
    let body = "all of it\n";
    origin.reply("/c", cacheable(body));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let edge = Edge::start(dir, &mut conf, None).await;
    assert_eq!(edge.get("/c").await.2, body);
    edge.wait_lines(1, is_access).await;
    assert_eq!(edge.get("/c").await.2, body);
    let access = edge.wait_lines(2, is_access).await;
    let bytes = body.len().to_string();
    for line in &access {
        assert_eq!(field(line, "bytes"), Some(bytes.as_str()), "{line}");
    }
    assert_eq!(
        field(&access[1], "complete"),
        Some("true"),
        "hit: {}",
        access[1]
    );
    assert_eq!(
        field(&access[0], "complete"),
        Some("true"),
        "a miss sent in full: {}",
        access[0]
    );
}

/// 1e. A request that joined another's fetch logs how long it waited for the origin, not the
/// whole of the other's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapsed_request_logs_its_own_wait_for_the_origin() {
    let origin = origin().await;
    origin.reply(
        "/slow",
        cacheable("worth it\n").delay(Duration::from_millis(800)),
    );
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let edge = Edge::start(dir, &mut conf, None).await;
    let leader = edge.get("/slow");
    let waiter = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        edge.get("/slow").await
    };
    let (_, (_, waiter_status, _)) = tokio::join!(leader, waiter);
    assert!(waiter_status.contains("collapsed"), "{waiter_status}");
    let lines = edge.wait_lines(2, is_access).await;
    let number = |line: &str, name: &str| -> f64 {
        field(line, name)
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap()
    };
    let waiter = lines
        .iter()
        .find(|line| line.contains("collapsed"))
        .unwrap();
    let leader = lines
        .iter()
        .find(|line| !line.contains("collapsed"))
        .unwrap();
    assert!(number(leader, "origin_ms") >= 800.0, "{leader}");
    let (waited, took) = (number(waiter, "origin_ms"), number(waiter, "duration_ms"));
    assert!(waited <= took && waited < 700.0, "{waiter}");
}

/// 1d. A request whose head hyper cannot parse is answered by hyper before edge sees it (400, 414
/// for a target too long, 431 for a head too large); it still gets its access line, as nginx
/// logs one (`method="-"`), and is counted as an `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_hyper_rejects_is_logged_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = origin().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let edge = Edge::start(dir, &mut conf, None).await;
    let long = format!("GET /{} HTTP/1.1\r\nHost: edge\r\n\r\n", "a".repeat(70_000));
    let large = format!(
        "GET / HTTP/1.1\r\nHost: edge\r\nX-Big: {}\r\n\r\n",
        "b".repeat(500_000)
    );
    let cases = [
        ("GARBAGE\r\n\r\n".to_owned(), "400"),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(), "400"),
        (long, "414"),
        (large, "431"),
    ];
    for (i, (request, status)) in cases.iter().enumerate() {
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", edge.listen))
            .await
            .unwrap();
        // The head may be refused before all of it is written.
        let _ = client.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        let lines = edge.wait_lines(i + 1, is_access).await;
        let line = &lines[i];
        assert_eq!(field(line, "status"), Some(*status), "{line}");
        assert_eq!(field(line, "method"), Some("\"-\""), "{line}");
        assert_eq!(field(line, "cache"), Some("\"error\""), "{line}");
    }
    let metrics = edge.metrics().await;
    let errors = "edge_requests_total{cache_status=\"error\"} 4";
    assert!(metrics.contains(errors), "{metrics}");
}

/// 1e. A request head begun over HTTP/1 and not whole within `client_header_timeout` (slowloris)
/// is closed with nothing sent, and logged and counted as a 408, as nginx logs one, whether it
/// was a connection's first request, one after a kept-alive answer, or one stalled after a `P`
/// (which could still have been HTTP/2's preface); a connection that never sent a byte is closed
/// too, and has no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_not_whole_in_time_is_logged_as_a_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = origin().await;
    origin.reply("/kept", cacheable("kept\n"));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("client_header_timeout: 700ms\n");
    let edge = Edge::start(dir, &mut conf, None).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", edge.listen));

    // Nothing sent: closed, no line.
    let mut silent = connect().await.unwrap();
    // A head begun: closed unanswered.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: edge\r\n")
        .await
        .unwrap();
    // One begun with a letter that could still be HTTP/2's preface (`PRI * HTTP/2.0`).
    let mut preface = connect().await.unwrap();
    preface.write_all(b"P").await.unwrap();
    // A request answered, then the next head begun on the kept-alive connection.
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /kept HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nkept\n") {
        let mut more = [0; 4096];
        let n = kept.read(&mut more).await.unwrap();
        assert!(n > 0, "closed: {answer:?}");
        answer.extend_from_slice(&more[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 "), "{answer:?}");
    kept.write_all(b"GET /kept HTTP/1.1\r\nHo").await.unwrap();
    for stream in [&mut silent, &mut slow, &mut preface, &mut kept] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        let closed = read.await.expect("closed within the timeout");
        assert!(closed.is_err() || rest.is_empty(), "nothing sent: {rest:?}");
    }
    let lines = edge.wait_lines(4, is_access).await;
    let timed_out: Vec<_> = (lines.iter())
        .filter(|line| field(line, "status") == Some("408"))
        .collect();
    assert_eq!(timed_out.len(), 3, "{lines:?}");
    for line in timed_out {
        assert_eq!(field(line, "method"), Some("\"-\""), "{line}");
        assert_eq!(field(line, "cache"), Some("\"error\""), "{line}");
        assert_eq!(field(line, "bytes"), Some("0"), "{line}");
    }
    // The silent connection's close, a second later, adds no line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(edge.lines().into_iter().filter(|l| is_access(l)).count(), 4);
    let metrics = edge.metrics().await;
    for counted in [
        "edge_requests_total{cache_status=\"error\"} 3",
        "edge_responses_total{status=\"4xx\"} 3",
        "edge_client_disconnects_total{reason=\"slow_head\"} 3",
        "edge_client_disconnects_total{reason=\"idle\"} 1",
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }
}

/// 1c. A client that leaves before its answer (here it half-closes its connection, as `nc -N`
/// does, then waits) gets a line of its own, `status=499 cache="abandoned"` as nginx logs it, and
/// is counted in `edge_requests_total`; the fill it started still stores the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_is_logged_as_a_499() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = origin().await;
    let body = "worth the wait\n";
    origin.reply("/slow", cacheable(body).delay(Duration::from_millis(500)));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let edge = Edge::start(dir, &mut conf, None).await;

    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", edge.listen))
        .await
        .unwrap();
    let request = "GET /slow HTTP/1.1\r\nHost: edge\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    // Once the request is under way: hyper may see an end that comes at once before the request,
    // and then serves and logs nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.hits("/slow") == 0 {
        assert!(Instant::now() < deadline, "never reached the origin");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.shutdown().await.unwrap();
    let line = edge.wait_line(" status=499 ").await;
    assert!(is_access(&line), "{line}");
    assert_eq!(field(&line, "method"), Some("GET"), "{line}");
    assert_eq!(field(&line, "uri"), Some("/slow"), "{line}");
    assert_eq!(field(&line, "cache"), Some("\"abandoned\""), "{line}");
    assert_eq!(field(&line, "bytes"), Some("0"), "{line}");
    assert_eq!(field(&line, "complete"), Some("false"), "{line}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"", "the connection was closed without an answer");

    let metrics = edge.metrics().await;
    let abandoned = "edge_requests_total{cache_status=\"abandoned\"} 1";
    assert!(metrics.contains(abandoned), "{metrics}");
    // The fill ran on without it: a later request is a hit (one that comes before the response
    // is stored joins the fill, and is not).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, cache_status, got) = loop {
        let answer = edge.get("/slow").await;
        if answer.1.contains("hit") || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status, got.as_str()), (200, body));
    assert!(cache_status.contains("hit"), "{cache_status}");
    assert_eq!(origin.hits("/slow"), 1);
}

/// 2. `log.format: json`: every line of stderr is one JSON object; the access line carries its
/// fields at the top level (`flatten_event`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_is_one_object_per_line() {
    let origin = origin().await;
    let body = "json body\n";
    origin.reply("/j", cacheable(body));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("log:\n  format: json\n");
    let edge = Edge::start(dir, &mut conf, None).await;

    let (status, _, _) = edge.get("/j").await;
    assert_eq!(status, 200);
    edge.wait_line("\"edge::access\"").await;
    let (status, _, _) = edge.get("/j").await;
    assert_eq!(status, 200);
    edge.wait_lines(2, |l| l.contains("\"edge::access\"")).await;

    let lines = edge.lines();
    assert!(
        lines.len() >= 3,
        "a start-up line and two access lines: {lines:#?}"
    );
    let mut access = Vec::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        assert!(value.is_object(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        if value["target"] == "edge::access" {
            access.push(value);
        }
    }
    assert_eq!(access.len(), 2, "{lines:#?}");
    for (value, cache) in access.iter().zip(["miss", "hit"]) {
        assert_eq!(value["level"], "INFO", "{value}");
        assert_eq!(value["method"], "GET", "{value}");
        assert_eq!(value["uri"], "/j", "{value}");
        assert_eq!(value["status"], 200, "{value}");
        assert_eq!(value["cache"], cache, "{value}");
        assert_eq!(value["bytes"], body.len() as u64, "{value}");
        assert!(value["duration_ms"].is_number(), "{value}");
        assert!(value.get("fields").is_none(), "flattened: {value}");
    }
    assert!(access[0]["origin_ms"].is_number(), "{}", access[0]);
    assert!(access[1].get("origin_ms").is_none(), "{}", access[1]);
}

/// The access line of a request the origin failed says how long the origin had (`origin_ms`),
/// where an operator looks first: here a 504 after `origin.timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_of_an_origin_timeout_gives_the_origin_time() {
    let origin = origin().await;
    origin.reply("/late", cacheable("late").delay(Duration::from_secs(3)));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("log:\n  format: json\n");
    conf.origin_timeout = "1s".to_owned();
    let edge = Edge::start(dir, &mut conf, None).await;
    let (status, cache_status, _) = edge.get("/late").await;
    assert_eq!(status, 504, "{cache_status}");
    edge.wait_line("\"edge::access\"").await;
    let line = (edge.lines().into_iter())
        .find(|line| line.contains("\"edge::access\""))
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["status"], 504, "{value}");
    let origin_ms = value["origin_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("{value}"));
    assert!((900.0..3000.0).contains(&origin_ms), "{value}");
}

/// A request that found no free slot to the origin (`origin.max_connections`) within
/// `connect_timeout` gets 503 `origin-busy` without being sent: its access line gives no
/// `origin_ms`, as the origin had no time of it, whether it was a fill (a GET) or a pass (a
/// POST). The request holding the slot has its origin time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_of_an_origin_busy_answer_gives_no_origin_time() {
    let origin = origin().await;
    origin.reply(
        "/held",
        Reply::ok("held")
            .header("cache-control", "no-store")
            .delay(Duration::from_secs(7)),
    );
    origin.reply("/fill", cacheable("fill"));
    origin.reply(
        "/pass",
        Reply::ok("pass").header("cache-control", "no-store"),
    );
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("log:\n  format: json\n");
    conf.origin_extra = "  max_connections: 1\n".to_owned();
    let edge = Arc::new(Edge::start(dir, &mut conf, None).await);
    let holder = {
        let edge = edge.clone();
        tokio::spawn(async move { edge.get("/held").await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.hits("/held") == 0 {
        assert!(Instant::now() < deadline, "the slot was never taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A GET of a cacheable URL goes through a fill; a POST is passed.
    for (method, path) in [("GET", "/fill"), ("POST", "/pass")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = edge.client.request(method, edge.url(path)).send();
        let response = response.await.unwrap();
        let cache_status = response.headers()["cache-status"].to_str().unwrap();
        assert_eq!(response.status(), 503, "{path}: {cache_status}");
        assert!(
            cache_status.contains("detail=origin-busy"),
            "{cache_status}"
        );
        assert_eq!(origin.hits(path), 0, "{path}: not sent");
    }
    let (status, _, _) = holder.await.unwrap();
    assert_eq!(status, 200);
    let lines = edge.wait_lines(3, |l| l.contains("\"edge::access\"")).await;
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let busy = value["status"] == 503;
        assert_eq!(value.get("origin_ms").is_none(), busy, "{value}");
    }
    assert_eq!(
        lines.iter().filter(|l| l.contains("origin-busy")).count(),
        2
    );
}

/// A request from 127.0.0.1 that logs a WARN line: PURGE from outside `purge.allow`.
async fn refused_purge(edge: &Edge) {
    let response = edge
        .client
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            edge.url("/p"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

const PURGE_NOBODY: &str = "purge:\n  allow: [192.0.2.0/24]\n";

/// 3a. `log.access: false`: requests are served and logged nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_turned_off() {
    let origin = origin().await;
    origin.reply("/p", cacheable("p\n"));
    let dir = TempDir::new().unwrap();
    let mut conf =
        Conf::new(dir.path(), &origin).extra(&format!("log:\n  access: false\n{PURGE_NOBODY}"));
    let edge = Edge::start(dir, &mut conf, None).await;
    assert_eq!(edge.get("/p").await.0, 200);
    assert_eq!(edge.get("/p").await.0, 200);
    refused_purge(&edge).await;
    // The WARN line comes after both GETs have been answered in full.
    edge.wait_line("PURGE refused").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = edge.stderr();
    assert!(
        log.contains(" INFO "),
        "other INFO lines still appear: {log}"
    );
    assert!(!log.contains("edge::access"), "no access lines: {log}");
    assert_eq!(origin.hits("/p"), 1);
}

/// 3b. `log.filter: warn`: no INFO line at all (neither start-up nor access), WARN still logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_filter_from_the_config_file() {
    let origin = origin().await;
    origin.reply("/p", cacheable("p\n"));
    let dir = TempDir::new().unwrap();
    let mut conf =
        Conf::new(dir.path(), &origin).extra(&format!("log:\n  filter: warn\n{PURGE_NOBODY}"));
    let edge = Edge::start(dir, &mut conf, None).await;
    assert_eq!(edge.get("/p").await.0, 200);
    assert_eq!(edge.get("/p").await.0, 200);
    refused_purge(&edge).await;
    let warn = edge.wait_line("PURGE refused").await;
    assert!(warn.contains(" WARN "), "{warn}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = edge.stderr();
    assert!(!log.contains(" INFO "), "no INFO lines: {log}");
    assert!(!log.contains("edge::access"), "{log}");
}

/// 3c. `RUST_LOG` overrides `log.filter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_overrides_the_log_filter() {
    let origin = origin().await;
    origin.reply("/p", cacheable("p\n"));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("log:\n  filter: warn\n");
    let edge = Edge::start(dir, &mut conf, Some("info")).await;
    assert_eq!(edge.get("/p").await.0, 200);
    let access = edge.wait_line(" edge::access: ").await;
    assert!(access.contains(" INFO "), "{access}");
    assert!(edge.stderr().contains("edge serving"), "{}", edge.stderr());
    // A reload that changes log.filter says RUST_LOG still wins (it changed nothing, silently).
    conf.extra = "log:\n  filter: debug\n".to_owned();
    std::fs::write(&edge.config, conf.yaml()).unwrap();
    edge.signal("HUP");
    let line = edge.wait_line("RUST_LOG is set").await;
    assert!(
        line.contains(" WARN ") && line.contains("log.filter changed"),
        "{line}"
    );
}

/// Two fixture origins that answer the same paths differently.
async fn origins_a_and_b() -> (Origin, Origin) {
    let a = origin().await;
    let b = origin().await;
    for path in ["/x", "/y", "/z", "/w"] {
        a.reply(path, cacheable(&format!("{path} from A\n")));
        b.reply(path, cacheable(&format!("{path} from B\n")));
    }
    (a, b)
}

fn reloaded(line: &str) -> bool {
    line.contains("configuration reloaded")
}

/// 4a. SIGHUP reloads the file: the new origin is used and what is cached stays cached, and in
/// reach: the key is the path under the origin, not its host (once the full origin URL, so a
/// reload that changed `origin.url` left every stored response out of reach).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_the_origin_and_keeps_the_cache() {
    let (a, b) = origins_a_and_b().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &a);
    let edge = Edge::start(dir, &mut conf, None).await;

    let (status, cache_status, body) = edge.get("/x").await;
    assert_eq!((status, body.as_str()), (200, "/x from A\n"));
    assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");

    // A reload that finds the file as it was says so (an edit may not have reached it).
    edge.signal("HUP");
    let line = edge.wait_lines(1, reloaded).await.remove(0);
    assert!(line.contains("the file as it was"), "{line}");

    conf.origin = b.url();
    std::fs::write(&edge.config, conf.yaml()).unwrap();
    edge.signal("HUP");
    let line = edge.wait_lines(2, reloaded).await.remove(1);
    assert!(line.contains(" INFO "), "nothing needs a restart: {line}");
    assert!(!line.contains("the file as it was"), "{line}");
    let (status, _, body) = edge.get("/y").await;
    assert_eq!((status, body.as_str()), (200, "/y from B\n"));
    assert_eq!((a.hits("/y"), b.hits("/y")), (0, 1));

    let (status, cache_status, body) = edge.get("/x").await;
    assert!(
        cache_status.contains("hit"),
        "the cache is kept across a reload, and /x is a hit after origin.url changed \
         (Cache-Status: {cache_status}; body {body:?})"
    );
    assert_eq!((status, body.as_str()), (200, "/x from A\n"));
    assert_eq!(a.hits("/x"), 1, "A was asked once in all");
    assert_eq!(b.hits("/x"), 0);
}

/// 4b. SIGHUP: a new origin is used; a broken file is rejected with its position and the node
/// keeps serving on the running configuration; a changed `listen` is named in a warning and keeps
/// its running value; the cache survives every reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rejects_a_broken_file_and_names_settings_that_need_a_restart() {
    let (a, b) = origins_a_and_b().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &a);
    let edge = Edge::start(dir, &mut conf, None).await;
    assert_eq!(edge.get("/x").await.2, "/x from A\n");

    // Point at origin B.
    conf.origin = b.url();
    std::fs::write(&edge.config, conf.yaml()).unwrap();
    edge.signal("HUP");
    let line = edge.wait_lines(1, reloaded).await.remove(0);
    assert!(line.contains(" INFO "), "nothing needs a restart: {line}");
    let (status, cache_status, body) = edge.get("/y").await;
    assert_eq!((status, body.as_str()), (200, "/y from B\n"));
    assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");

    // A broken file is rejected, with file:line: key.
    conf.capacity = "lots".to_owned();
    let text = conf.yaml();
    let line_no = text
        .lines()
        .position(|l| l.contains("capacity: lots"))
        .unwrap()
        + 1;
    std::fs::write(&edge.config, &text).unwrap();
    edge.signal("HUP");
    let rejected = edge.wait_line("reload rejected").await;
    let position = format!("{}:{line_no}:", edge.config.display());
    assert!(rejected.contains(&position), "{position} in {rejected}");
    assert!(rejected.contains("cache.memory.capacity"), "{rejected}");
    assert!(rejected.contains("invalid size \"lots\""), "{rejected}");
    assert!(rejected.contains("ERROR"), "{rejected}");
    // Still serving, still from B, the cache still there.
    let (status, cache_status, body) = edge.get("/y").await;
    assert_eq!((status, body.as_str()), (200, "/y from B\n"));
    assert!(cache_status.contains("hit"), "{cache_status}");
    let (status, _, body) = edge.get("/z").await;
    assert_eq!((status, body.as_str()), (200, "/z from B\n"));
    assert_eq!((a.hits("/z"), b.hits("/z")), (0, 1));
    assert_eq!(edge.lines().iter().filter(|l| reloaded(l)).count(), 1);

    // A new listen address needs a restart: named in a warning; the old port keeps serving.
    conf.capacity = "256MiB".to_owned();
    let old_listen = conf.listen;
    conf.listen = free_port();
    std::fs::write(&edge.config, conf.yaml()).unwrap();
    edge.signal("HUP");
    let line = edge.wait_lines(2, reloaded).await.remove(1);
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("\"listen\""), "names listen: {line}");
    assert!(!line.contains("admin.listen"), "{line}");
    assert_eq!(edge.listen, old_listen);
    let (status, _, body) = edge.get("/w").await;
    assert_eq!((status, body.as_str()), (200, "/w from B\n"));
    let (_, cache_status, _) = edge.get("/y").await;
    assert!(cache_status.contains("hit"), "{cache_status}");
    assert_eq!(b.hits("/y"), 1);
    assert_eq!(a.hits("/x"), 1);
}

enum Attempt {
    Refused,
    /// Connected, but closed or reset without an answer.
    Dropped(String),
    /// Connected and answered: the first line of the answer.
    Served(String),
}

/// Opens a new connection to `port` and asks for `/` on it.
async fn new_connection(port: u16) -> Attempt {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Attempt::Refused;
        }
        Err(err) => return Attempt::Dropped(err.to_string()),
    };
    let request = b"GET / HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n";
    if let Err(err) = stream.write_all(request).await {
        return Attempt::Dropped(err.to_string());
    }
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
        Err(_) => Attempt::Served("no answer and no close in 5 s".to_owned()),
        Ok(_) if answer.is_empty() => Attempt::Dropped("closed".to_owned()),
        Ok(_) => Attempt::Served(
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// 5a. SIGTERM: no new connections, the request in flight finishes in full, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_and_refuses_new_connections() {
    let origin = origin().await;
    let body: String = (0..20_000).map(|i| format!("{i:05}\n")).collect();
    origin.reply(
        "/slow",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=600")
            .delay(Duration::from_secs(3)),
    );
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let mut edge = Edge::start(dir, &mut conf, None).await;

    let request = tokio::spawn({
        let client = edge.client.clone();
        let url = edge.url("/slow");
        async move {
            let response = client.get(url).send().await?;
            let status = response.status().as_u16();
            let body = response.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits("/slow") == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    edge.signal("TERM");
    edge.wait_line("shutting down").await;

    // The listener closes right after the "shutting down" line: a connection that raced into its
    // backlog is reset (and never served); once it is closed, connecting is refused.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match new_connection(edge.listen).await {
            Attempt::Refused => break,
            Attempt::Served(head) => panic!("a new connection after SIGTERM was served: {head}"),
            Attempt::Dropped(why) => {
                assert!(
                    Instant::now() < deadline,
                    "connections are still accepted 1 s after SIGTERM ({why})"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        edge.process.0.try_wait().unwrap().is_none(),
        "edge is still running (the slow request is in flight)"
    );
    assert!(
        !request.is_finished(),
        "the slow request is still in flight"
    );

    let (status, got) = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("the in-flight request finishes")
        .unwrap()
        .expect("the in-flight request is answered in full");
    assert_eq!(status, 200);
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the whole body");
    let exit = edge.wait_exit(Duration::from_secs(15)).await;
    assert!(
        exit.success(),
        "exit 0 after SIGTERM: {exit}\n{}",
        edge.stderr()
    );
    assert!(edge.stderr().contains("edge stopped"), "{}", edge.stderr());
    assert_eq!(origin.hits("/slow"), 1);
}

/// 5b. `shutdown_timeout` bounds the wait for a request that does not finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_off_a_request_that_does_not_finish() {
    let origin = origin().await;
    origin.reply(
        "/stuck",
        Reply::ok("too late\n").delay(Duration::from_secs(20)),
    );
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("shutdown_timeout: 1s\n");
    conf.origin_timeout = "60s".to_owned();
    let mut edge = Edge::start(dir, &mut conf, None).await;

    let request = tokio::spawn({
        let client = edge.client.clone();
        let url = edge.url("/stuck");
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits("/stuck") == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    edge.signal("TERM");
    let exit = edge.wait_exit(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(exit.success(), "exit 0: {exit}\n{}", edge.stderr());
    assert!(
        edge.stderr().contains("shutdown_timeout"),
        "{}",
        edge.stderr()
    );
    // Edge cut it off, its client did not leave: not a 499.
    let line = edge.wait_line(" uri=/stuck ").await;
    assert_eq!(field(&line, "status"), Some("503"), "{line}");
    assert_eq!(field(&line, "cache"), Some("\"error\""), "{line}");
    request.abort();
}

/// A request under way while the node stops, and the client that sent it.
async fn stuck_request(origin: &Origin, edge: &Edge) -> tokio::task::JoinHandle<Option<u16>> {
    origin.reply(
        "/stuck",
        Reply::ok("too late\n").delay(Duration::from_secs(20)),
    );
    let before = origin.hits("/stuck");
    let request = tokio::spawn({
        let client = edge.client.clone();
        let url = edge.url("/stuck");
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits("/stuck") == before {
        assert!(
            Instant::now() < deadline,
            "the request never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    request
}

/// Signals as nginx's users send them: SIGQUIT stops gracefully, as SIGTERM does; SIGUSR1
/// (reopen the logs, from a log rotation) is ignored, where both ended the process at once; and
/// a second stop signal stops waiting for the requests in flight (it was ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_stops_gracefully_usr1_is_ignored_and_a_second_signal_hurries() {
    let origin = origin().await;
    origin.reply("/a", cacheable("a\n"));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    conf.origin_timeout = "60s".to_owned();
    let mut edge = Edge::start(dir, &mut conf, None).await;
    edge.signal("USR1");
    edge.wait_line("SIGUSR1").await;
    assert_eq!(edge.get("/a").await.0, 200, "still serving after SIGUSR1");

    // SIGQUIT, then SIGTERM: the second cuts the stuck request off long before
    // shutdown_timeout's 30 s.
    let request = stuck_request(&origin, &edge).await;
    edge.signal("QUIT");
    edge.wait_line("shutting down").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        edge.process.0.try_wait().unwrap().is_none(),
        "waiting for /stuck"
    );
    let signalled = Instant::now();
    edge.signal("TERM");
    let exit = edge.wait_exit(Duration::from_secs(10)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    assert!(exit.success(), "exit 0: {exit}\n{}", edge.stderr());
    let line = edge
        .wait_line("a second stop signal came; closing the client connections still open")
        .await;
    // The stuck request's connection at least.
    assert!(
        line.contains("connections=") && !line.contains("connections=0"),
        "{line}"
    );
    assert!(edge.stderr().contains("edge stopped"), "{}", edge.stderr());
    assert_eq!(request.await.unwrap(), None, "no answer came");
}

/// 6. `edge health` asks the admin listener of the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_command_reports_whether_the_node_answers() {
    let origin = origin().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let mut edge = Edge::start(dir, &mut conf, None).await;
    let health = |config: &Path| {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args(["health", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (output, started.elapsed())
    };
    let config = edge.config.clone();
    let (output, _) = tokio::task::spawn_blocking(move || health(&config))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(15)).await.success());
    let config = edge.config.clone();
    let (output, took) = tokio::task::spawn_blocking(move || health(&config))
        .await
        .unwrap();
    assert!(
        !output.status.success(),
        "nothing listens: {}",
        output.status
    );
    assert_ne!(output.status.code(), Some(2), "not a config error");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", edge.admin)),
        "{stderr}"
    );
}

/// 7. The operations keys are validated like the others: exit 2, file:line: key.
#[test]
fn config_errors_for_the_operations_keys_name_the_key_and_line() {
    let dir = TempDir::new().unwrap();
    let cases = [
        (
            "purge:\n  allow: [not-a-net]\n",
            "purge.allow[0]",
            "invalid address \"not-a-net\": expected an address or a network",
        ),
        (
            "log:\n  format: xml\n",
            "log.format",
            "unknown variant `xml`",
        ),
        (
            "log:\n  filter: \"edge=notalevel\"\n",
            "log.filter",
            "invalid filter \"edge=notalevel\"",
        ),
    ];
    for (i, (tail, key, message)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, format!("origin:\n  url: http://127.0.0.1:9\n{tail}")).unwrap();
        let line = 4;
        for args in [vec!["check"], vec![]] {
            let output = Command::new(env!("CARGO_BIN_EXE_edge"))
                .args(&args)
                .args(["--config", path.to_str().unwrap()])
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{args:?} {tail}: {stderr}");
            let expected = format!("edge: invalid configuration: {}:{line}:", path.display());
            assert!(stderr.starts_with(&expected), "{expected} in {stderr}");
            assert!(stderr.contains(&format!(": {key}: {message}")), "{stderr}");
        }
    }
}

/// 7b. The line named is the line of the bad key, also when it is not the first key of its
/// mapping, for values checked by edge's own deserialisers too (`log.filter`, durations, sizes,
/// `origin.url`, fractions), for which serde_yaml_ng reports the start of the enclosing mapping.
#[test]
fn config_errors_name_the_line_of_the_key_not_of_its_mapping() {
    let dir = TempDir::new().unwrap();
    let cases = [
        (
            "log:\n  access: true\n  format: json\n  filter: \"edge=notalevel\"\n",
            "log.filter",
            6,
        ),
        ("shutdown_timeout: soon\n", "shutdown_timeout", 3),
    ];
    let mut wrong = Vec::new();
    for (i, (tail, key, line)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, format!("origin:\n  url: http://127.0.0.1:9\n{tail}")).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args(["check", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!(": {key}: ")), "{stderr}");
        if !stderr.contains(&format!("{}:{line}:", path.display())) {
            wrong.push(format!("{key} is on line {line}: {}", stderr.trim()));
        }
    }
    assert!(
        wrong.is_empty(),
        "config errors name the wrong line:\n{}",
        wrong.join("\n")
    );
}

/// A disk tier edge may not open (here: made by root, opened by `nobody`) is not a broken one:
/// edge runs with the memory tier only and leaves the store as it is, and once edge may open it
/// again it serves what it holds. It was moved aside as broken, the whole cache with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tier_edge_may_not_open_is_left_as_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipped: running edge as another user needs root");
        return;
    }
    let origin = origin().await;
    origin.reply("/p", cacheable("kept\n"));
    let keep = TempDir::new().unwrap();
    let open = |path: &Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    };
    open(keep.path());
    let mut conf = Conf::new(keep.path(), &origin);
    let mut edge = Edge::start(TempDir::new().unwrap(), &mut conf, None).await;
    let (status, cache_status, _) = edge.get("/p").await;
    assert_eq!(status, 200);
    assert!(cache_status.contains("stored"), "{cache_status}");
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(10)).await.success());

    let dir = TempDir::new().unwrap();
    open(dir.path());
    conf.user = Some(65534);
    let mut edge = Edge::start(dir, &mut conf, None).await;
    let line = edge.wait_line("disk tier cannot be opened").await;
    assert!(
        line.contains("ERROR") && line.contains("Permission denied"),
        "{line}"
    );
    let (status, cache_status, body) = edge.get("/p").await;
    assert_eq!((status, body.as_str()), (200, "kept\n"));
    assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
    let names: Vec<String> = std::fs::read_dir(keep.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["store"], "nothing moved aside");
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(10)).await.success());

    conf.user = None;
    let edge = Edge::start(TempDir::new().unwrap(), &mut conf, None).await;
    let (status, cache_status, body) = edge.get("/p").await;
    assert_eq!((status, body.as_str()), (200, "kept\n"));
    assert!(cache_status.contains("detail=disk"), "{cache_status}");
    assert_eq!(origin.hits("/p"), 2);
}

/// A file system with less free than `cache.disk.min_free` holds the disk tier to (next to)
/// nothing: a warning says so, where responses went on saying `stored` (in memory) and nothing
/// else told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tier_held_back_by_min_free_is_named_in_a_warning() {
    let origin = origin().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    conf.min_free = Some("1000TiB".to_owned());
    let edge = Edge::start(dir, &mut conf, None).await;
    let line = edge
        .wait_line("little room beyond cache.disk.min_free")
        .await;
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("holds at most 0 bytes"), "{line}");
}

/// With `log.format: json`, the error that stops edge from running is a JSON line too (a port
/// in use was a plain-text line at the end of a JSON log).
#[test]
fn a_fatal_error_is_a_json_line_when_logs_are_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("edge.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{port}\norigin:\n  url: http://127.0.0.1:9\n\
         cache:\n  disk:\n    path: {}\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  format: json\n",
        dir.path().join("store").display()
    );
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|_| panic!("{stderr}"));
    assert_eq!(line["level"], "ERROR", "{last}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot listen on"), "{last}");
    drop(taken);
}

/// Signals sent while the tiers are still opening (here a second node waits for a disk tier
/// another holds) wait for their handlers: SIGUSR1 is ignored, and SIGTERM stops the node with
/// exit 0 once it is up. Both ended the process (138, 143).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_sent_while_the_tiers_open_are_handled() {
    let origin = origin().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    let _first = Edge::start(dir, &mut conf, None).await;

    // A node on the same store, sent `signal` 300 ms after it starts; its stderr.
    let second = |signal: &'static str| {
        let dir = TempDir::new().unwrap();
        let mut other = Conf::new(dir.path(), &origin);
        other.store = conf.store.clone();
        let config = dir.path().join("edge.yaml");
        std::fs::write(&config, other.yaml()).unwrap();
        let log = dir.path().join("stderr.log");
        let process = Running(
            Command::new(env!("CARGO_BIN_EXE_edge"))
                .args(["--config", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .env_remove("RUST_LOG")
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(300));
        let pid = process.0.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        (process, log, dir)
    };
    let stderr = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();

    let (mut process, log, _dir) = second("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "edge did not stop: {}",
            stderr(&log)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status}: {}", stderr(&log));
    assert!(
        stderr(&log).contains("in use by another process"),
        "{}",
        stderr(&log)
    );
    assert!(stderr(&log).contains("edge stopped"), "{}", stderr(&log));

    let (mut process, log, _dir) = second("-USR1");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stderr(&log).contains("SIGUSR1") {
        assert!(
            process.0.try_wait().unwrap().is_none(),
            "ended: {}",
            stderr(&log)
        );
        assert!(
            Instant::now() < deadline,
            "no SIGUSR1 line: {}",
            stderr(&log)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(process.0.try_wait().unwrap().is_none(), "still running");
}

/// The soft limit on open files, and the hard one, of process `pid` (`None`: unlimited).
fn open_files_limits(pid: &str) -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = (limits.lines())
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files limit in\n{limits}"))
        .to_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let limit = |field: &str| field.parse::<u64>().ok();
    (limit(fields[3]), limit(fields[4]))
}

/// Started with a soft limit on open files below its hard one (as systemd starts services: 1024
/// and 524288), edge raises the soft limit to the hard one: at 1024, client connections, origin
/// connections (`origin.max_connections`, 1024) and disk files share too few, and past them
/// every origin request failed as `origin-unreachable` (`Too many open files`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let (_, hard) = open_files_limits("self");
    if hard.is_some_and(|hard| hard <= 256) {
        eprintln!("skipped: the hard limit on open files is {hard:?}, not above 256");
        return;
    }
    let origin = origin().await;
    origin.reply("/p", cacheable("p\n"));
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin);
    conf.soft_open_files = Some(256);
    let edge = Edge::start(dir, &mut conf, None).await;
    assert_eq!(edge.get("/p").await.0, 200);
    let (soft, hard_of_edge) = open_files_limits(&edge.pid());
    assert_eq!(hard_of_edge, hard);
    match hard {
        Some(_) => assert_eq!(soft, hard, "edge's soft limit on open files"),
        // An unlimited hard limit is not taken as the soft one: the kernel refuses it.
        None => assert_eq!(soft, Some(256)),
    }
}

/// With `request_buffering` and no temporary file to be had (here `TMPDIR` names no directory),
/// an upload streams to the origin as it would without; one whose client expects `100-continue`
/// has been told to go on by edge, which read its first bytes, so its `Expect` goes no further.
/// Sent on, it had edge hold the body back until the origin said `100 Continue`, or for a second
/// from an origin that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_request_buffering_and_no_temporary_file_an_upload_streams_without_its_expect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let size = 200_000;
    // Reads a request head and its body of `Content-Length` bytes, answers 201 and sends the
    // head on; sends no `100 Continue`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, mut heads_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut read = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        while read.len() < size || !read.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
            let end = read.windows(4).position(|w| w == b"\r\n\r\n");
            if end.is_some_and(|end| read.len() >= end + 4 + size) {
                break;
            }
        }
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nstored";
        socket.write_all(answer).await.unwrap();
        heads
            .send(String::from_utf8_lossy(&read[..1000]).to_lowercase())
            .unwrap();
        std::future::pending::<()>().await;
    });
    let origin = origin().await;
    let dir = TempDir::new().unwrap();
    let mut conf = Conf::new(dir.path(), &origin).extra("request_buffering: true\n");
    conf.origin = format!("http://{addr}");
    conf.temp_dir = Some(dir.path().join("missing"));
    let edge = Edge::start(dir, &mut conf, Some("edge=warn")).await;

    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", edge.listen))
        .await
        .unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: edge\r\nContent-Length: {size}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    async fn read_until(client: &mut tokio::net::TcpStream, answer: &mut Vec<u8>, end: &[u8]) {
        let mut chunk = [0u8; 4096];
        while !answer.windows(end.len()).any(|w| w == end) {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let mut answer = Vec::new();
    read_until(&mut client, &mut answer, b"\r\n\r\n").await;
    let first = String::from_utf8_lossy(&answer).into_owned();
    assert!(first.starts_with("HTTP/1.1 100"), "{first}");
    let started = Instant::now();
    client.write_all(&vec![b'u'; size]).await.unwrap();
    answer.clear();
    read_until(&mut client, &mut answer, b"stored").await;
    let last = String::from_utf8_lossy(&answer).into_owned();
    assert!(last.starts_with("HTTP/1.1 201"), "{last}");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let head = heads_rx.recv().await.unwrap();
    assert!(!head.contains("expect:"), "{head}");
    assert!(
        edge.stderr().contains("no temporary file for an upload"),
        "{}",
        edge.stderr()
    );
}
