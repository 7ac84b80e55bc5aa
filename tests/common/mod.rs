//! What both test binaries need: the local stack's environment.
#![allow(dead_code)] // shared by several test binaries, each using a subset

/// Environment of the local stack: the process environment, falling back to
/// the file `scripts/stack.sh up` writes.
pub fn stack_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !env.iter().any(|(k, _)| k == "TTS__S3__ENDPOINT") {
        let dir = std::env::var("TTS_STACK_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.local/share/tts-worker",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let file = std::fs::read_to_string(format!("{dir}/env.sh"))
            .expect("no local stack: run scripts/test.sh (or scripts/stack.sh up) first");
        for line in file.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    env
}

/// The last value of `key` in `env`.
pub fn env_value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key} is not set by the local stack"))
}

/// `rabbitmqctl` for the broker under test: `TTS_TEST_RABBITMQCTL` when set
/// (a command and its leading arguments, e.g. `scripts/rabbitmq.sh 4.3 ctl`
/// for RabbitMQ 4.3 in its chroot), else the system's `rabbitmqctl`.
pub fn rabbitmqctl() -> std::process::Command {
    let spec = std::env::var("TTS_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = spec.split_whitespace();
    let mut command = std::process::Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words);
    command
}

/// The AMQP URL of the broker under test.
pub fn amqp_url() -> String {
    std::env::var("TTS__AMQP__URL")
        .ok()
        .or_else(|| {
            stack_env()
                .into_iter()
                .rev()
                .find(|(k, _)| k == "TTS__AMQP__URL")
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A benchmark's command line (`cargo bench --bench NAME -- MODE [--key value]…`):
/// its mode and its `--key value` options.
pub struct BenchArgs {
    raw: Vec<String>,
}

impl BenchArgs {
    pub fn from_env() -> Self {
        BenchArgs {
            raw: std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect(),
        }
    }

    /// The first word that is neither an option nor an option's value.
    pub fn mode(&self, default: &str) -> String {
        let mut after_option = false;
        for a in &self.raw {
            if a.starts_with("--") {
                after_option = true;
            } else if after_option {
                after_option = false;
            } else {
                return a.clone();
            }
        }
        default.to_owned()
    }

    /// The value after `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.raw
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.raw.get(i + 1))
            .cloned()
    }

    /// The number after `name`, or `default`.
    pub fn num(&self, name: &str, default: f64) -> f64 {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

/// The value of a metric sample line (`name{labels}`) a worker at `addr`
/// exposes on `/metrics`, if it does.
pub async fn metric_at(addr: std::net::SocketAddr, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}
