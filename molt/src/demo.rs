//! `molt demo`: the main job on a throwaway local cluster — up, build a
//! package from this binary's agents, upgrade, report, down.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::DeploymentKind;
use molt::{
    client::{Api, Connection},
    local::{self, LocalSpec},
    render, upgrade,
};

use crate::{Failure, explain};

pub async fn demo(dir: Option<PathBuf>) -> Result<(), Failure> {
    let keep = dir.is_some();
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let result = demo_in(&dir, keep).await;
    if !keep {
        let _ = local::down(&dir.join("cluster"));
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn tempdir() -> Result<PathBuf, Failure> {
    let d = std::env::temp_dir().join(format!("molt-demo-{}", common::types::random_hex(4)));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn demo_in(dir: &Path, keep: bool) -> Result<(), Failure> {
    let bin_dir = local::own_bin_dir();
    let spec = LocalSpec {
        dir: dir.join("cluster"),
        controllers: 3,
        groups: vec!["g1:active-active:2".parse()?, "g2:n-plus-m:2".parse()?],
        version: "1.0.0".parse().expect("valid"),
        subnet: [127, 77, 0],
        heartbeat_ms: 500,
        fetch_rate_limit: None,
        bin_dir: bin_dir.clone(),
        port: common::DEFAULT_PORT,
        self_revert_secs: None,
        reform_timeout_secs: None,
        deployment: local::LocalDeployment::Vm,
        cluster: "local".into(),
    };
    println!(
        "== 1. a local cluster: 3 controllers, SE groups g1 (active-active, 2 SEs) and g2 (N+M, 2 SEs), version 1.0.0"
    );
    let t = std::time::Instant::now();
    local::up(&spec, Duration::from_secs(60)).await?;
    println!("   up in {:.1} s, every node in its own PID namespace", t.elapsed().as_secs_f64());
    let api = Api::new(&Connection::resolve(Some(&spec.dir), None, None, None)?)?;
    print!("{}", render::cluster(&api.get("/api/cluster").await?));

    println!("\n== 2. a 2.0.0 package from this build's binaries");
    let payload = dir.join("payload");
    std::fs::create_dir_all(payload.join("bin"))?;
    for b in ["controller-agent", "se-agent"] {
        std::fs::copy(bin_dir.join(b), payload.join("bin").join(b))?;
    }
    let pkg = dir.join("controller.pkg");
    let info = common::package::build(
        &payload,
        "2.0.0".parse().expect("valid"),
        "1.0.0".parse().expect("valid"),
        DeploymentKind::Vm,
        &pkg,
    )?;
    println!("   {}  {} ({})", info.sha256, pkg.display(), render::bytes(info.size));

    println!("\n== 3. a config object, to see it survive: virtual service web in g1");
    api.post("/api/virtualservice", &serde_json::json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2}))
        .await?;

    println!("\n== 4. molt upgrade system image_path {}", pkg.display());
    let t = std::time::Instant::now();
    let image = upgrade::image_path_on_leader(&api, &pkg.display().to_string(), false).await?;
    let checks = api
        .post("/api/cluster/upgrade", &serde_json::json!({"image_path": image, "prechecks_only": true}))
        .await
        .map_err(explain)?;
    print!("{}", render::prechecks(&checks));
    api.post("/api/cluster/upgrade", &serde_json::json!({"image_path": image})).await.map_err(explain)?;
    let end = upgrade::follow(&api, false).await?;
    print!("{}", render::status(&end));
    if end["state"] != "completed" {
        return Err(Failure(format!("the demo's upgrade did not complete: {}", end["reason"]), 1));
    }
    println!(
        "   every controller and SE rebooted into 2.0.0 (reboot(2) in its own PID namespace) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    println!("\n== 5. molt show cluster, and the configuration after the upgrade");
    print!("{}", render::cluster(&api.get("/api/cluster").await?));
    println!("   virtual services: {}", api.get("/api/virtualservice").await?);
    let cluster = spec.dir.display();
    if keep {
        let leader = molt::client::ClusterFile::load(&spec.dir)?.leader_url;
        println!("\n== the cluster stays up");
        println!(
            "   web page  {leader}/  (log in with the contents of {cluster}/pki/admin.token; trust {cluster}/pki/ca.pem)"
        );
        println!("   shell     molt --cluster-dir {cluster} shell");
        println!(
            "   metrics   curl --cacert {cluster}/pki/ca.pem -H \"Authorization: Bearer $(cat {cluster}/pki/admin.token)\" {leader}/metrics"
        );
        println!("   down      sudo molt local down --dir {cluster}");
    } else {
        println!("\n(`molt demo --dir DIR` keeps the cluster up to try the web page, `molt shell` and /metrics)");
    }
    Ok(())
}
