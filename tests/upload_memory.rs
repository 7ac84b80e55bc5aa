//! Uploading audio makes no copy of it: the bytes move into the request body.
//!
//! Its own test binary, because it installs a global allocator that tracks
//! the peak of live heap bytes. Runs against the local stack's Garage.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tts_worker::audio::{Audio, wav_from_pcm};
use tts_worker::config::Settings;
use tts_worker::job::{JobId, ObjectKey};
use tts_worker::storage::Storage;

mod common;
use common::{env_value, stack_env};

struct PeakTracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: PeakTracking = PeakTracking;

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
    let audio = Audio::parse(Bytes::from(wav_from_pcm(&vec![0u8; SIZE], 24_000)), None)
        .expect("valid audio");
    let key = ObjectKey::parse(&format!("{}big.wav", settings.s3.prefix), 512).unwrap();
    let job = JobId::parse("big", 64).unwrap();

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let stored = storage
        .put(&key, audio, &job, "r-1", false)
        .await
        .expect("uploaded");
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(before);

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
