//! The admin listener over a real socket on loopback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_rt::admin::{AdminHandler, AdminServer};
use underpass_rt::metrics::prometheus_client::metrics::counter::Counter;
use underpass_rt::metrics::prometheus_client::registry::Registry;
use underpass_rt::metrics::{encode, register_build_info};

struct Handler {
    ready: AtomicBool,
    registry: Registry,
}

impl AdminHandler for Handler {
    fn ready(&self) -> (bool, serde_json::Value) {
        let ready = self.ready.load(Ordering::SeqCst);
        (ready, serde_json::json!({ "ready": ready }))
    }
    fn metrics(&self) -> String {
        encode(&self.registry)
    }
    fn route(&self, _method: &http::Method, path: &str) -> Option<(u16, serde_json::Value)> {
        (path == "/v1/thing").then(|| (200, serde_json::json!({"thing": 1})))
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap(); // loopback
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn endpoints_answer_and_dropping_stops_the_listener() {
    let mut registry = Registry::with_prefix("underpass");
    register_build_info(&mut registry, "test");
    let counter = Counter::<u64>::default();
    registry.register("things", "Things seen", counter.clone());
    counter.inc_by(3);
    let handler = Arc::new(Handler {
        ready: AtomicBool::new(false),
        registry,
    });
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), handler.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(
        get(addr, "/healthz").await,
        (200, "{\"status\":\"ok\"}\n".into())
    );
    assert_eq!(get(addr, "/ready").await.0, 503);
    handler.ready.store(true, Ordering::SeqCst);
    assert_eq!(
        get(addr, "/ready").await,
        (200, "{\"ready\":true}\n".into())
    );
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("underpass_things_total 3"), "{metrics}");
    assert!(
        metrics.contains("underpass_build_info{program=\"test\",version=\""),
        "{metrics}"
    );
    assert_eq!(get(addr, "/v1/thing").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);
    drop(server);
    // The accept loop ends at its next turn; new connections are then refused.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "the listener still accepts after the server was dropped"
    );
}
