//! Prometheus metrics: one recorder per process (the `metrics` facade, so
//! every crate records with `metrics::counter!` and friends, and nothing is
//! recorded until a recorder is installed), rendered in the Prometheus text
//! format on `GET /metrics` of its own listener (`telemetry.metrics_listen`,
//! off by default; keep it on loopback or a private network).
//!
//! The same listener answers the orchestrator's probes:
//! * `GET /livez`: 200 while the process serves HTTP at all. It never looks
//!   at the database, so a database outage does not get every pod restarted.
//! * `GET /readyz`: 200 when the process's [`Readiness`] check passes (the
//!   store answers `SELECT 1` in time), else 503 with the reason, so a
//!   load balancer stops sending sessions that could only fail.
//!
//! Conventions: names start with `mailroom_`, counters end in `_total`,
//! durations are `_seconds` histograms, and labels take a few fixed values
//! (a service, an outcome, a command), never an address or a user.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (a second stack in the
/// same process, as in tests, shares it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .expect("fixed buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; this
            // handle then simply stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The readiness check of `GET /readyz`: `Ok` when ready, else why not.
/// It bounds its own time (a probe must answer before its timeout).
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves `GET /metrics`, `/livez` and `/readyz` on `listener` until `stop`
/// completes. Anything else gets 404; requests are read up to 8 KiB and
/// answered once.
pub async fn serve(listener: TcpListener, ready: Readiness, stop: impl Future<Output = ()>) {
    let handle = handle();
    let accept = async {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let handle = handle.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read = async {
                    while n < buf.len() {
                        match tcp.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                n += k;
                                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                        }
                    }
                };
                if tokio::time::timeout(std::time::Duration::from_secs(10), read)
                    .await
                    .is_err()
                {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request
                    .strip_prefix("GET ")
                    .and_then(|r| r.split([' ', '?']).next())
                    .unwrap_or_default();
                let (status, body) = match path {
                    "/metrics" => ("200 OK", handle.render()),
                    "/livez" => ("200 OK", "alive\n".to_string()),
                    "/readyz" => match ready().await {
                        Ok(()) => ("200 OK", "ready\n".to_string()),
                        Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                    },
                    _ => (
                        "404 Not Found",
                        "only GET /metrics, /livez and /readyz are served here\n".to_string(),
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = stop => {}
    }
}

/// Records the time until it is dropped in the histogram `name` (a
/// `_seconds` name): one line at the top of a handler times every return.
#[derive(Debug)]
pub struct Timer {
    name: &'static str,
    started: std::time::Instant,
}

impl Timer {
    /// Starts timing for the histogram `name`.
    pub fn start(name: &'static str) -> Timer {
        Timer {
            name,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        metrics::histogram!(self.name).record(self.started.elapsed().as_secs_f64());
    }
}
