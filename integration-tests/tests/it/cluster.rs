//! Sessions, heartbeats and the cluster view.

use integration_tests::{TestCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_heartbeats_with_role_version_and_group() {
    let c = TestCluster::builder().controllers(3).group("g1", "active-active", 2).start().await;
    let v = c.api().get("/api/cluster").await.unwrap();
    assert_eq!(v["cluster"], "local");
    assert_eq!(v["leader"], "c1");
    let nodes = v["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c1", "c2", "c3", "g1-se1", "g1-se2"], "controllers first");
    for n in nodes {
        assert_eq!(n["state"], "up", "{n}");
        assert_eq!(n["version"], "1.0.0", "{n}");
        assert_eq!(n["deployment"], "vm");
        let se = n["id"].as_str().unwrap().starts_with("g1");
        assert_eq!(n["role"], if se { "se" } else { "controller" });
        assert_eq!(n["se_group"], if se { serde_json::json!("g1") } else { serde_json::Value::Null });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_down_and_rejoins_with_a_new_boot_id() {
    let mut c = TestCluster::builder().group("g1", "active-active", 2).heartbeat_ms(200).start().await;
    let before = c.node_view("g1-se1").await["boot_id"].clone();
    c.stop_node("g1-se1").await;
    let started = std::time::Instant::now();
    eventually(5, "g1-se1 shown down", async || c.node_view("g1-se1").await["state"] == "down").await;
    // The bound: down within 3 heartbeat intervals (plus polling slack).
    assert!(started.elapsed().as_millis() < 3 * 200 + 300, "took {:?}", started.elapsed());
    assert_eq!(c.node_view("g1-se2").await["state"], "up", "the other SE is unaffected");
    c.start_node("g1-se1").await;
    eventually(10, "g1-se1 back up", async || c.node_view("g1-se1").await["state"] == "up").await;
    assert_ne!(c.node_view("g1-se1").await["boot_id"], before, "a restart is a new boot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_controller_points_rest_clients_at_the_leader() {
    let c = TestCluster::builder().controllers(3).start().await;
    let mut conn = molt::client::Connection::resolve(Some(&c.cluster_dir()), None, None, None).unwrap();
    let c2 = c.file.nodes.iter().find(|n| n.id == "c2").unwrap();
    conn.url = format!("https://{}", c2.addr);
    let err = molt::client::Api::new(&conn).unwrap().get("/api/cluster").await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not the leader") && msg.contains(&c.file.nodes[0].addr), "{msg}");
}
