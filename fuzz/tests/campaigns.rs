//! 10,000 cases of every target, as CI runs them (a fixed seed per target,
//! so a failure replays with the printed command). Each campaign must reach
//! both verdicts, or its properties would be checked on nothing.

fn campaign(name: &str, seed: u64) {
    let target = molt_fuzz::target(name).expect("a target");
    let r = molt_fuzz::campaign(target, seed, 0, 10_000);
    let replays: Vec<String> = r
        .failures
        .iter()
        .take(5)
        .map(|f| format!("{}\n  replay: molt-fuzz --target {name} --seed {seed} --case {}", f.message, f.case))
        .collect();
    assert!(r.failures.is_empty(), "{} failures:\n{}", r.failures.len(), replays.join("\n"));
    assert!(r.accepted > 0 && r.accepted < r.cases, "{name}: {} of {} accepted", r.accepted, r.cases);
}

#[test]
fn package() {
    campaign("package", 0x6d6f_6c74_0001);
}

#[test]
fn manifest() {
    campaign("manifest", 0x6d6f_6c74_0002);
}

#[test]
fn rest() {
    campaign("rest", 0x6d6f_6c74_0003);
}

#[test]
fn heartbeat() {
    campaign("heartbeat", 0x6d6f_6c74_0004);
}

#[test]
fn node_toml() {
    campaign("node-toml", 0x6d6f_6c74_0005);
}

#[test]
fn the_binary_lists_every_target_and_refuses_an_unknown_one() {
    let bin = env!("CARGO_BIN_EXE_molt-fuzz");
    let out = std::process::Command::new(bin).arg("--list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for t in molt_fuzz::TARGETS {
        assert!(text.contains(t.name), "{text}");
    }
    let out = std::process::Command::new(bin).args(["--target", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the targets are package"));
    let out = std::process::Command::new(bin)
        .args(["--target", "manifest", "--cases", "50", "--seed", "7"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).trim_end().ends_with("cases: 50, failures: 0"));
}
