//! Producers isolated from each other (issue 24, item 5): with
//! `tenants.identity = "user_id"`, two producers connected as two RabbitMQ
//! users share nothing but the queue. The second cannot overwrite, delete
//! or detect the first's objects, records or long job in flight, by
//! `job_id`, `output_key` or `reply_to`; each one's queue sees only its own
//! events.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::json;
use sha2::{Digest, Sha256};
use tts_worker::testing::broker::{self, Publisher};
use tts_worker::testing::config::TenantIdentity;
use tts_worker::testing::wire::{self, CloudEvent, EventData};

use crate::helpers::{TestApp, rabbitmqctl, spawn_app_with, wait_for};

/// A producer connected as its own RabbitMQ user, with its own events
/// queue bound to its tenant's routing keys.
struct Producer {
    user: String,
    events: String,
    channel: Channel,
    publisher: Publisher,
    _connection: Connection,
}

impl Producer {
    async fn connect(app: &TestApp, name: &str) -> Producer {
        let user = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        assert!(rabbitmqctl(&["add_user", &user, "pw"]), "add_user {user}");
        assert!(rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user,
            ".*",
            ".*",
            ".*"
        ]));
        let mut url = url::Url::parse(&crate::common::amqp_url()).unwrap();
        url.set_username(&user).unwrap();
        url.set_password(Some("pw")).unwrap();
        let url = secrecy::SecretString::from(url.to_string());
        let connection = broker::connect(&url, Duration::from_secs(10), "tenant-test")
            .await
            .expect("the tenant connects");
        let channel = connection.create_channel().await.unwrap();
        let publisher = Publisher::new(
            connection.create_channel().await.unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let events = format!("{user}.events");
        channel
            .queue_declare(
                events.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                events.as_str().into(),
                app.settings.amqp.events_exchange.as_str().into(),
                format!("tts.job.*.{user}").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Producer {
            user,
            events,
            channel,
            publisher,
            _connection: connection,
        }
    }

    /// Publishes `body` as this user (`user_id` set, as RabbitMQ checks),
    /// with `reply_to` when given.
    async fn publish(&self, app: &TestApp, body: serde_json::Value, reply_to: Option<&str>) {
        let mut properties = BasicProperties::default().with_user_id(self.user.as_str().into());
        if let Some(queue) = reply_to {
            properties = properties.with_reply_to(queue.into());
        }
        self.publisher
            .publish(
                "",
                app.requests_queue(),
                body.to_string().as_bytes(),
                properties,
                true,
            )
            .await
            .expect("published as the tenant");
    }

    /// The next terminal event on this producer's queue, within `timeout`
    /// (its queue is bound to its progress events too: checked, passed over).
    async fn next_event(&self, timeout: Duration) -> Option<CloudEvent<EventData>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self
                .channel
                .basic_get(
                    self.events.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                crate::schemas::assert_valid_event(&m.delivery.data);
                let event = wire::decode_event(&m.delivery.data).expect("an event");
                if !matches!(event.data, EventData::Progress(_)) {
                    return Some(event);
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn remove(&self) {
        rabbitmqctl(&["delete_user", &self.user]);
    }
}

fn completed(event: &CloudEvent<EventData>) -> &wire::CompletedData {
    match &event.data {
        EventData::Completed(c) => c,
        other => panic!("expected a completion, got {other:?}"),
    }
}

/// A RabbitMQ user for the worker, with the `impersonator` tag tenants
/// need; its AMQP URL.
fn worker_user(user: &str) -> secrecy::SecretString {
    assert!(rabbitmqctl(&["add_user", user, "pw"]), "add_user {user}");
    assert!(rabbitmqctl(&["set_user_tags", user, "impersonator"]));
    assert!(rabbitmqctl(&[
        "set_permissions",
        "-p",
        "/",
        user,
        ".*",
        ".*",
        ".*"
    ]));
    let mut url = url::Url::parse(&crate::common::amqp_url()).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some("pw")).unwrap();
    secrecy::SecretString::from(url.to_string())
}

#[tokio::test]
async fn a_tenant_cannot_overwrite_delete_or_detect_anothers_work() {
    let worker = format!(
        "tts-worker-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let app = spawn_app_with(
        |sim| {
            sim.latency_mean = Duration::from_millis(600);
            sim.latency_spread = Duration::from_millis(100);
        },
        |s| {
            s.tenants.identity = TenantIdentity::UserId;
            s.long_text.part_chars = 200;
            // A handed-over or dead-lettered request keeps its producer's
            // user_id: the worker's user may set it (`impersonator`).
            s.amqp.url = worker_user(&worker);
        },
    )
    .await;
    let alice = Producer::connect(&app, "alice").await;
    let bob = Producer::connect(&app, "bob").await;
    let sentence = "Alice's order ships on Tuesday from the northern warehouse, packed with care. ";
    let alice_text = sentence.repeat(8); // ≈ 630 characters: several parts
    let job = json!({"text": alice_text, "job_id": "order-7", "output_key": "orders/7.wav"});

    // Alice's long job is in flight when Bob borrows its id with a request
    // refused before any work.
    alice.publish(&app, job.clone(), None).await;
    wait_for(
        "alice's first part submitted",
        Duration::from_secs(20),
        || async { app.sim.stats().submits_accepted >= 1 },
    )
    .await;
    bob.publish(
        &app,
        json!({"text": "Bob was here.", "job_id": "order-7", "voice": "NoSuchVoice"}),
        None,
    )
    .await;
    let refused = bob
        .next_event(Duration::from_secs(30))
        .await
        .expect("bob's refusal");
    match &refused.data {
        EventData::Failed(f) => {
            assert_eq!(f.error.code, "invalid_request");
            assert_eq!(f.job_id, "order-7", "events name the producer's own id");
        }
        other => panic!("{other:?}"),
    }

    let done = alice
        .next_event(Duration::from_secs(60))
        .await
        .expect("alice's completion");
    let mine = completed(&done).clone();
    assert_eq!(mine.job_id, "order-7");
    assert!(
        mine.audio
            .key
            .ends_with(&format!("{}/orders/7.wav", alice.user)),
        "a tenant's key is in its namespace: {}",
        mine.audio.key
    );
    // Every part paid once: Bob's refusal deleted nothing of hers.
    assert!(mine.parts > 1, "a long job: {} parts", mine.parts);
    assert_eq!(app.sim.stats().submits_accepted, u64::from(mine.parts));

    // Bob takes her id and key, and asks for his reply in her queue.
    bob.publish(
        &app,
        json!({"text": "Bob's own words, nothing more.", "job_id": "order-7", "output_key": "orders/7.wav"}),
        Some(&alice.events),
    )
    .await;
    let his = bob
        .next_event(Duration::from_secs(30))
        .await
        .expect("bob's own completion, not output_key_taken");
    let his = completed(&his);
    assert_ne!(
        his.audio.key, mine.audio.key,
        "bob wrote beside her, not over her"
    );
    // Her object is untouched, her queue saw nothing of Bob's (neither his
    // event nor the reply copy he aimed at it).
    let stored = app.storage.get(&mine.audio.key).await.expect("her audio");
    assert_eq!(
        hex::encode(Sha256::digest(&stored.bytes)),
        mine.audio.sha256
    );
    assert!(
        alice.next_event(Duration::from_millis(500)).await.is_none(),
        "alice's queue received another tenant's event"
    );

    // Her own resend is still answered from storage: nothing paid again.
    let paid = app.sim.stats().submits_accepted;
    alice.publish(&app, job, None).await;
    let again = alice
        .next_event(Duration::from_secs(30))
        .await
        .expect("her repeat");
    assert_eq!(completed(&again).audio.sha256, mine.audio.sha256);
    assert_eq!(app.sim.stats().submits_accepted, paid);

    // Without user_id a request is refused (it names no tenant).
    app.publish_json(json!({"text": "Who am I?", "job_id": "anon-1"}))
        .await;
    // The default events queue binds every tenant's events too.
    let mut anon = None;
    for _ in 0..10 {
        let e = app.next_event().await;
        let id = match &e.event.data {
            EventData::Completed(c) => &c.job_id,
            EventData::Failed(f) => &f.job_id,
            EventData::Progress(p) => &p.job_id,
        };
        if id == "anon-1" {
            anon = Some(e);
            break;
        }
    }
    let anon = anon.expect("the refusal of a request without user_id");
    assert_eq!(anon.failed().error.code, "invalid_request");
    assert!(anon.failed().error.message.contains("user_id"));
    alice.remove();
    bob.remove();
    assert_eq!(app.stop().await, 0);
    rabbitmqctl(&["delete_user", &worker]);
}

#[tokio::test]
async fn without_tenants_a_request_refused_before_work_deletes_nothing_of_a_job_in_flight() {
    let app = spawn_app_with(
        |sim| {
            sim.latency_mean = Duration::from_millis(600);
            sim.latency_spread = Duration::from_millis(100);
        },
        |s| s.long_text.part_chars = 200,
    )
    .await;
    let sentence = "The long job keeps every part it has paid for, whatever else arrives. ";
    app.publish_json(json!({"text": sentence.repeat(8), "job_id": "long-1"}))
        .await;
    wait_for(
        "the first part submitted",
        Duration::from_secs(20),
        || async { app.sim.stats().submits_accepted >= 1 },
    )
    .await;
    // The same job id with a key in the worker's own area: refused before
    // any work, and nothing of the job in flight is deleted.
    let forbidden = format!("{}_parts/long-1/00000.wav", app.settings.s3.prefix);
    app.publish_json(json!({"text": "Take over.", "job_id": "long-1", "output_key": forbidden}))
        .await;
    let mut codes = Vec::new();
    let mut parts = 0;
    for _ in 0..2 {
        let e = app.next_event().await;
        match &e.event.data {
            EventData::Failed(f) => codes.push(f.error.code.clone()),
            EventData::Completed(c) => {
                codes.push("completed".into());
                parts = c.parts;
            }
            EventData::Progress(p) => panic!("a progress event on the events queue: {p:?}"),
        }
    }
    codes.sort();
    assert_eq!(codes, ["completed", "output_key_forbidden"]);
    assert!(parts > 1);
    assert_eq!(
        app.sim.stats().submits_accepted,
        u64::from(parts),
        "a part was paid twice"
    );
    assert_eq!(app.stop().await, 0);
}
