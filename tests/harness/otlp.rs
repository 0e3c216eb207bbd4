//! An OTLP/HTTP collector for tests: the services export to it (OTEL_EXPORTER_OTLP_PROTOCOL
//! = http/json) and a test reads back the spans and metric points they sent, by service.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
}

#[derive(Debug, Clone)]
pub struct Point {
    pub service: String,
    pub metric: String,
    pub attributes: BTreeMap<String, String>,
    /// A gauge's or sum's value (OTLP JSON sends 64-bit integers as strings); None for a
    /// histogram.
    pub value: Option<f64>,
}

pub struct Collector {
    pub endpoint: String,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    _rt: tokio::runtime::Runtime,
}

impl Collector {
    pub fn start() -> Collector {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let received: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let store = received.clone();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/v1/{signal}",
            axum::routing::post(move |axum::extract::Path(signal): axum::extract::Path<String>, body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(v) => {
                            store.lock().unwrap().push((signal, v));
                            (axum::http::StatusCode::OK, "{}")
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "not OTLP JSON"),
                    }
                }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint: format!("http://{addr}"), received, _rt: rt }
    }

    /// The environment that points a service here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ]
    }

    fn of(&self, signal: &str) -> Vec<Value> {
        self.received.lock().unwrap().iter().filter(|(s, _)| s == signal).map(|(_, v)| v.clone()).collect()
    }

    pub fn spans(&self) -> Vec<Span> {
        let mut out = vec![];
        for body in self.of("traces") {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = service_of(&rs["resource"]);
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        out.push(Span {
                            service: service.clone(),
                            name: s["name"].as_str().unwrap_or_default().into(),
                            trace_id: s["traceId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                            span_id: s["spanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                            parent_span_id: s["parentSpanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                        });
                    }
                }
            }
        }
        out
    }

    pub fn points(&self) -> Vec<Point> {
        let mut out = vec![];
        for body in self.of("metrics") {
            for rm in body["resourceMetrics"].as_array().into_iter().flatten() {
                let service = service_of(&rm["resource"]);
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for m in sm["metrics"].as_array().into_iter().flatten() {
                        let name = m["name"].as_str().unwrap_or_default().to_string();
                        for kind in ["sum", "gauge", "histogram"] {
                            for dp in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                                out.push(Point {
                                    service: service.clone(),
                                    metric: name.clone(),
                                    attributes: attributes(&dp["attributes"]),
                                    value: number(&dp["asInt"]).or_else(|| number(&dp["asDouble"])),
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

fn attributes(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let val = &a["value"];
            let s = val["stringValue"]
                .as_str()
                .map(String::from)
                .or_else(|| val["intValue"].as_str().map(String::from))
                .or_else(|| val["intValue"].as_i64().map(|n| n.to_string()))
                .unwrap_or_else(|| val.to_string());
            (a["key"].as_str().unwrap_or_default().to_string(), s)
        })
        .collect()
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn service_of(resource: &Value) -> String {
    attributes(&resource["attributes"]).get("service.name").cloned().unwrap_or_default()
}
