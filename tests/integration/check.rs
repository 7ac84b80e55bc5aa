//! `tts-worker check`, run as an operator would: it probes the API with the
//! key, so a wrong key fails the check instead of the first job.

use std::net::SocketAddr;

use segmind_sim::SimConfig;

use crate::common::stack_env;

async fn check_with_key(sim_key: &str, worker_key: &str) -> (bool, String) {
    let mut config = SimConfig::fast(sim_key);
    config.espeak = false;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(config, any, any).await.unwrap();
    let mut env = stack_env();
    env.retain(|(k, _)| !k.starts_with("TTS__SEGMIND__") && k != "SEGMIND_API_KEY");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
        .arg("check")
        .env_clear()
        .envs(env)
        .env("TTS__SEGMIND__BASE_URL", sim.base_url())
        .env("SEGMIND_API_KEY", worker_key)
        .output()
        .await
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stats = sim.stats();
    assert!(
        stats.submits_accepted == 0,
        "the probe must never run (and bill) a job"
    );
    (out.status.success(), stdout)
}

#[tokio::test]
async fn check_fails_on_a_wrong_api_key_and_passes_on_the_right_one() {
    let (ok, stdout) = check_with_key("the-real-key", "a-wrong-key").await;
    assert!(!ok, "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("segmind api"))
        .unwrap_or_else(|| panic!("no API line in\n{stdout}"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("401"), "{line}");
    assert!(!stdout.contains("a-wrong-key"), "the key is never printed");

    let (ok, stdout) = check_with_key("the-real-key", "the-real-key").await;
    let line = stdout
        .lines()
        .find(|l| l.contains("segmind api"))
        .unwrap_or_else(|| panic!("no API line in\n{stdout}"));
    assert!(line.starts_with("ok"), "{line}");
    assert!(ok, "{stdout}");
}
