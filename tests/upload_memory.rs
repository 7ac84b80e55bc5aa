//! Uploading audio makes no copy of it: the bytes move into the request body.
//!
//! Its own test binary, because it installs a global allocator that tracks
//! the peak of live heap bytes. Runs against the local stack's Garage.

use bytes::Bytes;
use tts_worker::testing::audio::{Audio, wav_from_pcm};
use tts_worker::testing::config::Settings;
use tts_worker::testing::job::{JobId, ObjectKey};
use tts_worker::testing::storage::Storage;

mod common;
use common::{env_value, stack_env};
#[path = "common/heap.rs"]
mod heap;

#[tokio::test(flavor = "current_thread")]
async fn uploading_audio_does_not_copy_it() {
    let env = stack_env();
    let mut env_for_settings = env.clone();
    env_for_settings.push((
        "TTS__S3__PREFIX".into(),
        format!("mem-{}/", uuid::Uuid::new_v4().simple()),
    ));
    let settings = Settings::load_from(None, &env_for_settings).expect("stack settings");
    let storage = Storage::with_static_credentials(
        &settings.s3,
        &env_value(&env, "AWS_ACCESS_KEY_ID"),
        &env_value(&env, "AWS_SECRET_ACCESS_KEY"),
    );
    // Warm up the client (connection, credentials, endpoint resolution).
    storage.check().await.expect("bucket reachable");

    const SIZE: usize = 24 * 1024 * 1024;
    let audio = Audio::parse(
        Bytes::from(wav_from_pcm(&vec![0u8; SIZE], 24_000).unwrap()),
        None,
    )
    .expect("valid audio");
    let key = ObjectKey::parse(&format!("{}big.wav", settings.s3.prefix), 512).unwrap();
    let job = JobId::parse("big", 64).unwrap();

    let before = heap::start();
    let stored = storage
        .put(&key, audio, &job, "r-1", false)
        .await
        .expect("uploaded");
    let extra = heap::peak_since(before);

    assert_eq!(stored.size_bytes, SIZE as u64 + 44);
    println!(
        "peak extra heap during a {} MiB upload: {:.2} MiB",
        SIZE >> 20,
        extra as f64 / 1048576.0
    );
    assert!(
        extra < SIZE / 4,
        "uploading {SIZE} bytes raised the heap peak by {extra} bytes: the audio was copied"
    );
    storage.delete(key.as_str()).await.unwrap();
}
