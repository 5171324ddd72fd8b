//! Metrics on every node, with the ecosystem's crate (`prometheus-client`):
//! a page is built at each scrape from what the node knows then, and
//! written in the Prometheus text format, or in OpenMetrics (with `# EOF`)
//! when the scraper asks for it (`Accept: application/openmetrics-text`).
//! Every node serves its own metrics at `GET /metrics` (a Service Engine to a
//! caller with a cluster certificate); a controller adds the cluster's.

use std::sync::atomic::AtomicU64;

use axum::{
    body::Body,
    http::{HeaderMap, Request, header},
    response::{IntoResponse, Response},
};
use common::errors::ErrorKind;
use prometheus_client::{
    metrics::{counter::Counter, family::Family as PcFamily, gauge::Gauge},
    registry::Registry,
};

use crate::node::NodeCtx;

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A total that only grows (its samples are named `NAME_total`).
    Counter,
}

/// A page of metrics being built.
#[derive(Debug, Default)]
pub struct Page {
    registry: Registry,
}

/// One family of a page: its samples, by labels.
#[derive(Debug)]
pub enum Family {
    /// Gauges.
    Gauge(PcFamily<Labels, Gauge<f64, AtomicU64>>),
    /// Counters.
    Counter(PcFamily<Labels, Counter<f64, AtomicU64>>),
}

impl Family {
    /// Sets the sample with `labels` to `value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        match self {
            Family::Gauge(f) => {
                f.get_or_create(&labels).set(value);
            }
            Family::Counter(f) => {
                f.get_or_create(&labels).inc_by(value);
            }
        }
    }
}

impl Page {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the family `name` (a counter's name ends in `_total`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family {
        match kind {
            Kind::Gauge => {
                let f = PcFamily::<Labels, Gauge<f64, AtomicU64>>::default();
                self.registry.register(name, help, f.clone());
                Family::Gauge(f)
            }
            Kind::Counter => {
                let f = PcFamily::<Labels, Counter<f64, AtomicU64>>::default();
                self.registry.register(name.strip_suffix("_total").unwrap_or(name), help, f.clone());
                Family::Counter(f)
            }
        }
    }

    /// The page in the format `headers` ask for, with its content type.
    pub fn render(&self, headers: &HeaderMap) -> (&'static str, String) {
        let mut out = String::new();
        if wants_openmetrics(headers) {
            prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing into a String");
            (OPENMETRICS_TEXT, out)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
                .expect("writing into a String");
            (PROMETHEUS_TEXT, out)
        }
    }
}

/// Whether the scraper asks for OpenMetrics.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("application/openmetrics-text")))
}

fn bool01(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Adds this node's own metrics to `page`: what it runs, its slots and
/// boot record, the images it holds and receives, what it relayed, and the
/// commands it ran by kind and outcome (health gates among them).
pub fn node(page: &mut Page, ctx: &NodeCtx) {
    let s = &ctx.settings;
    // What a heartbeat reports, read without sending one (a heartbeat
    // numbers itself: a scrape must not take a number).
    let (pending, _) = ctx.slot_state();
    let node = s.node_id.as_str();
    let mut f = page.family("molt_agent_info", Kind::Gauge, "This agent: its node, role, version and kind");
    f.sample(
        &[
            ("node", node),
            ("role", s.role.as_str()),
            ("version", &ctx.version.to_string()),
            ("deployment", s.deployment.as_str()),
            ("se_group", s.se_group.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    let slots = common::slots::Slots::new(&s.data_dir);
    let record = slots.active().ok().map(|(r, _)| r);
    let mut f = page.family(
        "molt_agent_slot_info",
        Kind::Gauge,
        "The version each slot holds; active=true for the one the boot record starts",
    );
    for slot in [common::slots::Slot::A, common::slots::Slot::B] {
        if let Ok(m) = slots.slot_manifest(slot) {
            let active = record.as_ref().is_some_and(|r| r.active == slot);
            let name = slot.to_string();
            f.sample(&[("slot", &name), ("version", &m.version.to_string()), ("active", &active.to_string())], 1.0);
        }
    }
    let mut f = page.family(
        "molt_agent_on_trial",
        Kind::Gauge,
        "1 while the running slot is not committed (the boot loader falls back after its attempts)",
    );
    f.sample(&[], bool01(pending));
    let mut f = page.family("molt_agent_boot_attempts", Kind::Gauge, "Boots of the slot on trial so far");
    f.sample(&[], record.as_ref().map_or(0.0, |r| f64::from(r.attempts)));
    let mut f = page.family("molt_agent_disk_free_bytes", Kind::Gauge, "Free space on the data disk");
    f.sample(&[], common::fsutil::disk_free(&s.data_dir).unwrap_or(0) as f64);
    let mut f = page.family("molt_agent_staged_image_info", Kind::Gauge, "Each verified image this node holds");
    for i in &ctx.stager.staged() {
        f.sample(&[("version", &i.version.to_string()), ("sha256", &i.sha256.to_hex())], 1.0);
    }
    let mut f =
        page.family("molt_agent_staging_received_bytes", Kind::Gauge, "Bytes received of each image being staged");
    let mut total = page.family("molt_agent_staging_size_bytes", Kind::Gauge, "The size of each image being staged");
    for t in &ctx.stager.transfers() {
        let sha = t.sha256.to_hex();
        f.sample(&[("sha256", &sha)], t.received as f64);
        total.sample(&[("sha256", &sha)], t.total as f64);
    }
    let mut f = page.family(
        "molt_agent_relayed_bytes_total",
        Kind::Counter,
        "Image bytes this node has relayed to other nodes since it started",
    );
    f.sample(&[], ctx.bytes_relayed.load(std::sync::atomic::Ordering::Relaxed) as f64);
    let mut f = page.family(
        "molt_agent_commands",
        Kind::Gauge,
        "Commands this node holds a result of, by kind and state (kind=gate: health gates)",
    );
    let mut counts = std::collections::BTreeMap::<(String, String), u32>::new();
    for r in &ctx.executor.results() {
        let kind = r.id.split('-').next().unwrap_or_default().to_owned();
        *counts.entry((kind, format!("{:?}", r.state).to_lowercase())).or_default() += 1;
    }
    for ((kind, state), n) in counts {
        f.sample(&[("kind", &kind), ("state", &state)], f64::from(n));
    }
}

/// `GET /metrics` of a Service Engine: its own metrics, to a caller with a
/// cluster certificate (a scraper configured with one, e.g. `admin.pem`).
pub async fn service_engine(ctx: std::sync::Arc<NodeCtx>, req: Request<Body>) -> Response {
    let certified = req.extensions().get::<crate::auth::Peer>().is_some_and(|p| p.identity.is_some());
    if !certified {
        return crate::http::error(
            ErrorKind::Unauthenticated,
            "a Service Engine's metrics need a client certificate of the cluster CA (e.g. admin.pem)",
        );
    }
    let mut page = Page::new();
    node(&mut page, &ctx);
    let (content_type, text) = page.render(req.headers());
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_prometheus_text_or_openmetrics_as_asked() {
        let mut page = Page::new();
        let mut g = page.family("molt_test_gauge", Kind::Gauge, "A gauge");
        g.sample(&[("node", "c1"), ("quote", "a \"b\"")], 2.5);
        let mut c = page.family("molt_test_bytes_total", Kind::Counter, "A counter");
        c.sample(&[], 7.0);
        let (ct, text) = page.render(&HeaderMap::new());
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert!(text.contains("# TYPE molt_test_gauge gauge"), "{text}");
        assert!(text.contains("molt_test_gauge{node=\"c1\",quote=\"a \\\"b\\\"\"} 2.5"), "{text}");
        assert!(
            text.contains("# TYPE molt_test_bytes_total counter") || text.contains("# TYPE molt_test_bytes counter"),
            "{text}"
        );
        assert!(text.contains("molt_test_bytes_total 7"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/openmetrics-text; version=1.0.0".parse().unwrap());
        let (ct, text) = page.render(&h);
        assert_eq!(ct, OPENMETRICS_TEXT);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
