use super::*;
use secrecy::ExposeSecret;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_match_the_documented_contract() {
    let s = Settings::load_from(None, &[]).expect("defaults are valid");
    assert_eq!(
        s.amqp.url.expose_secret(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(s.segmind.base_url.as_str(), "https://api.segmind.com/");
    assert_eq!(s.segmind.model, "gemini-2.5-pro-tts");
    assert_eq!(s.http.addr.to_string(), "0.0.0.0:9090");
    assert_eq!(s.amqp.requests_queue, "tts.requests");
    assert_eq!(s.amqp.events_queue.as_deref(), Some("tts.events"));
    assert!(s.amqp.max_in_flight >= 1000, "thousands of ~45 s waits");
    assert_eq!(s.prefetch(), s.amqp.max_in_flight, "no rate limit: no cap");
    assert!(
        s.segmind.poll.fixed_interval.is_none(),
        "the learned schedule"
    );
    assert_eq!(s.segmind.rate_limit_per_minute, None);
    assert!(s.segmind.api_key.is_none());
    assert!(s.s3.endpoint.is_none());
}

#[test]
fn environment_overrides_nested_keys() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("TTS__AMQP__URL", "amqp://u:p@broker:5672/v"),
            ("TTS__S3__BUCKET", "my-bucket"),
            ("TTS__S3__ENDPOINT", "http://127.0.0.1:3900"),
            ("TTS__S3__FORCE_PATH_STYLE", "true"),
            ("TTS__AMQP__MAX_IN_FLIGHT", "64"),
            ("TTS__SEGMIND__CONTENT_BLOCKED_PATTERNS", "Nope, unsafe"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.amqp.url.expose_secret(), "amqp://u:p@broker:5672/v");
    assert_eq!(s.s3.bucket, "my-bucket");
    assert!(s.s3.force_path_style);
    assert_eq!(s.amqp.max_in_flight, 64);
    assert_eq!(s.segmind.content_blocked_patterns, vec!["nope", "unsafe"]);
}

#[test]
fn api_key_precedence_is_config_then_file_then_segmind_env() {
    let dir = std::env::temp_dir().join(format!("tts-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "from-file\n").unwrap();
    let file_str = file.to_str().unwrap();

    let only_env = Settings::load_from(None, &env(&[("SEGMIND_API_KEY", "from-env")])).unwrap();
    assert_eq!(
        only_env.require_api_key().unwrap().expose_secret(),
        "from-env"
    );

    let file_wins = Settings::load_from(
        None,
        &env(&[
            ("SEGMIND_API_KEY", "from-env"),
            ("TTS__SEGMIND__API_KEY_FILE", file_str),
        ]),
    )
    .unwrap();
    assert_eq!(
        file_wins.require_api_key().unwrap().expose_secret(),
        "from-file"
    );

    let explicit = Settings::load_from(
        None,
        &env(&[
            ("SEGMIND_API_KEY", "from-env"),
            ("TTS__SEGMIND__API_KEY_FILE", file_str),
            ("TTS__SEGMIND__API_KEY", "explicit"),
        ]),
    )
    .unwrap();
    assert_eq!(
        explicit.require_api_key().unwrap().expose_secret(),
        "explicit"
    );

    let none = Settings::load_from(None, &[]).unwrap();
    let err = none.require_api_key().unwrap_err().to_string();
    assert!(
        err.contains("segmind.api_key") && err.contains("SEGMIND_API_KEY"),
        "{err}"
    );
}

#[test]
fn invalid_values_name_the_key() {
    let cases = [
        ("TTS__AMQP__URL", "http://nope", "amqp.url"),
        ("TTS__SEGMIND__BASE_URL", "ftp://x", "segmind.base_url"),
        (
            "TTS__SEGMIND__BASE_URL",
            "http://api.segmind.com",
            "segmind.base_url",
        ),
        (
            "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
            "127.0.0.1",
            "segmind.media_allow_private",
        ),
        (
            "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
            "http://media:80/x",
            "segmind.media_allow_private",
        ),
        (
            "TTS__SEGMIND__BASE_URL",
            "https://api.segmind.com/v2",
            "segmind.base_url",
        ),
        ("TTS__S3__BUCKET", "Bad_Bucket", "s3.bucket"),
        ("TTS__S3__PREFIX", "/abs/", "s3.prefix"),
        (
            "TTS__S3__OUTPUT_PREFIX",
            "tts/producers/",
            "s3.output_prefix",
        ),
        ("TTS__S3__OUTPUT_PREFIX", "../up/", "s3.output_prefix"),
        ("TTS__JOBS__PAUSE_HOLD", "3600", "jobs.pause_hold"),
        ("TTS__JOBS__MAX_PAUSE_CYCLES", "0", "jobs.max_pause_cycles"),
        (
            "TTS__SEGMIND__AMBIGUOUS_SUBMITS",
            "maybe",
            "segmind.ambiguous_submits",
        ),
        ("TTS__HTTP__ADDR", "localhost", "http.addr"),
        ("TTS__AMQP__MAX_IN_FLIGHT", "0", "amqp.max_in_flight"),
        ("TTS__SEGMIND__JOB_DEADLINE", "-1", "segmind.job_deadline"),
        ("TTS__TELEMETRY__LOG_FORMAT", "xml", "telemetry.log_format"),
        (
            "TTS__JOBS__ON_ACCOUNT_ERROR",
            "ignore",
            "jobs.on_account_error",
        ),
        ("TTS__S3__OPERATION_TIMEOUT", "0", "s3.operation_timeout"),
        ("TTS__LIMITS__MAX_JOB_ID_LEN", "4", "limits.max_job_id_len"),
        (
            "TTS__SEGMIND__API_KEY_FILE",
            "/nonexistent/key",
            "segmind.api_key_file",
        ),
        ("TTS__SEGMIND__MODEL", "../x", "segmind.model"),
        (
            "TTS__SEGMIND__RATE_LIMIT_PER_MINUTE",
            "0",
            "segmind.rate_limit_per_minute",
        ),
        (
            "TTS__SEGMIND__RATE_LIMIT_SCOPE",
            "polls",
            "segmind.rate_limit_scope",
        ),
        (
            "TTS__SEGMIND__MAX_POLLS_PER_JOB",
            "0",
            "segmind.max_polls_per_job",
        ),
        (
            "TTS__SEGMIND__POLL_TARGET_LAG",
            "0",
            "segmind.poll_target_lag",
        ),
        ("TTS__SEGMIND__POLL_MAX", "0.5", "segmind.poll_max"),
        ("TTS__JOBS__MAX_TRANSFERS", "0", "jobs.max_transfers"),
        ("TTS__JOBS__MAX_RENDERS", "0", "jobs.max_renders"),
        ("TTS__JOBS__MAX_STARTING", "0", "jobs.max_starting"),
        (
            "TTS__JOBS__DELIVERY_LIFETIME",
            "0",
            "jobs.delivery_lifetime",
        ),
        ("TTS__AMQP__CONSUMER_TIMEOUT", "0", "amqp.consumer_timeout"),
        // Not below the broker's consumer timeout (1800 s by default).
        (
            "TTS__JOBS__DELIVERY_LIFETIME",
            "1800",
            "jobs.delivery_lifetime",
        ),
        (
            "TTS__AMQP__CONSUMER_TIMEOUT",
            "900",
            "jobs.delivery_lifetime",
        ),
        (
            "TTS__S3__MAX_CONCURRENT_REQUESTS",
            "0",
            "s3.max_concurrent_requests",
        ),
        ("TTS__SEGMIND__POLL_LEARN", "eagerly", "segmind.poll_learn"),
        ("TTS__FLEET__RETENTION_HOURS", "24", "fleet.retention_hours"),
        (
            "TTS__TENANTS__DAILY_CREDIT_CAP",
            "-1",
            "tenants.daily_credit_cap",
        ),
        ("TTS__AMQP__LANES", "tts.requests:0", "amqp.lanes"),
        ("TTS__AMQP__LANES", "tts.requests:x", "amqp.lanes"),
        ("TTS__AMQP__LANES", "tts.bulk:1", "amqp.lanes"),
        (
            "TTS__AMQP__LANES",
            "tts.requests,tts.requests",
            "amqp.lanes",
        ),
        ("TTS__TENANTS__WEIGHTS", "alice:1001", "tenants.weights"),
        ("TTS__TENANTS__WEIGHTS", ":3", "tenants.weights"),
    ];
    for (var, value, key) in cases {
        let err = Settings::load_from(None, &env(&[(var, value)]))
            .expect_err(var)
            .to_string();
        assert!(err.contains(key), "{var}={value}: {err}");
    }
}

#[test]
fn under_a_rate_limit_a_replica_holds_about_what_its_budget_can_start() {
    let pro =
        Settings::load_from(None, &env(&[("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "50")])).unwrap();
    assert_eq!(pro.prefetch(), 16);
    let free =
        Settings::load_from(None, &env(&[("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "5")])).unwrap();
    assert_eq!(free.prefetch(), 2);
    let small = Settings::load_from(
        None,
        &env(&[
            ("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "600"),
            ("TTS__AMQP__MAX_IN_FLIGHT", "100"),
        ]),
    )
    .unwrap();
    assert_eq!(small.prefetch(), 100, "max_in_flight still bounds it");
}

#[test]
fn a_delivery_lives_below_the_brokers_consumer_timeout() {
    let s = Settings::load_from(None, &[]).unwrap();
    assert_eq!(s.jobs.delivery_lifetime, Duration::from_secs(1500));
    assert_eq!(s.amqp.consumer_timeout, Duration::from_secs(1800));
    assert_eq!(s.jobs.max_renders, 4);
    // A queue with a 60 s consumer-timeout policy: a lifetime under it.
    let short = Settings::load_from(
        None,
        &env(&[
            ("TTS__AMQP__CONSUMER_TIMEOUT", "60"),
            ("TTS__JOBS__DELIVERY_LIFETIME", "45"),
        ]),
    )
    .unwrap();
    assert_eq!(short.jobs.delivery_lifetime, Duration::from_secs(45));
}

#[test]
fn amqp_url_errors_never_echo_the_password() {
    let err = Settings::load_from(None, &env(&[("TTS__AMQP__URL", "http://u:hunter2@x")]))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn risky_combinations_are_warned_about() {
    assert!(
        Settings::load_from(None, &[])
            .unwrap()
            .warnings()
            .is_empty(),
        "defaults are safe"
    );
    let s = Settings::load_from(
        None,
        &env(&[
            ("TTS__SEGMIND__JOB_DEADLINE", "1800"),
            ("TTS__JOBS__MAX_DELIVERIES", "1"),
        ]),
    )
    .unwrap();
    let w = s.warnings().join("\n");
    assert!(
        w.contains("consumer_timeout") && w.contains("poison"),
        "{w}"
    );
}

#[test]
fn traces_go_where_the_standard_otel_variables_say() {
    let endpoint = |pairs: &[(&str, &str)]| {
        let mut vars = env(&[("SEGMIND_API_KEY", "k")]);
        vars.extend(env(pairs));
        Settings::load_from(None, &vars)
            .unwrap()
            .telemetry
            .otlp_endpoint
            .map(|u| u.to_string())
    };
    assert_eq!(endpoint(&[]), None, "nothing exported when unset");
    assert_eq!(
        endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:80/otlp/")]).as_deref(),
        Some("http://gw/otlp/v1/traces")
    );
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom"
            ),
        ])
        .as_deref(),
        Some("http://traces:4318/custom")
    );
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]),
        None
    );
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("TTS__TELEMETRY__OTLP_ENDPOINT", "http://mine:4318"),
        ])
        .as_deref(),
        Some("http://mine:4318/v1/traces")
    );
}

#[test]
fn unknown_keys_in_a_file_are_rejected() {
    let dir = std::env::temp_dir().join(format!("tts-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "[amqp]\nprefech = 3\n").unwrap();
    let err = Settings::load_from(Some(&file), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefech"), "{err}");
}

#[test]
fn long_text_defaults_and_bounds() {
    let s = Settings::load_from(None, &[]).unwrap();
    assert_eq!(s.limits.max_text_chars, 200_000);
    assert_eq!(s.long_text.part_chars, 3_000);
    assert_eq!(s.long_text.max_parallel_parts, 4);
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    for (key, value, named) in [
        ("TTS__LONG_TEXT__PART_CHARS", "100", "long_text.part_chars"),
        ("TTS__LONG_TEXT__PART_CHARS", "9000", "long_text.part_chars"),
        (
            "TTS__LONG_TEXT__MAX_PARALLEL_PARTS",
            "0",
            "long_text.max_parallel_parts",
        ),
    ] {
        let err = Settings::load_from(None, &env(&[(key, value)])).unwrap_err();
        assert!(err.to_string().contains(named), "{key}={value}: {err}");
    }
    // One part at a time for 200,000 characters: longer than the broker's
    // consumer timeout, but each delivery hands the job back at
    // jobs.delivery_lifetime and the next resumes it: nothing to warn of.
    let slow =
        Settings::load_from(None, &env(&[("TTS__LONG_TEXT__MAX_PARALLEL_PARTS", "1")])).unwrap();
    assert!(slow.warnings().is_empty(), "{:?}", slow.warnings());
}

#[test]
fn the_api_is_https_except_on_loopback_and_media_origins_are_listed_as_host_port() {
    for ok in [
        "http://127.0.0.1:18090",
        "http://localhost:8090",
        "http://[::1]:8090",
    ] {
        let s = Settings::load_from(None, &env(&[("TTS__SEGMIND__BASE_URL", ok)]))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(s.segmind.base_url.scheme(), "http");
    }
    let s = Settings::load_from(
        None,
        &env(&[
            ("TTS__SEGMIND__BASE_URL", "http://segmind-sim:8090"),
            ("TTS__SEGMIND__ALLOW_HTTP_BASE_URL", "true"),
            (
                "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
                "127.0.0.1:18091, Segmind-Sim:8091,[::1]:9,media-proxy:80",
            ),
        ]),
    )
    .unwrap();
    let listed: Vec<(String, u16)> = s
        .segmind
        .media_allow_private
        .iter()
        .map(|o| (o.host.clone(), o.port))
        .collect();
    assert_eq!(
        listed,
        [
            ("127.0.0.1".to_owned(), 18091),
            ("segmind-sim".to_owned(), 8091),
            ("::1".to_owned(), 9),
            ("media-proxy".to_owned(), 80)
        ]
    );
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("segmind.allow_http_base_url")),
        "{:?}",
        s.warnings()
    );
    let default = Settings::load_from(None, &env(&[])).unwrap();
    assert!(default.segmind.media_allow_private.is_empty());
}

#[test]
fn the_memory_the_settings_allow_is_checked_against_the_containers_limit() {
    let mib = 1u64 << 20;
    let defaults = Settings::load_from(None, &env(&[])).unwrap();
    // 16 transfers × 100 MiB × 3 + 64 MiB × 3 + 64 MiB.
    assert_eq!(defaults.memory_bound(), (4800 + 192 + 64) * mib);
    assert_eq!(defaults.memory_warning(None), None);
    let warning = defaults.memory_warning(Some(512 * mib)).unwrap();
    assert!(
        warning.contains("5056 MiB") && warning.contains("512 MiB"),
        "{warning}"
    );
    // The chart's defaults fit the chart's limit (768 MiB).
    let chart = Settings::load_from(
        None,
        &env(&[
            ("TTS__JOBS__MAX_TRANSFERS", "6"),
            ("TTS__SEGMIND__MAX_AUDIO_BYTES", "33554432"),
            ("TTS__AMQP__MAX_BYTES_IN_FLIGHT", "33554432"),
        ]),
    )
    .unwrap();
    assert_eq!(chart.memory_warning(Some(768 * mib)), None);
}

#[test]
fn lanes_default_to_the_requests_queue_and_read_weights_from_the_environment() {
    let s = Settings::load_from(None, &[]).unwrap();
    assert_eq!(
        s.amqp.lanes,
        vec![crate::config::Lane {
            queue: "tts.requests".into(),
            weight: 1
        }]
    );
    assert!(s.tenants.weights.is_empty());
    let s = Settings::load_from(
        None,
        &env(&[
            ("TTS__AMQP__LANES", "tts.requests:10,tts.requests.bulk"),
            ("TTS__TENANTS__WEIGHTS", "alice:3, bob:1"),
        ]),
    )
    .unwrap();
    let lanes: Vec<(&str, u32)> = s
        .amqp
        .lanes
        .iter()
        .map(|l| (l.queue.as_str(), l.weight))
        .collect();
    assert_eq!(lanes, [("tts.requests", 10), ("tts.requests.bulk", 1)]);
    assert_eq!(s.tenants.weights.get("alice"), Some(&3));
    assert_eq!(s.tenants.weights.get("bob"), Some(&1));
}
