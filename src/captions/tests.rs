use std::path::PathBuf;
use std::process::Command;

use super::*;

fn sentence_cues(sentences: &[(&str, u64, u64)]) -> Vec<Cue> {
    let got = cues(sentences);
    check_shape(&got);
    got
}

/// What every cue list must be: in order, not overlapping, lines within
/// the limits, no cue longer than the maximum.
fn check_shape(cues: &[Cue]) {
    for cue in cues {
        assert!(cue.start_ms <= cue.end_ms, "{cue:?}");
        assert!(cue.end_ms - cue.start_ms <= MAX_CUE_MS, "{cue:?}");
        let lines: Vec<&str> = cue.text.split('\n').collect();
        assert!(lines.len() <= MAX_LINES, "{cue:?}");
        for line in lines {
            assert!(line.chars().count() <= MAX_LINE_CHARS, "{line:?}");
            assert!(!line.is_empty() && line.trim() == line, "{line:?}");
        }
    }
    for pair in cues.windows(2) {
        assert!(pair[0].end_ms <= pair[1].start_ms, "{pair:?}");
    }
}

#[test]
fn timestamps_have_hours_minutes_seconds_and_milliseconds() {
    assert_eq!(vtt_timestamp(3_723_456), "01:02:03.456");
    assert_eq!(srt_timestamp(3_723_456), "01:02:03,456");
    assert_eq!(vtt_timestamp(0), "00:00:00.000");
    assert_eq!(vtt_timestamp(59_999), "00:00:59.999");
    assert_eq!(srt_timestamp(100 * 3_600_000 + 1), "100:00:00,001");
}

#[test]
fn short_sentences_are_one_line_cues_at_their_times() {
    let got = sentence_cues(&[
        ("The tide came in.", 0, 1_500),
        ("  The gulls\nargued   about the light. ", 1_900, 4_000),
        ("   ", 4_100, 4_200),
    ]);
    assert_eq!(
        got,
        vec![
            Cue {
                start_ms: 0,
                end_ms: 1_500,
                text: "The tide came in.".into()
            },
            Cue {
                start_ms: 1_900,
                end_ms: 4_000,
                text: "The gulls argued about the light.".into()
            },
        ]
    );
}

#[test]
fn lines_hold_at_most_42_characters_not_bytes_and_are_balanced() {
    // 59 characters, most of 2 bytes: two lines of about 30 characters, the
    // longer one below (the even cuts are 27 + 31 and 31 + 27).
    let text = "été ".repeat(15);
    let got = sentence_cues(&[(&text, 0, 4_000)]);
    assert_eq!(got.len(), 1);
    let lines: Vec<usize> = got[0].text.split('\n').map(|l| l.chars().count()).collect();
    assert_eq!(lines, [27, 31]);
    // A word longer than a line is cut.
    let long = "x".repeat(100);
    let got = sentence_cues(&[(&long, 0, 3_000)]);
    let all: String = got.iter().map(|c| c.text.replace('\n', "")).collect();
    assert_eq!(all, long);
}

#[test]
fn a_long_sentence_is_split_at_spaces_with_times_by_characters() {
    let words = [
        "Nobody",
        "on",
        "the",
        "pier,",
        "not",
        "even",
        "the",
        "old",
        "fishermen",
        "who",
        "had",
        "watched",
        "the",
        "weather",
        "for",
        "fifty",
        "years,",
        "had",
        "seen",
        "the",
        "storm",
        "coming",
        "over",
        "the",
        "hills",
        "before",
        "it",
        "broke",
        "at",
        "dawn.",
    ];
    let text = words.join(" ");
    let got = sentence_cues(&[(&text, 10_000, 20_000)]);
    // 160 characters in 10 s: two cues would last 5 s each and hold 80
    // characters, which fit two lines of 42 only when cut well.
    assert!(got.len() >= 2, "{got:?}");
    let rejoined = got
        .iter()
        .map(|c| c.text.replace('\n', " "))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(rejoined, text);
    assert_eq!(got[0].start_ms, 10_000);
    assert_eq!(got[got.len() - 1].end_ms, 20_000);
    // Contiguous; each cue's share of the time is its share of the text.
    let total = text.chars().count() as f64;
    for pair in got.windows(2) {
        assert_eq!(pair[0].end_ms, pair[1].start_ms);
    }
    for cue in &got {
        let share = (cue.text.chars().count() + 1) as f64 / total;
        let ms = (cue.end_ms - cue.start_ms) as f64;
        assert!((ms - 10_000.0 * share).abs() < 150.0, "{cue:?}");
    }
    // Slow speech: a sentence of 20 s is split to cues of at most 7 s even
    // when its text would fit fewer.
    let got = sentence_cues(&[("One two three four five six seven eight.", 0, 20_000)]);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn short_cues_last_the_minimum_or_share_a_cue() {
    // "Yes." alone for 300 ms, the next sentence far off: held 700 ms.
    let got = sentence_cues(&[
        ("Yes.", 1_000, 1_300),
        ("Then we walked home together.", 5_000, 7_000),
    ]);
    assert_eq!((got[0].start_ms, got[0].end_ms), (1_000, 1_700));
    // Two short replies close together read as one cue.
    let got = sentence_cues(&[
        ("Yes.", 1_000, 1_300),
        ("No.", 1_500, 1_800),
        ("Then we walked home together.", 2_200, 4_200),
    ]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].text, "Yes. No.");
    assert_eq!((got[0].start_ms, got[0].end_ms), (1_000, 1_800));
    // Held no later than the next cue's start.
    let got = sentence_cues(&[
        ("A long sentence that fills most of a line.", 1_000, 1_300),
        (
            "And another long sentence after it, right away.",
            1_400,
            4_000,
        ),
    ]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].end_ms, 1_400);
}

#[test]
fn webvtt_and_srt_are_written_as_their_formats_say() {
    let cues = vec![
        Cue {
            start_ms: 0,
            end_ms: 1_500,
            text: "Fish & chips <b>cost</b> --> more".into(),
        },
        Cue {
            start_ms: 3_723_456,
            end_ms: 3_725_000,
            text: "Two\nlines".into(),
        },
    ];
    assert_eq!(
        to_vtt(&cues),
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nFish &amp; chips &lt;b&gt;cost&lt;/b&gt; --&gt; more\n\n01:02:03.456 --> 01:02:05.000\nTwo\nlines\n"
    );
    assert_eq!(
        to_srt(&cues),
        "1\n00:00:00,000 --> 00:00:01,500\nFish & chips <b>cost</b> --> more\n\n2\n01:02:03,456 --> 01:02:05,000\nTwo\nlines\n\n"
    );
    assert_eq!(to_vtt(&[]), "WEBVTT\n");
    assert_eq!(to_srt(&[]), "");
}

/// The tools venv's Python (scripts/tools.sh): `$TTS_TOOLS_PYTHON`, or
/// where tools.sh puts it.
fn tools_python() -> PathBuf {
    if let Ok(python) = std::env::var("TTS_TOOLS_PYTHON") {
        return PathBuf::from(python);
    }
    let stack = std::env::var("TTS_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/share/tts-worker")
        });
    stack.join("venv/bin/python")
}

/// Parses with PyPI's `webvtt-py` and `srt` (not our code): each file's
/// cues as (start ms, end ms, text) in JSON.
const PARSE: &str = r#"
import html, json, sys
import srt, webvtt
vtt = []
for c in webvtt.read(sys.argv[1]):
    assert c.text == c.raw_text, "a cue's text was read as tags: " + c.raw_text
    h, m, s, ms = c.start_time.to_tuple()
    start = ((h * 60 + m) * 60 + s) * 1000 + ms
    h, m, s, ms = c.end_time.to_tuple()
    end = ((h * 60 + m) * 60 + s) * 1000 + ms
    vtt.append([start, end, html.unescape(c.raw_text)])
with open(sys.argv[2], encoding="utf-8") as f:
    subs = list(srt.parse(f.read()))
assert [s.index for s in subs] == list(range(1, len(subs) + 1))
ms = lambda t: t.days * 86400000 + t.seconds * 1000 + t.microseconds // 1000
print(json.dumps({"vtt": vtt, "srt": [[ms(s.start), ms(s.end), s.content] for s in subs]}))
"#;

#[test]
fn independent_parsers_read_back_every_cue() {
    let python = tools_python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/tools.sh (it installs webvtt-py and srt into the tools venv), then `. ~/.local/share/tts-worker/tools.env`",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import webvtt, srt"])
        .output()
        .expect("the tools venv's python runs");
    assert!(
        probe.status.success(),
        "webvtt-py and srt are not installed in {}: run scripts/tools.sh ({})",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );

    let story = [
        ("Fish & chips, said the sign; <nothing> else.", 120, 2_900),
        (
            "Nobody on the pier, not even the old fishermen who had watched the weather for fifty years, had seen the storm coming over the hills before it broke at dawn.",
            3_400,
            13_900,
        ),
        ("Yes.", 14_500, 14_800),
        ("Ünïcödé, naïve café — “quoted” text.", 15_400, 18_000),
        ("An hour later it was calm again.", 3_600_000, 3_602_500),
    ];
    let cues = sentence_cues(&story);
    let dir = std::env::temp_dir().join(format!("captions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (vtt, srt) = (dir.join("a.vtt"), dir.join("a.srt"));
    std::fs::write(&vtt, to_vtt(&cues)).unwrap();
    std::fs::write(&srt, to_srt(&cues)).unwrap();
    let out = Command::new(&python)
        .args(["-c", PARSE])
        .arg(&vtt)
        .arg(&srt)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the parsers refused the files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: Vec<serde_json::Value> = cues
        .iter()
        .map(|c| serde_json::json!([c.start_ms, c.end_ms, c.text]))
        .collect();
    assert_eq!(parsed["vtt"].as_array().unwrap(), &expected);
    assert_eq!(parsed["srt"].as_array().unwrap(), &expected);
}

#[test]
fn chinese_japanese_and_thai_lines_break_between_words_without_spaces() {
    let zh = "我们今天在这里讨论一个很长的故事，它有许多句子，每一句都很长。";
    let ja = "今日はとても長い物語を読みます。";
    let th = "ภาษาไทยไม่มีช่องว่างระหว่างคำจึงต้องตัดที่ขอบเขตของกลุ่มอักขระ";
    for (text, max) in [
        (zh, MAX_WIDE_LINE_CHARS),
        (ja, MAX_WIDE_LINE_CHARS),
        (th, MAX_LINE_CHARS),
    ] {
        let cues = sentence_cues(&[(text, 0, 6_000)]);
        check_shape(&cues);
        let mut read = String::new();
        for cue in &cues {
            for line in cue.text.lines() {
                assert!(line.chars().count() <= max, "{line:?} is over {max}");
                assert!(!line.contains(' '), "no space is added: {line:?}");
                read.push_str(line);
            }
        }
        // Nothing lost, added or cut inside a grapheme cluster.
        assert_eq!(read, text);
    }
    // A full-width text has more, shorter lines than 42 characters allow.
    assert!(
        sentence_cues(&[(zh, 0, 6_000)])
            .iter()
            .any(|c| c.text.contains('\n'))
    );
}
