//! The SE data plane: every virtual service placed on this SE is a real
//! listener at `SE_ADDRESS:PORT` answering `GET /` with 200 and a body that
//! names the service, the SE and its version — so that "non-disruptive" is
//! measured with traffic, not asserted.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use common::session::ServiceSpec;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The listeners of one SE.
#[derive(Debug, Clone)]
pub struct DataPlane {
    ip: IpAddr,
    banner: String,
    serving: Arc<Mutex<BTreeMap<String, (u16, CancellationToken)>>>,
    /// The ticket of the last placement applied; held while one applies, so
    /// placements apply one at a time and an older one never undoes a newer.
    applied: Arc<tokio::sync::Mutex<u64>>,
    shutdown: CancellationToken,
}

impl DataPlane {
    /// A data plane on `ip` for SE `node` running `version`.
    pub fn new(ip: IpAddr, node: &str, version: &str, shutdown: CancellationToken) -> Self {
        Self {
            ip,
            banner: format!("on {node} version {version}"),
            serving: Arc::default(),
            applied: Arc::default(),
            shutdown,
        }
    }

    /// The address its services listen on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The services answering now.
    pub fn serving(&self) -> Vec<String> {
        self.serving.lock().expect("dataplane lock").keys().cloned().collect()
    }

    /// Serves exactly `services`: starts missing listeners, stops the others.
    /// `ticket` numbers placements in the order they arrived: one older than
    /// the last applied is superseded and changes nothing.
    pub async fn apply(&self, ticket: u64, services: &[ServiceSpec]) -> Result<String, String> {
        let mut applied = self.applied.lock().await;
        if ticket < *applied {
            return Ok(format!("superseded by a newer placement (ticket {ticket} < {})", *applied));
        }
        *applied = ticket;
        let wanted: BTreeMap<&str, u16> = services.iter().map(|s| (s.name.as_str(), s.port)).collect();
        {
            let mut serving = self.serving.lock().expect("dataplane lock");
            serving.retain(|name, (port, token)| {
                let keep = wanted.get(name.as_str()) == Some(port);
                if !keep {
                    token.cancel();
                    info!(service = %name, "stopped serving");
                }
                keep
            });
        }
        let mut errors = vec![];
        for s in services {
            if self.serving.lock().expect("dataplane lock").contains_key(&s.name) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, s.port);
            match bind(addr).await {
                Ok(listener) => {
                    let token = self.shutdown.child_token();
                    tokio::spawn(serve(
                        listener,
                        format!("virtual service {} {}\n", s.name, self.banner),
                        token.clone(),
                    ));
                    self.serving.lock().expect("dataplane lock").insert(s.name.clone(), (s.port, token));
                    info!(service = %s.name, %addr, "serving");
                }
                Err(e) => errors.push(format!("{} on {addr}: {e}", s.name)),
            }
        }
        if errors.is_empty() {
            Ok(format!("serving {}", self.serving().join(", ")))
        } else {
            Err(format!("cannot serve {}", errors.join("; ")))
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // A listener that just stopped may hold the port for a moment.
    let mut last = None;
    for _ in 0..20 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(last.expect("tried at least once"))
}

async fn serve(listener: tokio::net::TcpListener, body: String, stop: CancellationToken) {
    let body = Bytes::from(body);
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let body = body.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn.serve_connection(TokioIo::new(tcp), svc) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Found by the simulation: two placements in flight, the older one
    /// applied last, took a service off the only SE still serving it.
    #[tokio::test]
    async fn an_older_placement_never_undoes_a_newer_one() {
        let dp = DataPlane::new("127.0.0.1".parse().unwrap(), "se1", "1.0.0", CancellationToken::new());
        let (a, b) = (free_port(), free_port());
        let spec = |name: &str, port| ServiceSpec { name: name.into(), port };
        dp.apply(2, &[spec("a", a), spec("b", b)]).await.unwrap();
        let late = dp.apply(1, &[spec("a", a)]).await.unwrap();
        assert!(late.contains("superseded"), "{late}");
        assert_eq!(dp.serving(), ["a", "b"]);
        dp.apply(3, &[spec("a", a)]).await.unwrap();
        assert_eq!(dp.serving(), ["a"]);
    }
}
