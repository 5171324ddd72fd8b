//! `molt demo`: the main job on a throwaway local cluster — up, build a
//! package from this binary's agents, upgrade, report, down.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::DeploymentKind;
use molt::{
    client::{Api, Connection},
    local::{self, LocalDeployment, LocalSpec},
    molt_api::{
        requests::{Started, UpgradeRequest},
        status::OpState,
    },
    render, upgrade,
};

use crate::{Failure, explain};

pub async fn demo(dir: Option<PathBuf>, deployment: LocalDeployment) -> Result<(), Failure> {
    let keep = dir.is_some();
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let result = demo_in(&dir, keep, deployment).await;
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

/// How the demo's nodes run, in words.
fn how(deployment: LocalDeployment) -> &'static str {
    match deployment {
        LocalDeployment::Vm => "every node in its own PID namespace",
        LocalDeployment::Docker => "every node a Docker container molt-local-NODE",
        LocalDeployment::Mixed => "controllers in PID namespaces, SEs as Docker containers",
    }
}

async fn demo_in(dir: &Path, keep: bool, deployment: LocalDeployment) -> Result<(), Failure> {
    let bin_dir = local::own_bin_dir();
    let spec = LocalSpec {
        controllers: 3,
        groups: vec!["g1:active-active:2".parse()?, "g2:n-plus-m:2".parse()?],
        heartbeat_ms: 500,
        deployment,
        ..LocalSpec::new(dir.join("cluster"), bin_dir.clone(), [127, 77, 0])
    };
    println!(
        "== 1. a local cluster: 3 controllers, SE groups g1 (active-active, 2 SEs) and g2 (N+M, 2 SEs), version 1.0.0"
    );
    let t = std::time::Instant::now();
    local::up(&spec, Duration::from_secs(60)).await?;
    println!("   up in {:.1} s, {}", t.elapsed().as_secs_f64(), how(deployment));
    let api = Api::new(&Connection::resolve(Some(&spec.dir), None, None, None)?)?;
    print!("{}", render::cluster(&api.get_as("/api/cluster").await?));

    println!("\n== 2. 2.0.0 packages from this build's binaries");
    let payload = dir.join("payload");
    std::fs::create_dir_all(payload.join("bin"))?;
    for b in ["controller-agent", "se-agent"] {
        std::fs::copy(bin_dir.join(b), payload.join("bin").join(b))?;
    }
    let (v2, v1) = ("2.0.0".parse().expect("valid"), "1.0.0".parse().expect("valid"));
    let kinds: &[DeploymentKind] = match deployment {
        LocalDeployment::Vm => &[DeploymentKind::Vm],
        LocalDeployment::Docker => &[DeploymentKind::Docker],
        LocalDeployment::Mixed => &[DeploymentKind::Vm, DeploymentKind::Docker],
    };
    let mut pkgs = vec![];
    for kind in kinds {
        let pkg = dir.join(kind.package_file_name());
        let info = match kind {
            DeploymentKind::Vm => common::package::build(&payload, v2, v1, *kind, &pkg)?,
            DeploymentKind::Docker => molt::docker::build_package(&payload, v2, v1, &pkg, None).await?,
        };
        println!("   {}  {} ({})", info.sha256, pkg.display(), render::bytes(info.size));
        pkgs.push(pkg);
    }

    println!("\n== 3. a config object, to see it survive: virtual service web in g1");
    api.post("/api/virtualservice", &serde_json::json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2}))
        .await?;

    let words: Vec<String> =
        pkgs.iter().zip(["image_path", "docker_image_path"]).map(|(p, w)| format!("{w} {}", p.display())).collect();
    println!("\n== 4. molt upgrade system {}", words.join(" "));
    let t = std::time::Instant::now();
    let mut paths = vec![];
    for p in pkgs {
        paths.push(upgrade::image_path_on_leader(&api, &p.display().to_string(), false).await?);
    }
    let mut body = UpgradeRequest::new(paths[0].clone());
    body.docker_image_path = paths.get(1).cloned();
    body.prechecks_only = true;
    match api.post_as("/api/cluster/upgrade", &body).await.map_err(explain)? {
        Started::Plan(plan) => print!("{}", render::prechecks(&plan)),
        Started::Status(_) => {
            return Err(Failure("the leader started an upgrade that asked for pre-checks only".into(), 1));
        }
    }
    body.prechecks_only = false;
    let _: Started = api.post_as("/api/cluster/upgrade", &body).await.map_err(explain)?;
    let end = upgrade::follow(&api, false).await?;
    print!("{}", render::status(&end));
    if end.state != OpState::Completed {
        return Err(Failure(format!("the demo's upgrade did not complete: {}", end.reason), 1));
    }
    println!(
        "   every controller and SE rebooted into 2.0.0 ({}) in {:.1} s",
        match deployment {
            LocalDeployment::Vm => "reboot(2) in its own PID namespace",
            LocalDeployment::Docker => "docker load, then a new container of the 2.0.0 tag",
            LocalDeployment::Mixed => "controllers by reboot(2), SEs as new containers",
        },
        t.elapsed().as_secs_f64()
    );

    println!("\n== 5. molt show cluster, and the configuration after the upgrade");
    print!("{}", render::cluster(&api.get_as("/api/cluster").await?));
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
